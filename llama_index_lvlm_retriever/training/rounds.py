"""Feedback rounds: grow the training pool with what the trained heads retrieve now.

A head trained on a cached pool ranks candidates it never saw (outside the pool) higher once it
moves. After a round, :func:`expand_pools` retrieves the top ``N`` candidates per trained head for
every training case with the *trained* heads, scores the (case, candidate) pairs the cache does
not hold yet with the reader (through the cache's pair store: each pair is scored once, and a crash
mid-round resumes where it stopped), and returns the cache with those candidates appended to the
pools. Their frozen scores (the prior of ``PosteriorKLLoss``) are the collecting retriever's cosines,
recomputed from the cached frozen query embeddings and the KB vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llama_index_lvlm_retriever.retriever import HEAD_IMAGE, HEAD_TEXT, LVLMAwareRetriever
from llama_index_lvlm_retriever.training._reader_scoring import _gold_targets
from llama_index_lvlm_retriever.training.feedback_pairs import score_pairs

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.data.records import Case
    from llama_index_lvlm_retriever.readers.base import Reader
    from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache

logger = logging.getLogger(__name__)


def expand_pools(
    cache: FeedbackCache,
    collecting: LVLMAwareRetriever,
    trained: LVLMAwareRetriever,
    heads: Sequence[str],
    reader: Reader,
    cases: Mapping[str, Case],
    *,
    batch_size: int = 64,
) -> tuple[FeedbackCache, dict[str, Any]]:
    """The training cache with each case's pools extended by the trained heads' new top-``N``.

    Args:
        cache: The current training cache (its ``n_candidates`` is the ``N`` retrieved).
        collecting: The retriever that collected ``cache`` (its heads give the frozen scores).
        trained: The retriever with the trained heads installed.
        heads: The trained heads (``"image"``, ``"text"``) whose pools grow.
        reader: The frozen reader that scored ``cache``.
        cases: The training Case records by id.
        batch_size: Pairs per ``reader.score`` call.

    Returns:
        ``(merged cache, stats)``: stats hold ``new_candidates`` (per head) and ``pairs_scored``.

    Raises:
        ValueError: A cached case id has no Case record.
    """
    ids = cache.case_ids
    missing = [cid for cid in ids if cid not in cases]
    if missing:
        raise ValueError(
            f"feedback rounds need the Case record of every training case, but cases= lacks {missing[0]!r} "
            f"({len(missing)} missing); pass the cases the feedback was collected for"
        )
    kb = trained.knowledge_base
    rows = [cases[cid] for cid in ids]
    embeddings = cache.query_embeddings.numpy()  # (n, d) frozen query embeddings
    n_new = cache.n_candidates
    hits = trained.search_heads(
        embeddings,
        k_image=n_new if HEAD_IMAGE in heads else 0,
        k_text=n_new if HEAD_TEXT in heads else 0,
        exclude_ids=[{cid} for cid in ids],
        exclude_hashes=[{kb.content_hash_of(c.image_path)} for c in rows],
        images=[c.image_path for c in rows],
    )
    pools = {h: [set(row) for row in cache.candidate_ids(h)] for h in heads}
    found: dict[str, list[list[Any]]] = {h: [[] for _ in ids] for h in heads}
    for h in heads:
        for r, row_hits in enumerate(hits[h]):
            found[h][r] = [hit for hit in row_hits if hit.item.id not in pools[h][r]]
    wanted = [(ids[r], hit.item) for h in heads for r in range(len(ids)) for hit in found[h][r]]
    scores, n_scored = score_pairs(cache, wanted, reader, cases, batch_size=batch_size)
    extras: dict[str, list[list[tuple[int, str, float, torch.Tensor]]]] = {}
    for h in heads:
        frozen = _frozen_vectors(collecting, h, cache, {c.id: c.image_path for c in rows})  # (n, D)
        keys = np.asarray(kb.image_vectors if h == HEAD_IMAGE else kb.text_vectors, dtype=np.float32)  # (K, D)
        extras[h] = [
            [
                (int(hit.position), hit.item.id, float(frozen[r] @ keys[int(hit.position)]), scores[(ids[r], hit.item.id)])
                for hit in found[h][r]
            ]
            for r in range(len(ids))
        ]
    gold = _gold_targets(rows, reader)  # (n, L)
    merged = cache.with_extra_candidates(extras, gold)
    stats = {"new_candidates": {h: sum(len(x) for x in found[h]) for h in heads}, "pairs_scored": n_scored}
    return merged, stats


def _frozen_vectors(
    retriever: LVLMAwareRetriever, head: str, cache: FeedbackCache, images: Mapping[str, Any]
) -> np.ndarray:
    """The collecting retriever's query vectors for ``head``, ``(n, D)`` (its cosines are the cached scores)."""
    from llama_index_lvlm_retriever.training.head_data import query_pixels

    embeddings = cache.query_embeddings.numpy()  # (n, d)
    module = retriever.image_head if head == HEAD_IMAGE else retriever.text_head
    if module is None or module.is_identity:
        return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    if getattr(module, "needs_image", False):  # an image-input head (EncoderQueryHead) reads the pixels
        return module.encode(embeddings, pixel_values=query_pixels(retriever.knowledge_base, cache, images))
    return module.encode(embeddings)


__all__ = ["expand_pools"]
