"""Recall@10 of the approximate faiss indexes against their search setting, on unclustered vectors.

Why these defaults (``IndexConfig.ef_search``, ``IndexConfig.nprobe``): approximate indexes lose
neighbours, and how many depends on the data. Clustered vectors with queries near a database vector
are IVF's best case; vectors with no cluster structure, where the 10 nearest neighbours are barely
nearer than the rest, are the hard case. This script measures the hard case: ``--n`` unit vectors
in 512 dimensions from one Gaussian with an embedding-like decaying spectrum (no clusters, see
``_embeddings``), queries drawn afresh from the same distribution, through the
package's own ``FaissIndex``, one thread. For each ``ef_search`` (HNSW, ``hnsw_m`` default) and
``nprobe`` (IVF, ``nlist`` default) it prints recall@10 against exact search and the median latency
of one query. Run::

    python benchmarks/ann_recall.py                  # 100k vectors: ~3 min on one core
    python benchmarks/ann_recall.py --n 20000 --ef 16 32 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.kb.backends import FaissIndex
from llama_index_lvlm_retriever.kb.types import IndexConfig

DIM = 512
K = 10


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _embeddings(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unclustered embedding-like unit vectors: one Gaussian whose component i has variance 1/i.

    No clusters (a single mode), but the decaying spectrum of real embedding matrices (their
    principal components fall off roughly as 1/i), so neighbours are meaningful, unlike uniform
    points on the sphere, where the 10 nearest are barely nearer than any other.
    """
    scale = 1.0 / np.sqrt(np.arange(1, DIM + 1, dtype=np.float32))  # (512,)
    return _unit(rng.standard_normal((n, DIM), dtype=np.float32) * scale)


def _recall(index: FaissIndex, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    found, times = [], []
    for q in queries:
        start = time.perf_counter()
        hits = index.search(q[None, :], K)[0]
        times.append(time.perf_counter() - start)
        found.append({int(i) for i, _ in hits})
    recall = float(np.mean([len(f & set(t.tolist())) / K for f, t in zip(found, truth)]))
    return recall, 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="database vectors (default: 100000)")
    parser.add_argument("--queries", type=int, default=200, help="queries (default: 200)")
    parser.add_argument("--ef", type=int, nargs="*", default=[32, 64, 128, 256], help="HNSW ef_search values")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[8, 16, 32, 64], help="IVF nprobe values")
    args = parser.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    vectors = _embeddings(rng, args.n)  # (n, 512)
    queries = _embeddings(rng, args.queries)  # (queries, 512): new draws, not perturbed database rows
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]  # (queries, 10) exact top-10
    items = [KBItem(id=str(i), image_path="", text="") for i in range(args.n)]
    hashes = [""] * args.n
    defaults = IndexConfig()
    print(f"{args.n} unclustered 512-d unit vectors, {args.queries} queries, 1 thread; defaults: "
          f"hnsw_m={defaults.hnsw_m}, ef_search={defaults.ef_search}, nlist={defaults.nlist}, nprobe={defaults.nprobe}\n")
    print("| index | setting | recall@10 | 1 query p50 (ms) |")
    print("|---|---|---:|---:|")
    for kind, name, values in (("hnsw", "ef_search", args.ef), ("ivf", "nprobe", args.nprobe)):
        start = time.perf_counter()
        index = FaissIndex(IndexConfig(kind=kind))
        index.add(vectors, items, hashes)
        built = time.perf_counter() - start
        for value in values:
            if kind == "hnsw":
                index.faiss_index.hnsw.efSearch = value
            else:
                index.faiss_index.nprobe = value
            recall, latency = _recall(index, queries, truth)
            mark = " (default)" if value == getattr(defaults, name) else ""
            print(f"| {kind} (built in {built:.0f} s) | {name}={value}{mark} | {recall:.3f} | {latency:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
