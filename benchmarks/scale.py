"""Scale benchmark of the knowledge-base vector backends: build, latency, memory, recall@10.

Each (backend, size) runs in its own subprocess (so peak memory is its own) over the same
synthetic 512-d unit vectors. By default they are unclustered and embedding-like, as in
``benchmarks/ann_recall.py``: one Gaussian whose component i has variance 1/i, queries drawn afresh
from the same distribution (the hard case for approximate indexes). ``--data clustered`` gives the
earlier data: a mixture of 1,000 Gaussian clusters, queries perturbed database vectors (IVF's best
case). Measured through the package's own backend classes (``FaissIndex``, ``MilvusIndex``,
``QdrantIndex``) with the package's **default** ``IndexConfig`` for each kind (faiss ``ivf`` and
``hnsw``: default ``nlist``/``nprobe``/``hnsw_m``/``ef_search``; the databases: ``flat``), one
modality, one thread (``OMP_NUM_THREADS=1``; faiss ``omp_set_num_threads(1)``):

- build: seconds to insert every vector (and train IVF / build HNSW);
- single: p50 / p95 latency of one query (k=10); batch64: p50 / p95 of a batch of 64 queries;
- memory: the process's RSS after building and searching minus its RSS before (the index's cost);
- recall@10: overlap of the top-10 with exact search (numpy), averaged over the queries.

Then, for a whole ``KnowledgeBase`` (faiss flat, the default; ``--kb-kinds`` for others) of ``n``
image-caption pairs built from precomputed vectors, the memory and disk cost against the **raw
vectors**: ``raw = 2 * n * d * 4`` bytes (the image and the text float32 matrices, both
modalities, as the KB stores them). Each measurement is a fresh subprocess: (1) build the KB,
RSS growth with the KB alive (vectors, index, items, hashes), then ``persist`` (disk = the folder's
size); (2) ``KnowledgeBase.from_persist_dir``, RSS growth after the load and the peak during it
(``VmHWM``, reset just before the load). The items and content hashes (about 0.8 KB per pair here)
are measured separately and shown both included and subtracted (on disk: without the manifest, items and hashes files).
Run it at 100k or more: below ~50k pairs each matrix is under glibc's 32 MB ``mmap`` threshold, so
the freed input arrays stay in the heap and inflate the RSS after the build.

Usage::

    python benchmarks/scale.py                       # 100k: every backend, then the KB ratios
    python benchmarks/scale.py --sizes 100000 1000000 --backends faiss-flat faiss-ivf --kb-kinds

Prints two Markdown tables (the ones in the README's "Scaling out"). The databases (Milvus Lite,
the Milvus server, Qdrant local mode) are timed on 20 single queries and 2 batches (the embedded
modes take up to seconds per query).
``milvus-server`` is a real Milvus 2.3 standalone server (``pip install milvus``) started here on
free ports for the run; its memory is the server processes' RSS growth (they are not the
benchmark's process).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from ann_recall import _embeddings  # benchmarks/ is the script's folder, on sys.path
from llama_index.core.embeddings import MultiModalEmbedding

DIM = 512
K = 10
BACKENDS = ["faiss-flat", "faiss-ivf", "faiss-hnsw", "milvus-lite", "milvus-server", "qdrant-local"]
DATA = ["unclustered", "clustered"]
_SERVER_ENV = "LVLM_SCALE_MILVUS"  # "<uri> <server pid>" of the server main() started, for the child
_MIB = 2**20


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    """The earlier data: a mixture of 1,000 Gaussian clusters, unit rows."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, DIM), dtype=np.float32)  # (1000, 512)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        labels = rng.integers(0, 1000, stop - start)
        block = centers[labels] + 0.7 * rng.standard_normal((stop - start, DIM), dtype=np.float32)  # (b, 512)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _data(kind: str, n: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors (n, 512), queries (n_queries, 512))`` of the chosen kind, unit rows."""
    if kind == "unclustered":
        rng = np.random.default_rng(0)
        vectors = _embeddings(rng, n)
        return vectors, _embeddings(rng, n_queries)  # fresh draws, not perturbed database rows
    vectors = _clustered(n)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, n, n_queries)
    queries = vectors[picks] + 0.05 * rng.standard_normal((n_queries, DIM), dtype=np.float32)
    return vectors, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / _MIB


