"""Scale benchmark of the knowledge-base vector backends: build, latency, memory, recall@10.

Each (backend, size) runs in its own subprocess (so peak memory is its own) over the same
synthetic 512-d unit vectors: a mixture of 1,000 Gaussian clusters (embeddings are clustered, not
uniform on the sphere), queries are perturbed database vectors. Measured through the package's own
backend classes (``FaissIndex``, ``MilvusIndex``, ``QdrantIndex``), one modality, one thread
(``OMP_NUM_THREADS=1``; faiss ``omp_set_num_threads(1)``):

- build: seconds to insert every vector (and train IVF / build HNSW);
- single: p50 / p95 latency of one query (k=10); batch64: p50 / p95 of a batch of 64 queries;
- memory: the process's RSS after building and searching minus its RSS before (the index's cost);
- recall@10: overlap of the top-10 with exact search (numpy), averaged over the queries.

Usage::

    python benchmarks/scale.py                       # 100k: every backend
    python benchmarks/scale.py --sizes 100000 1000000 --backends faiss-flat faiss-ivf

Prints one Markdown table (the one in the README's "Scaling out"). Milvus Lite and Qdrant local mode
are timed on 20 single queries and 2 batches (they take up to seconds per query). ``milvus-server`` is
a real Milvus 2.3 standalone server (``pip install milvus``) started here on free ports for the run;
its memory is the server processes' RSS growth (they are not the benchmark's process).
"""

from __future__ import annotations

import argparse
import contextlib
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

DIM = 512
K = 10
BACKENDS = ["faiss-flat", "faiss-ivf", "faiss-hnsw", "milvus-lite", "milvus-server", "qdrant-local"]
_SERVER_ENV = "LVLM_SCALE_MILVUS"  # "<uri> <server pid>" of the server main() started, for the child


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, DIM), dtype=np.float32)  # (1000, 512)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        labels = rng.integers(0, 1000, stop - start)
        block = centers[labels] + 0.7 * rng.standard_normal((stop - start, DIM), dtype=np.float32)  # (b, 512)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


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
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def _open(backend: str, n: int, workdir: Path) -> Any:
    from llama_index_lvlm_retriever.kb.backends import (
        FaissIndex,
        MilvusBackendConfig,
        QdrantBackendConfig,
    )
    from llama_index_lvlm_retriever.kb.types import BackendIdentity, IndexConfig

    identity = BackendIdentity(kb_uid="bench", dim=DIM, encoder="bench", encoder_label="bench")
    if backend == "faiss-flat":
        return FaissIndex(IndexConfig(kind="flat"))
    if backend == "faiss-ivf":
        nlist = int(np.sqrt(n))  # low end of faiss's sqrt(n)..16 sqrt(n) rule: keeps single-thread training short
        return FaissIndex(IndexConfig(kind="ivf", nlist=nlist, nprobe=16))
    if backend == "faiss-hnsw":
        return FaissIndex(IndexConfig(kind="hnsw", hnsw_m=32, ef_search=64))
    if backend == "milvus-lite":
        return MilvusBackendConfig(uri=str(workdir / "kb.db"), collection="bench").open("image", IndexConfig(kind="flat"), identity)
    if backend == "milvus-server":
        uri = os.environ[_SERVER_ENV].split()[0]
        return MilvusBackendConfig(uri=uri, collection=f"bench_{n}", timeout=600).open("image", IndexConfig(kind="flat"), identity)
    if backend == "qdrant-local":
        return QdrantBackendConfig(path=str(workdir / "qdrant"), collection="bench").open("image", IndexConfig(kind="flat"), identity)
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


def run_one(backend: str, n: int, n_single: int, n_batches: int) -> dict[str, Any]:
    """Measure one backend at one size in this process."""
    import faiss

    from llama_index_lvlm_retriever.data.records import KBItem

    faiss.omp_set_num_threads(1)
    if backend in ("milvus-lite", "milvus-server", "qdrant-local"):
        # The embedded modes answer in 0.03-5 s per query at 100k: time fewer queries.
        n_single, n_batches = min(n_single, 20), min(n_batches, 2)
    vectors = _vectors(n)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, n, n_single + 64 * n_batches)
    queries = vectors[picks] + 0.05 * rng.standard_normal((len(picks), DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
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
    """Run every (backend, size) in a subprocess and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="knowledge-base sizes")
    parser.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS, help="backends to measure")
    parser.add_argument("--queries", type=int, default=100, help="single queries timed (and scored for recall)")
    parser.add_argument("--batches", type=int, default=5, help="batches of 64 queries timed")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per (backend, size) before it is reported as too slow")
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.queries, args.batches)))
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
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, 1 thread per run; "
          f"Python {platform.python_version()}; {DIM}-d vectors, k={K}.\n")
    print(_table(rows))
    return 0


def _run_all(args: argparse.Namespace, env: dict[str, str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        for backend in args.backends:
            cmd = [sys.executable, __file__, "--one", backend, str(n), "--queries", str(args.queries), "--batches", str(args.batches)]
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
