"""The one order of a head's hits, ties included, the same on every backend.

Pairs with identical captions (or identical images) score the same on that head. Each backend breaks
such ties its own way (faiss by row, Milvus and Qdrant by segment or insertion order), and cuts the
top-k anywhere inside a tied group, so the same query got three different pairs on three backends,
and the same few pairs for almost every query. Here the knowledge base fixes the order itself:

1. by score, best first; scores within :data:`TIE_EPS` of each other are a tie (backends compute
   the same inner product with different float rounding, ~1e-7);
2. ties by the pair's *other-modality* similarity to the query, higher first (for the text head:
   the cosine of the pair's image with the query; for the image head: of its caption), which the
   knowledge base computes from its own frozen vectors, so it is the same number on every backend
   and differs from query to query;
3. then by item id.

So that the cut at ``k`` never splits a tied group arbitrarily, the backend is asked for one hit
more than needed, and an answer whose last hit is still tied with the k-th kept one is fetched again,
deeper, until the group is complete (:func:`needs_deeper_search`).

Private module; :meth:`KnowledgeBase.search <llama_index_lvlm_retriever.kb.knowledge_base.KnowledgeBase.search>`
is the API.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

TIE_EPS = 1e-6
"""Scores closer than this are tied (float32 inner products of one pair differ by ~1e-7 across backends)."""


def needs_deeper_search(
    hits: Sequence[tuple[str, float]], positions: Mapping[str, int], excluded: Collection[int], k: int, fetched: int
) -> bool:
    """Whether more tied hits may lie beyond what the backend returned for one query.

    Args:
        hits: The backend's ``(item id, score)`` for the query, best first.
        positions: Item id -> row.
        excluded: Rows excluded for this query.
        k: Hits wanted after exclusion.
        fetched: How many the backend was asked for (at least one more than ``k`` kept hits need,
            so that a last hit tied with the k-th is really beyond it).

    Example:
        >>> needs_deeper_search([("a", 0.9), ("b", 0.5), ("c", 0.5)], {"a": 0, "b": 1, "c": 2}, set(), 2, 3)
        True
        >>> needs_deeper_search([("a", 0.9), ("b", 0.5), ("c", 0.4)], {"a": 0, "b": 1, "c": 2}, set(), 2, 3)
        False
    """
    if len(hits) < fetched:
        return False  # the backend returned everything its filter allows
    kept = sorted((score for item_id, score in hits if positions.get(item_id) not in excluded), reverse=True)
    if len(kept) < k:
        return True
    last = min(score for _, score in hits)
    return last >= kept[k - 1] - TIE_EPS


def tie_order(scores: np.ndarray, other: np.ndarray, ids: Sequence[str]) -> list[int]:
    """Indices of one query's hits in the knowledge base's order (see the module docstring).

    Args:
        scores: ``(m,)`` the head's scores.
        other: ``(m,)`` each pair's other-modality similarity to the query.
        ids: The ``m`` item ids.

    Returns:
        A permutation of ``range(m)``, best first.

    Example:
        >>> tie_order(np.array([0.5, 0.9, 0.9]), np.array([0.1, 0.2, 0.7]), ["a", "b", "c"])
        [2, 1, 0]
    """
    m = len(ids)
    if m == 0:
        return []
    by_score = sorted(range(m), key=lambda j: -float(scores[j]))
    group = [0] * m  # tied groups: chains of neighbours within TIE_EPS
    for before, j in zip(by_score, by_score[1:]):
        group[j] = group[before] + (float(scores[before]) - float(scores[j]) > TIE_EPS)
    return sorted(range(m), key=lambda j: (group[j], -float(other[j]), ids[j]))


__all__ = ["TIE_EPS", "needs_deeper_search", "tie_order"]