def _peak_mb() -> float:
    """The process's peak RSS (``VmHWM``) since the start or the last :func:`_reset_peak`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the peak-memory measurement needs Linux")


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: write 5 to ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def _server_rss_mb(pid: int) -> float:
    """RSS of every process in the server's process group (the launcher, milvus, its etcd)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pid:  # field 5 of stat: the process group
                total += int((stat.parent / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * os.sysconf("SC_PAGE_SIZE") / _MIB


def _open(backend: str, n: int, workdir: Path) -> Any:
    from llama_index_lvlm_retriever.kb.backends import (
        FaissIndex,
        MilvusBackendConfig,
        QdrantBackendConfig,
    )
    from llama_index_lvlm_retriever.kb.types import BackendIdentity, IndexConfig

    identity = BackendIdentity(kb_uid="bench", dim=DIM, encoder="bench", encoder_label="bench")
    if backend.startswith("faiss-"):
        return FaissIndex(IndexConfig(kind=backend.removeprefix("faiss-")))  # the package's defaults
    if backend == "milvus-lite":
        return MilvusBackendConfig(uri=str(workdir / "kb.db"), collection="bench").open("image", IndexConfig(kind="flat"), identity)
    if backend == "milvus-server":
        uri = os.environ[_SERVER_ENV].split()[0]
        return MilvusBackendConfig(uri=uri, collection=f"bench_{n}", timeout=600).open("image", IndexConfig(kind="flat"), identity)
    if backend == "qdrant-local":
        return QdrantBackendConfig(path=str(workdir / "qdrant"), collection="bench").open("image", IndexConfig(kind="flat"), identity)
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


def run_one(backend: str, n: int, n_single: int, n_batches: int, data: str = "unclustered") -> dict[str, Any]:
    """Measure one backend at one size in this process."""
    import faiss

    from llama_index_lvlm_retriever.data.records import KBItem

    faiss.omp_set_num_threads(1)
    if backend in ("milvus-lite", "milvus-server", "qdrant-local"):
        # The embedded modes answer in 0.03-5 s per query at 100k: time fewer queries.
        n_single, n_batches = min(n_single, 20), min(n_batches, 2)
    vectors, queries = _data(data, n, n_single + 64 * n_batches)
    truth = np.argsort(-(queries[:n_single] @ vectors.T), axis=1)[:, :K]  # (n_single, 10) exact top-10
    items = [KBItem(id=str(i), image_path="", text="") for i in range(n)]
    hashes = [""] * n
    server_pid = int(os.environ[_SERVER_ENV].split()[1]) if backend == "milvus-server" else None
    rss = _rss_mb if server_pid is None else (lambda: _server_rss_mb(server_pid))
    baseline = rss()
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        index = _open(backend, n, Path(tmp))
        start = time.perf_counter()
        if backend.startswith("faiss") and backend != "faiss-flat":
            index.add(vectors, items, hashes)
        else:
            for lo in range(0, n, 50_000):  # bounded request sizes for the databases
                index.add(vectors[lo : lo + 50_000], items[lo : lo + 50_000], hashes[lo : lo + 50_000])
        build = time.perf_counter() - start
        single, found = [], []
        for q in queries[:n_single]:
            t = time.perf_counter()
            hits = index.search(q[None, :], K)[0]
            single.append(time.perf_counter() - t)
            found.append({int(i) for i, _ in hits})
        batch = []
        for b in range(n_batches):
            chunk = queries[n_single + 64 * b : n_single + 64 * (b + 1)]
            t = time.perf_counter()
            index.search(chunk, K)
            batch.append(time.perf_counter() - t)
        memory = rss() - baseline
        if hasattr(index, "drop") and not backend.startswith("faiss"):
            index.drop()
    recall = float(np.mean([len(f & set(t.tolist())) / K for f, t in zip(found, truth)]))
    return {
        "backend": backend,
        "n": n,
        "build_s": build,
        "single_p50_ms": 1e3 * float(np.percentile(single, 50)),
        "single_p95_ms": 1e3 * float(np.percentile(single, 95)),
        "batch64_p50_ms": 1e3 * float(np.percentile(batch, 50)),
        "batch64_p95_ms": 1e3 * float(np.percentile(batch, 95)),
        "memory_mb": memory,
        "recall_at_10": recall,
    }


class _FixedEmbedding(MultiModalEmbedding):
    """The encoder of the synthetic KB: its vectors are precomputed, only the encoder probe is embedded.

    Every image and text embeds to the same fixed unit vector, so the probe recorded at build time
    matches on reload (``from_persist_dir`` checks it).
    """

    model_name: str = "scale-benchmark-fixed"

    @classmethod
    def class_name(cls) -> str:
        return "ScaleBenchmarkFixedEmbedding"

    def _fixed(self, *_: Any) -> list[float]:
        return [1.0] + [0.0] * (DIM - 1)

    _get_image_embedding = _get_text_embedding = _get_query_embedding = _fixed

    async def _aget_image_embedding(self, *_: Any) -> list[float]:
        return self._fixed()

    async def _aget_query_embedding(self, *_: Any) -> list[float]:
        return self._fixed()


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / _MIB


def kb_build(kind: str, n: int, folder: Path) -> dict[str, Any]:
    """Build a ``KnowledgeBase`` of ``n`` pairs from precomputed vectors in this process, persist it to ``folder``."""
    import faiss

    from llama_index_lvlm_retriever.data.records import KBItem
    from llama_index_lvlm_retriever.kb import KnowledgeBase
    from llama_index_lvlm_retriever.kb.types import IndexConfig

    faiss.omp_set_num_threads(1)
    embed = _FixedEmbedding()
    gc.collect()
    baseline = _rss_mb()
    items = [KBItem(id=f"item-{i}", image_path=f"images/{i}.png", text=f"caption {i}") for i in range(n)]
    hashes = [f"{i:064x}" for i in range(n)]  # sha256-length hex strings, as the KB stores them
    items_mb = _rss_mb() - baseline
    rng = np.random.default_rng(0)
    image, text = _embeddings(rng, n), _embeddings(rng, n)  # (n, 512) each
    kb = KnowledgeBase(embed, items, image, text, image_hashes=hashes, index_config=IndexConfig(kind=kind))
    del items, hashes, image, text  # the KB holds what it needs
    gc.collect()
    memory = _rss_mb() - baseline
    start = time.perf_counter()
    kb.persist(folder)
    persist_s = time.perf_counter() - start
    records = ["manifest.json", "items.*.jsonl", "image_hashes.*.json"]  # everything but the vectors and indexes
    records_mb = sum(p.stat().st_size for pattern in records for p in folder.glob(pattern)) / _MIB
    return {"kind": kind, "n": n, "items_mb": items_mb, "memory_mb": memory, "disk_mb": _folder_mb(folder),
            "records_mb": records_mb, "persist_s": persist_s, "files": sorted(p.name for p in folder.iterdir())}


def kb_reload(folder: Path) -> dict[str, Any]:
    """Load the KB in ``folder`` in this process: RSS growth after the load and at its peak."""
    import faiss

    from llama_index_lvlm_retriever.kb import KnowledgeBase

    faiss.omp_set_num_threads(1)
    embed = _FixedEmbedding()
    gc.collect()
    baseline = _rss_mb()
    _reset_peak()
    start = time.perf_counter()
    kb = KnowledgeBase.from_persist_dir(folder, embed)
    load_s = time.perf_counter() - start
    peak = _peak_mb() - baseline
    gc.collect()
    memory = _rss_mb() - baseline
    assert len(kb) > 0
    return {"reload_mb": memory, "reload_peak_mb": peak, "load_s": load_s}


def _run_kb(kind: str, n: int, env: dict[str, str], timeout: int) -> dict[str, Any]:
    """Build + persist, then reload, each in a fresh subprocess; sizes and ratios to the raw vectors."""
    with tempfile.TemporaryDirectory(prefix="scale-kb-") as tmp:
        folder = Path(tmp) / "kb"
        row: dict[str, Any] = {"raw_mb": 2 * n * DIM * 4 / _MIB}
        for step in (["--kb-build", kind, str(n), str(folder)], ["--kb-reload", str(folder)]):
            done = subprocess.run([sys.executable, __file__, *step], capture_output=True, text=True, env=env,
                                  timeout=timeout, check=False)
            if done.returncode != 0:
                return {"kind": kind, "n": n, "error": f"{step[0]} failed: {done.stderr.strip().splitlines()[-1:]}"}
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _kb_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| KB (both modalities) | pairs | raw vectors (MB) | measure | MB | x raw | x raw, less items and hashes |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| faiss {r['kind']} | {r['n']:,} | | {r['error']} | | | |")
            continue
        raw, items = r["raw_mb"], r["items_mb"]
        for label, value, less in (
            ("memory after build", r["memory_mb"], items),
            ("disk (persisted folder)", r["disk_mb"], r["records_mb"]),
            ("memory after reload", r["reload_mb"], items),
            ("peak during reload", r["reload_peak_mb"], items),
        ):
            only = f"{(value - less) / raw:.2f}"
            lines.append(f"| faiss {r['kind']} | {r['n']:,} | {raw:.0f} | {label} | {value:.0f} | {value / raw:.2f} | {only} |")
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | items | build (s) | 1 query p50 / p95 (ms) | 64 queries p50 / p95 (ms) | memory (MB) | recall@10 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['n']:,} | {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['backend']} | {r['n']:,} | {r['build_s']:.1f} | {r['single_p50_ms']:.1f} / {r['single_p95_ms']:.1f} | "
            f"{r['batch64_p50_ms']:.0f} / {r['batch64_p95_ms']:.0f} | {r['memory_mb']:.0f} | {r['recall_at_10']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every (backend, size) and every KB measurement in a subprocess and print the Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="knowledge-base sizes")
    parser.add_argument("--backends", nargs="*", default=BACKENDS, choices=BACKENDS, help="backends to measure")
    parser.add_argument("--data", default="unclustered", choices=DATA,
                        help="unclustered embedding-like vectors with fresh queries (default) or the earlier clustered data")
    parser.add_argument("--kb-kinds", nargs="*", default=["flat"], choices=["flat", "ivf", "hnsw"],
                        help="faiss kinds of the whole-KB memory/disk measurement (default: flat; none: skip it)")
    parser.add_argument("--queries", type=int, default=100, help="single queries timed (and scored for recall)")
    parser.add_argument("--batches", type=int, default=5, help="batches of 64 queries timed")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per subprocess before it is reported as too slow")
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--kb-build", nargs=3, metavar=("KIND", "N", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--kb-reload", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.queries, args.batches, args.data)))
        return 0
    if args.kb_build:
        print(json.dumps(kb_build(args.kb_build[0], int(args.kb_build[1]), Path(args.kb_build[2]))))
        return 0
    if args.kb_reload:
        print(json.dumps(kb_reload(Path(args.kb_reload))))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with contextlib.ExitStack() as stack:
        if "milvus-server" in args.backends:
            from llama_index_lvlm_retriever.testing.milvus_server import (
                MilvusServer,
                MilvusServerError,
            )

            try:
                server = stack.enter_context(MilvusServer(stack.enter_context(tempfile.TemporaryDirectory(prefix="milvus-"))))
                env[_SERVER_ENV] = f"{server.uri} {server.pid}"
            except MilvusServerError as err:
                print(f"milvus-server: {err}", file=sys.stderr)
                args.backends = [b for b in args.backends if b != "milvus-server"]
        rows = _run_all(args, env)
    kb_rows = [_run_kb(kind, n, env, args.timeout) for n in args.sizes for kind in args.kb_kinds]
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, 1 thread per run; "
          f"Python {platform.python_version()}; {DIM}-d vectors ({args.data}), k={K}.\n")
    if rows:
        print(_table(rows))
    if kb_rows:
        print(f"\nKnowledgeBase memory and disk; raw vectors = 2 x n x {DIM} x 4 bytes (image + text float32).\n")
        print(_kb_table(kb_rows))
    return 0


def _run_all(args: argparse.Namespace, env: dict[str, str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        for backend in args.backends:
            cmd = [sys.executable, __file__, "--one", backend, str(n), "--queries", str(args.queries),
                   "--batches", str(args.batches), "--data", args.data]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
            except subprocess.TimeoutExpired:
                rows.append({"backend": backend, "n": n, "error": f"over {args.timeout} s"})
                continue
            if done.returncode != 0:
                rows.append({"backend": backend, "n": n, "error": f"failed: {done.stderr.strip().splitlines()[-1:]}"})
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
