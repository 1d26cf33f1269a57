"""Can this training target change retrieval at all? A check on the cached feedback, before training.

Every stage-2 loss is minimised by some ranking of each query's candidates; training can at best
reach that ranking. For a KL target ``Q`` the minimiser of ``KL(Q || softmax(s / gamma))`` is
``s = gamma * log Q + const``, so the optimum ranks candidates by ``Q``: with the paper's posterior
``Q ∝ P_reader(gold | c) * softmax(s_0 / prior_gamma)`` and ``prior_gamma`` as small as the cosine
gaps, a reader whose log P(gold) varies by ~0.1 nats cannot move any candidate past its neighbour,
and the optimum *is* the frozen ranking. :func:`diagnose_target` measures, over the training
queries of one head:

* ``frozen_topk_share``: the share of queries whose top-k at the loss's optimum is the frozen
  top-k (as a set). At >= :data:`FROZEN_SHARE_WARNING` the target cannot change retrieval, and a
  warning says so;
* ``reader_spread``: the median over queries of ``max - min`` of ``log P_reader(gold | c)`` over
  the candidates (nats): how much the reader's feedback varies;
* ``cosine_gap``: the median over queries of the mean gap between adjacent frozen scores in the
  top ``k + 1``: how far a candidate has to move to change places.

The check is cheap (tensor ops on the cache) and runs in
:class:`~llama_index_lvlm_retriever.training.trainer.RetrieverFinetuneEngine` for every trained
head; ``train-retriever`` prints it and ``trainer_config.json`` records it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["FROZEN_SHARE_WARNING", "TargetDiagnostics", "diagnose_target"]

logger = logging.getLogger(__name__)

FROZEN_SHARE_WARNING = 0.95
"""Warn when at least this share of training queries keeps its frozen top-k at the target's optimum."""


@dataclass(frozen=True)
class TargetDiagnostics:
    """What one head's training target can change, measured on its training candidates.

    Args:
        head: ``"image"`` or ``"text"``.
        k: The top-k compared (the retriever's ``k`` for this head).
        n_queries: Queries with more than ``k`` candidates (the others cannot change their top-k).
        frozen_topk_share: Share of those whose top-k at the loss's optimum equals the frozen top-k.
        reader_spread: Median over queries of the range of ``log P_reader(gold | c)`` (nats).
        cosine_gap: Median over queries of the mean adjacent gap of the frozen top ``k + 1`` scores.
        loss: ``repr`` of the loss module.
    """

    head: str
    k: int
    n_queries: int
    frozen_topk_share: float
    reader_spread: float
    cosine_gap: float
    loss: str

    @property
    def cannot_change_retrieval(self) -> bool:
        """Whether the share is at or above :data:`FROZEN_SHARE_WARNING`."""
        return self.n_queries > 0 and self.frozen_topk_share >= FROZEN_SHARE_WARNING

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {**asdict(self), "cannot_change_retrieval": self.cannot_change_retrieval}

    def line(self) -> str:
        """One human-readable line (the CLI prints it)."""
        return (
            f"{self.head} head: the target's optimum keeps the frozen top-{self.k} on "
            f"{100 * self.frozen_topk_share:.1f}% of {self.n_queries} training queries; reader log P(gold) "
            f"spread {self.reader_spread:.3f} nats (median) vs adjacent cosine gap {self.cosine_gap:.2g}"
        )


