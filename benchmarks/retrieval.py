"""Benchmark: query latency and knowledge-base build throughput against plain LlamaIndex.

Two measurements, printed as one Markdown table:

1. **Query latency** of ``LVLMAwareRetriever`` (image head only, k=4, identity head, faiss flat
   index) vs. LlamaIndex's ``MultiModalVectorStoreIndex`` retriever (default in-memory
   ``SimpleVectorStore``, ``image_to_image_retrieve``, top 4), both over the SAME random unit
   512-d vectors. Query "images" are keys that a stub ``MultiModalEmbedding`` maps to precomputed
   vectors, so embedding costs the same negligible amount on both sides and only search is timed.
2. **KB build throughput**: ``KnowledgeBase.build`` with ``CLIPEmbedding`` (batch 64) vs. embedding
   one pair at a time (``get_image_embedding`` + ``get_text_embedding`` per item, as a naive loop
   over LlamaIndex's embedding API would), with a small random CLIP built from a config.

Run: ``python benchmarks/retrieval.py [--sizes 10000 100000] [--build-items 256]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.schema import ImageNode, QueryBundle
from PIL import Image

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.testing import build_tiny_clip

logger = logging.getLogger("benchmarks.retrieval")

DIM = 512
TOP_K = 4


class LookupEmbedding(MultiModalEmbedding):
    """Stub encoder: an "image" is a key into a table of precomputed vectors (no model runs)."""

    table: dict[str, list[float]]

    @classmethod
    def class_name(cls) -> str:
        return "LookupEmbedding"

    def embed_images(self, images: list[Any]) -> np.ndarray:
        return np.asarray([self.table[str(key)] for key in images], dtype=np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), DIM), dtype=np.float32)

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        return self.table[str(img_file_path)]

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._get_image_embedding(img_file_path)

    def _get_text_embedding(self, text: str) -> list[float]:
        return [0.0] * DIM

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embedding(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def median_ms(fn: Callable[[str], Any], queries: list[str]) -> float:
    fn(queries[0])  # warm-up
    times = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def bench_queries(n: int, n_fast: int, n_slow: int, seed: int) -> dict[str, float]:
    from llama_index.core.indices import MultiModalVectorStoreIndex

    rng = np.random.default_rng(seed)
    kb_vectors = unit_rows(rng, n)
    query_vectors = unit_rows(rng, max(n_fast, n_slow))
    stub = LookupEmbedding(table={f"q{i}": v.tolist() for i, v in enumerate(query_vectors)})
    ids = [f"kb-{i}" for i in range(n)]

    items = [KBItem(id=i, image_path=f"/bench/{i}.png", text="") for i in ids]
    kb = KnowledgeBase(stub, items, kb_vectors, kb_vectors, image_hashes=ids)
    ours = LVLMAwareRetriever(kb, k_image=TOP_K, k_text=0)
    ours_ms = median_ms(lambda q: ours.retrieve(QueryBundle(query_str="", image_path=q)), [f"q{i}" for i in range(n_fast)])

    start = time.perf_counter()
    # LlamaIndex skips nodes without content, so each node carries a caption; nodes that already
    # have an embedding are not re-embedded (the caption goes to the text store with the same vector).
    nodes = [ImageNode(id_=i, text=f"caption {i}", image_path=f"/bench/{i}.png", embedding=v.tolist()) for i, v in zip(ids, kb_vectors)]
    index = MultiModalVectorStoreIndex(nodes, embed_model=stub, image_embed_model=stub)
    baseline = index.as_retriever(image_similarity_top_k=TOP_K)
    logger.info("built LlamaIndex index of %d nodes in %.1f s", n, time.perf_counter() - start)
    base_ms = median_ms(baseline.image_to_image_retrieve, [f"q{i}" for i in range(n_slow)])

    # Same vectors, same exact search: both must return the same top-k for the same query.
    got = [n.node.node_id for n in ours.retrieve(QueryBundle(query_str="", image_path="q0"))]
    want = [n.node.node_id for n in baseline.image_to_image_retrieve("q0")]
    if got != want:
        raise RuntimeError(f"retrievers disagree on q0 at n={n}: {got} vs {want}")
    return {"ours_ms": ours_ms, "base_ms": base_ms}


def bench_build(n_items: int, seed: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_clip(
            Path(tmp) / "clip", image_size=96, patch_size=16, hidden=256, layers=4, heads=8, projection_dim=DIM, max_text_length=32
        )
        items = []
        for i in range(n_items):
            path = Path(tmp) / f"img{i}.png"
            Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(path)
            items.append(KBItem(id=f"b{i}", image_path=str(path), text=f"generated image number {i} with random pixels"))
        embed = CLIPEmbedding.from_pretrained(folder, embed_batch_size=64)
        embed.get_image_embedding(items[0].image_path)  # warm-up
        batched, naive = float("inf"), float("inf")
        for _ in range(repeats):  # best of `repeats`: the least disturbed by other processes
            start = time.perf_counter()
            KnowledgeBase.build(items, embed, batch_size=64, show_progress=False)
            batched = min(batched, time.perf_counter() - start)
            start = time.perf_counter()
            for item in items:
                embed.get_image_embedding(item.image_path)
                embed.get_text_embedding(item.text)
            naive = min(naive, time.perf_counter() - start)
    return {"batched_s": batched, "naive_s": naive}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000, 100000], help="KB sizes for the query benchmark (none: skip it)")
    parser.add_argument("--queries", type=int, default=200, help="queries timed for our retriever")
    parser.add_argument("--baseline-queries", type=int, default=10, help="queries timed for the (slow) LlamaIndex baseline")
    parser.add_argument("--build-items", type=int, default=256, help="generated images for the build benchmark (0 skips it)")
    parser.add_argument("--build-repeats", type=int, default=2, help="build timings repeated; the best is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (build benchmark)")
    parser.add_argument(
        "--faiss-threads", type=int, default=1,
        help="faiss OpenMP threads for our queries (1 = single-threaded, like the Python baseline)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.faiss_threads)

    rows = ["| benchmark | ours | LlamaIndex baseline | speed-up |", "|---|---|---|---|"]
    for n in args.sizes:
        r = bench_queries(n, args.queries, args.baseline_queries, args.seed)
        rows.append(
            f"| query latency, {n:,} items, k={TOP_K} (median) | {r['ours_ms']:.2f} ms | {r['base_ms']:.2f} ms | "
            f"{r['base_ms'] / r['ours_ms']:.0f}x |"
        )
    if args.build_items > 0:
        b = bench_build(args.build_items, args.seed, args.build_repeats)
        n = args.build_items
        rows.append(
            f"| KB build, {n} image-caption pairs (CLIP 256-d/4 layers, 96 px; best of {args.build_repeats}) | {n / b['batched_s']:.1f} pairs/s "
            f"(batch 64) | {n / b['naive_s']:.1f} pairs/s (one at a time) | {b['naive_s'] / b['batched_s']:.1f}x |"
        )
    print("\n".join(rows))
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"{args.faiss_threads} faiss thread(s), python {platform.python_version()}, torch {torch.__version__}, "
        f"faiss {faiss.__version__}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
