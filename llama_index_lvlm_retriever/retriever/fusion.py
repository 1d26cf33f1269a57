"""Per-head score normalisation before the two heads' hits are merged.

The image head searches image vectors (image->image cosines, typically 0.8-0.99 for a CLIP) and
the text head searches caption vectors (image->caption cosines, typically 0.1-0.35): raw cosines of
the two heads live on different scales, so a softmax over them gives the text head's neighbours a
weight of ~0 and they never influence the answer. The paper (arXiv 2508.17394) divides each head's
scores by that head's maximum before fusing; that is ``"max"``, the default. Also offered:

* ``"max"``: ``s_i / max_j s_j`` per head and query (top hit = 1). A head whose best score is not
  positive (a cosine <= 0) is shifted instead, ``s_i - max_j s_j + 1``, so the top hit is still 1
  and the order is kept (division by a negative maximum would reverse it).
* ``"rank"``: ``1 - (r_i - 1) / n`` with ``r_i`` the 1-based rank among the head's ``n`` hits (top
  hit = 1, last = ``1 / n``); ignores score gaps entirely.
* ``"zscore"``: ``(s_i - mean) / std`` over the head's hits (0 for all when they are equal or
  there is one hit).
* ``"none"``: raw scores (what the retriever did before fusion existed).

The fused score becomes the node's score (``NodeWithScore.score``): the merged order and the
retrieval weights of ``LVLMRerank`` and the evaluator use it; the raw cosines stay in the node's
metadata (``image_score``/``text_score``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

HeadFusion = Literal["max", "rank", "zscore", "none"]
HEAD_FUSIONS: tuple[str, ...] = get_args(HeadFusion)
DEFAULT_HEAD_FUSION: HeadFusion = "max"


def fuse_head_scores(scores: Sequence[float], method: HeadFusion = DEFAULT_HEAD_FUSION) -> np.ndarray:
    """Normalise one head's hit scores for one query (best first or in any order).

    Args:
        scores: The head's ``(n,)`` raw scores (cosines).
        method: ``"max"``, ``"rank"``, ``"zscore"`` or ``"none"`` (see the module docstring).

    Returns:
        float64 ``(n,)`` fused scores, same order as ``scores``.

    Raises:
        ValueError: An unknown method, or non-finite scores.

    Example:
        >>> fuse_head_scores([0.95, 0.90]).round(4).tolist()
        [1.0, 0.9474]
        >>> fuse_head_scores([0.10, 0.08]).round(4).tolist()  # text head: same scale after fusion
        [1.0, 0.8]
    """
    if method not in HEAD_FUSIONS:
        raise ValueError(f"unknown head_fusion {method!r}; choose one of {list(HEAD_FUSIONS)}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)  # (n,)
    if s.size == 0 or method == "none":
        return s.copy()
    if not np.all(np.isfinite(s)):
        raise ValueError(f"retrieval scores contain NaN or inf: {s.tolist()}; check the query embedding")
    if method == "max":
        top = s.max()
        # Dividing by a tiny or negative maximum would blow up or reverse the order: shift instead.
        return s / top if top > 1e-6 else s - top + 1.0
    if method == "rank":
        order = np.argsort(-s, kind="stable")  # best first; ties keep the given order
        ranks = np.empty_like(order)
        ranks[order] = np.arange(1, s.size + 1)
        return 1.0 - (ranks - 1) / s.size
    std = s.std()
    return (s - s.mean()) / std if std > 1e-12 else np.zeros_like(s)


__all__ = ["DEFAULT_HEAD_FUSION", "HEAD_FUSIONS", "HeadFusion", "fuse_head_scores"]