def diagnose_target(
    loss: Any,
    frozen_scores: torch.Tensor,
    reader_log_probs: torch.Tensor,
    mask: torch.Tensor,
    *,
    k: int,
    head: str = "image",
) -> TargetDiagnostics:
    """Measure whether ``loss``'s optimum re-orders the frozen top-``k`` of the training queries.

    Args:
        loss: A stage-2 loss with ``optimum_order(reader_log_probs, frozen_scores, mask)`` (every
            loss of :mod:`~llama_index_lvlm_retriever.training.losses`).
        frozen_scores: ``(n, N)`` the frozen retriever's candidate scores, sorted per query as
            retrieved (best first).
        reader_log_probs: ``(n, N)`` ``log P_reader(gold | c)``.
        mask: ``(n, N)`` bool, True for real candidates.
        k: Top-k compared, >= 1.
        head: Name for the record and the messages.

    Returns:
        The diagnostics; logs a warning when the target cannot change retrieval.

    Raises:
        TypeError: ``loss`` has no ``optimum_order``.
        ValueError: ``k`` < 1 or the shapes differ.

    Example:
        >>> import torch
        >>> from llama_index_lvlm_retriever.training.losses import LSRLoss, PosteriorKLLoss
        >>> frozen = torch.tensor([[0.900, 0.898, 0.896, 0.894]])  # gaps 0.002
        >>> reader = torch.tensor([[-0.70, -0.70, -0.60, -0.60]])  # prefers ranks 3 and 4 by 0.1 nats
        >>> mask = torch.ones(1, 4, dtype=torch.bool)
        >>> diagnose_target(PosteriorKLLoss(gamma=0.001), frozen, reader, mask, k=2).frozen_topk_share
        1.0
        >>> diagnose_target(LSRLoss(gamma=1.0), frozen, reader, mask, k=2).frozen_topk_share
        0.0
    """
    if not hasattr(loss, "optimum_order"):
        raise TypeError(
            f"diagnose_target needs a loss with optimum_order(reader_log_probs, frozen_scores, mask), got "
            f"{type(loss).__name__}; use one of training.losses or add the method"
        )
    if k < 1:
        raise ValueError(f"diagnose_target: k must be >= 1, got {k}")
    if not (frozen_scores.shape == reader_log_probs.shape == mask.shape):
        raise ValueError(
            f"diagnose_target: frozen_scores {tuple(frozen_scores.shape)}, reader_log_probs "
            f"{tuple(reader_log_probs.shape)} and mask {tuple(mask.shape)} must have one shape (n, N)"
        )
    mask = mask.bool().cpu()
    frozen, reader = frozen_scores.detach().double().cpu(), reader_log_probs.detach().double().cpu()
    rows = mask.sum(dim=1) > k  # (n,) only these can change their top-k
    if not bool(rows.any()):
        record = TargetDiagnostics(head, k, 0, float("nan"), float("nan"), float("nan"), repr(loss))
        logger.info("%s head: no training query has more than %d candidates; nothing to diagnose", head, k)
        return record
    frozen, reader, mask = frozen[rows], reader[rows], mask[rows]  # (r, N)
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64)
    frozen_rank = torch.where(mask, frozen, neg_inf)
    target = loss.optimum_order(reader, frozen, mask).double().cpu()  # (r, N)
    # Ties at the optimum (equal reader values) are broken by the frozen order, as a trained head would.
    tie_break = 1e-9 * (frozen_rank - frozen_rank.amax(dim=1, keepdim=True)).nan_to_num(neginf=-1.0)
    top_frozen = frozen_rank.topk(k, dim=1).indices.sort(dim=1).values  # (r, k)
    top_target = (target + tie_break).topk(k, dim=1).indices.sort(dim=1).values  # (r, k)
    share = float((top_frozen == top_target).all(dim=1).double().mean())
    big = torch.finfo(torch.float64).max
    spread = torch.where(mask, reader, torch.full_like(reader, -big)).amax(dim=1) - torch.where(
        mask, reader, torch.full_like(reader, big)
    ).amin(dim=1)  # (r,)
    head_scores = frozen_rank.topk(k + 1, dim=1).values  # (r, k + 1) best first
    gaps = (head_scores[:, :-1] - head_scores[:, 1:]).mean(dim=1)  # (r,)
    record = TargetDiagnostics(
        head=head, k=k, n_queries=int(rows.sum()), frozen_topk_share=share,
        reader_spread=float(spread.quantile(0.5)), cosine_gap=float(gaps.quantile(0.5)), loss=repr(loss),
    )
    if record.cannot_change_retrieval:
        logger.warning(
            "%s; this target cannot change retrieval (its optimum is the frozen ranking): use a flatter prior "
            "(PosteriorKLLoss(prior_gamma=1.0)), LSRLoss or ReaderRankLoss", record.line(),
        )
    else:
        logger.info("%s", record.line())
    return record
