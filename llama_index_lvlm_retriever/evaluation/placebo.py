"""A placebo retriever: standard RAG with its query embedding perturbed at random.

Any change of neighbours changes the answers on hard cases, and on cases a system got wrong a
change tends to look like an improvement (regression to the mean). To tell a real gain of a trained
retriever from that effect, compare it with a *placebo*: the frozen query embedding plus seeded
random noise, with the noise scale chosen so that the placebo's top-k lists overlap standard RAG's
exactly as much as the trained retriever's do. Equal disruption, no learning.

.. code-block:: python

    overlap = top_k_overlap(standard_ids, trained_ids)            # e.g. 0.78
    head, info = calibrate_placebo(standard, test_images, overlap, k=4, seed=0)
    placebo = LVLMAwareRetriever(kb, image_head=head, k_image=4, k_text=0)

The noise of a query depends only on its embedding and the seed (not on the batch), so a placebo
retrieves the same neighbours for a query however it is batched.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llama_index_lvlm_retriever.heads import PlaceboQueryHead, QueryHead

logger = logging.getLogger(__name__)

__all__ = ["PlaceboCalibration", "calibrate_placebo", "top_k_overlap"]


def top_k_overlap(first: Sequence[Sequence[str]], second: Sequence[Sequence[str]]) -> float:
    """Mean share of ``first``'s ids per query that are also in ``second``'s list for that query.

    Example:
        >>> top_k_overlap([["a", "b"], ["c", "d"]], [["b", "a"], ["c", "x"]])
        0.75
    """
    if len(first) != len(second):
        raise ValueError(f"top_k_overlap got {len(first)} and {len(second)} ranked lists; pass one list per query each")
    if not first:
        raise ValueError("top_k_overlap needs at least one query")
    shares = [len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(first, second)]
    return float(np.mean(shares))


@dataclass(frozen=True)
class PlaceboCalibration:
    """How a placebo was fitted: the scale found and the overlap it reaches."""

    noise_scale: float
    target_overlap: float
    achieved_overlap: float
    seed: int
    k: int
    n_queries: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "noise_scale": self.noise_scale,
            "target_overlap": self.target_overlap,
            "achieved_overlap": self.achieved_overlap,
            "seed": self.seed,
            "k": self.k,
            "n_queries": self.n_queries,
        }


def calibrate_placebo(
    retriever: Any,
    query_embeddings: np.ndarray,
    target_overlap: float,
    *,
    k: int,
    seed: int = 0,
    exclude_ids: Sequence[Collection[str]] | None = None,
    exclude_hashes: Sequence[Collection[str]] | None = None,
    tolerance: float = 0.005,
    max_iterations: int = 40,
    k_text: int = 0,
) -> tuple[PlaceboQueryHead, PlaceboCalibration]:
    """Find the noise scale whose top-``k`` image-head lists overlap standard RAG's by ``target_overlap``.

    Standard RAG is ``retriever``'s knowledge base searched with the plain query embeddings (any
    head of ``retriever`` is ignored). The overlap falls as the scale grows; bisection finds the
    scale that meets the target within ``tolerance`` (or the closest one after ``max_iterations``).
    A target of 1 gives scale 0 (standard RAG itself).

    Args:
        retriever: An ``LVLMAwareRetriever`` (its knowledge base is searched).
        query_embeddings: Frozen query embeddings ``(n, dim)`` (``retriever.embed_queries``).
        target_overlap: Overlap to match, in ``[0, 1]``; typically ``top_k_overlap`` of standard
            RAG and the trained retriever on the same queries.
        k: List length compared.
        seed: Noise seed.
        exclude_ids: Per-query KB ids to skip (as in evaluation).
        exclude_hashes: Per-query image hashes to skip.
        tolerance: Accepted absolute difference in overlap.
        max_iterations: Bound on search steps.
        k_text: With ``k_text > 0`` the placebo perturbs both heads (use the returned head as the
            image head *and* the text head) and the overlap compares the union of each query's
            ``k`` image-head and ``k_text`` text-head ids, as a 2 + 2 retriever reads them.

    Returns:
        The head and a :class:`PlaceboCalibration` record.

    Raises:
        ValueError: A target outside ``[0, 1]`` or no queries.
    """
    from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever  # noqa: F811

    if not 0.0 <= target_overlap <= 1.0:
        raise ValueError(f"target_overlap must be in [0, 1], got {target_overlap}")
    queries = np.asarray(query_embeddings, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[0] == 0:
        raise ValueError(f"calibrate_placebo needs query embeddings of shape (n>0, dim), got {queries.shape}")
    kb = retriever.knowledge_base
    dim = queries.shape[1]

    def ids(head: QueryHead | None) -> list[list[str]]:
        searcher = LVLMAwareRetriever(kb, image_head=head, text_head=head if k_text else None, k_image=k,
                                      k_text=k_text)
        hits = searcher.search_heads(queries, k_image=k, k_text=k_text, exclude_ids=exclude_ids,
                                     exclude_hashes=exclude_hashes)
        # One list per query: image-head ids, then text-head ids not already in it.
        return [list(dict.fromkeys(h.item.id for h in [*hits["image"][i], *hits["text"][i]]))
                for i in range(len(queries))]

    reference = ids(None)

    def overlap(scale: float) -> float:
        return top_k_overlap(reference, ids(PlaceboQueryHead(dim, scale, seed)))

    low, high = 0.0, 0.05
    if target_overlap == 1.0:
        # Only scale 0 keeps every list; the search below would stop at any overlap >= 1 - tolerance.
        high = 0.0
    high_overlap = overlap(high)
    while high_overlap > target_overlap and high < 64.0:
        low, high = high, 2.0 * high
        high_overlap = overlap(high)
    best_scale, best_overlap = high, high_overlap
    for _ in range(max_iterations):
        if abs(best_overlap - target_overlap) <= tolerance:
            break
        middle = 0.5 * (low + high)
        value = overlap(middle)
        if abs(value - target_overlap) < abs(best_overlap - target_overlap):
            best_scale, best_overlap = middle, value
        if value > target_overlap:
            low = middle
        else:
            high = middle
    calibration = PlaceboCalibration(
        noise_scale=best_scale,
        target_overlap=float(target_overlap),
        achieved_overlap=best_overlap,
        seed=seed,
        k=k,
        n_queries=int(queries.shape[0]),
    )
    logger.info("placebo: noise scale %.4f gives top-%d overlap %.3f (target %.3f)",
                best_scale, k, best_overlap, target_overlap)
    return PlaceboQueryHead(dim, best_scale, seed), calibration
