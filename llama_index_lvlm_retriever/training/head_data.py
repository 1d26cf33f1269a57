"""HeadData: one head's cached candidates as training tensors, built from a feedback cache.

The engine trains on tensors only: the frozen query embeddings, the candidates' knowledge-base keys,
the cached retrieval scores and the reader's log P(gold | candidate). Only the KB rows some candidate
uses are copied (``keys``), so a large knowledge base costs nothing extra; ``slots`` maps each
candidate to its row of ``keys``. In encoder mode the query images, processed once by the KB's
embedding model, come along (``pixels``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from llama_index_lvlm_retriever.data.images import ImageInput, load_image
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.retriever import HEAD_IMAGE
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache

_PROCESS_CHUNK = 256  # images per processor call (bounds peak memory of the decoded PIL images)
_EVAL_CHUNK = 4096  # cases per no-grad scoring chunk (bounds memory on large caches)
_ENCODER_EVAL_CHUNK = 128  # images per no-grad tower pass in encoder mode (bounds activation memory)


@dataclass
class HeadData:
    """One head's cached candidates on the training device."""

    embeddings: torch.Tensor  # (n, d) frozen query embeddings
    keys: torch.Tensor  # (U, D) KB vectors of the U distinct candidates
    slots: torch.Tensor  # (n, N) int64 row of ``keys``; 0 where masked
    frozen_scores: torch.Tensor  # (n, N) cached retrieval scores
    gold: torch.Tensor  # (n, N) log P_reader(gold | c)
    mask: torch.Tensor  # (n, N) bool
    disagree: torch.Tensor  # (n,) bool
    rows: torch.Tensor  # (m,) cases with at least one candidate
    pixels: torch.Tensor | None = None  # (n, C, H, W) processed query images (encoder mode only)


def build_head_data(
    cache: FeedbackCache,
    name: str,
    kb: KnowledgeBase,
    device: torch.device,
    *,
    pixels: torch.Tensor | None = None,
) -> HeadData:
    """Gather head ``name``'s candidates of ``cache`` with their keys from ``kb``, on ``device``."""
    vectors = kb.image_vectors if name == HEAD_IMAGE else kb.text_vectors
    positions = cache.candidate_positions(name)  # (n, N), -1 where masked
    mask = cache.mask(name)
    used = torch.unique(positions[mask])  # (U,) sorted KB rows
    keys = torch.from_numpy(np.asarray(vectors, dtype=np.float32)[used.numpy()])  # (U, D)
    slots = torch.searchsorted(used, positions.clamp(min=0)) * mask  # (n, N); 0 where masked
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    return HeadData(
        embeddings=cache.query_embeddings.float().to(device),
        keys=keys.to(device),
        slots=slots.to(device),
        frozen_scores=cache.retrieval_scores(name).float().to(device),
        gold=cache.gold_log_probs(name).float().to(device),
        mask=mask.to(device),
        disagree=cache.disagree().to(device),
        rows=rows.to(device),
        pixels=None if pixels is None else pixels.to(device),
    )


def query_pixels(kb: KnowledgeBase, cache: FeedbackCache, case_images: Mapping[str, ImageInput]) -> torch.Tensor:
    """The cache's query images processed by the KB's embedding model, ``(n, C, H, W)``.

    Raises:
        ValueError: A cached case id has no image in ``case_images``.
        TypeError: The embedding model has no ``processor.image_processor``.
    """
    missing = [cid for cid in cache.case_ids if cid not in case_images]
    if missing:
        raise ValueError(
            f"encoder mode needs the query image of every cached case, but cases= has no case with id "
            f"{missing[0]!r} ({len(missing)} missing); pass the cases the feedback was collected on"
        )
    processor = getattr(getattr(kb.embed_model, "processor", None), "image_processor", None)
    if processor is None:
        raise TypeError(
            "encoder mode needs the embedding model's processor.image_processor (a CLIPEmbedding); use "
            "mode='adapter' with this embedding model"
        )
    paths = [case_images[cid] for cid in cache.case_ids]
    chunks = [
        processor(images=[load_image(p) for p in paths[s : s + _PROCESS_CHUNK]], return_tensors="pt")["pixel_values"]
        for s in range(0, len(paths), _PROCESS_CHUNK)
    ]
    return torch.cat(chunks).float()  # (n, C, H, W)


def candidate_scores(head: nn.Module, data: HeadData, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Cosine of the head's query vector with each selected candidate's key, ``(B, n)``.

    Args:
        head: A ``QueryHead`` (reads the cached frozen embedding) or, when ``data.pixels`` is set,
            an ``EncoderQueryHead`` (reads the query images, blended with the frozen embedding).
        data: The head's cached candidates.
        rows: ``(B,)`` cases.
        cols: ``(B, n)`` columns of their pools.
    """
    if data.pixels is not None:
        query = head(data.pixels[rows], data.embeddings[rows])  # (B, D)
    else:
        query = head(data.embeddings[rows])  # (B, D)
    keys = data.keys[data.slots[rows].gather(1, cols)]  # (B, n, D)
    return torch.einsum("bd,bnd->bn", query, keys)  # both unit-norm: cosines


@torch.no_grad()
def pool_scores(head: nn.Module, data: HeadData) -> torch.Tensor:
    """The head's cosines over every case's whole cached pool, ``(n, N)``, ``-inf`` where masked."""
    head.eval()
    n, big_n = data.mask.shape
    all_cols = torch.arange(big_n, device=data.mask.device).expand(n, big_n)  # (n, N)
    chunk = _ENCODER_EVAL_CHUNK if data.pixels is not None else _EVAL_CHUNK
    rows = torch.arange(n, device=data.mask.device).split(chunk)
    return torch.cat([candidate_scores(head, data, r, all_cols[r]) for r in rows]).masked_fill(~data.mask, float("-inf"))


__all__ = ["HeadData", "build_head_data", "candidate_scores", "pool_scores", "query_pixels"]
