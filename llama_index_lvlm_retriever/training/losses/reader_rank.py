"""``ReaderRankLoss``: a pairwise ranking loss that orders candidates by the reader's utility."""

from __future__ import annotations

import math

import torch
from torch.nn import functional

from llama_index_lvlm_retriever.training.losses._common import (
    Reduction,
    _CandidateLoss,
    _Cases,
    _masked_log_softmax,
)

__all__ = ["ReaderRankLoss"]

_WEIGHT_FLOOR = 1e-12  # divides a case's summed pair weights; only reached by cases with no pair (loss 0)


class ReaderRankLoss(_CandidateLoss):
    """Score every candidate the reader prefers above the candidates it prefers less.

    Formula, per case with candidates ``c`` (the unmasked ones only)::

        d(i, j)  = log P_reader(y | x, c_i) - log P_reader(y | x, c_j)
        pairs    = {(i, j) : d(i, j) > min_gap}
        loss_x   = sum_pairs d(i, j) * softplus(-(s(c_i) - s(c_j)) / gamma) / sum_pairs d(i, j)
        loss     = (1 / B) * sum_cases loss_x

    where ``s(c)`` is the current retriever's score (cosine) of candidate ``c``, ``gamma`` a
    temperature that sets the margin (a pair stops pulling once ``s(c_i) - s(c_j)`` is a few
    ``gamma`` above 0), ``P_reader(y | x, c)`` the frozen reader's probability of the gold answer
    given candidate ``c`` alone, ``min_gap`` (nats) the smallest reader preference that counts, and
    ``B`` the number of cases used. Cases without a pair contribute 0.

    Source: RankNet's pairwise logistic loss ("Learning to Rank using Gradient Descent", Burges et
    al., ICML 2005) with each pair weighted by its utility gap as in LambdaRank; applied to the
    reader's likelihood of the gold answer (beyond arXiv 2508.17394, which uses a KL target).

    Inputs: ``scores`` and ``reader_log_probs``, both ``(batch, n_candidates)``; optional ``mask``
    and ``disagree`` as described in :mod:`llama_index_lvlm_retriever.training.losses`;
    ``frozen_scores`` is accepted and ignored.

    Relation to the other losses: the KL losses match a whole distribution, so their optimum
    moves scores by ``gamma`` times the reader's log-likelihood gaps (tiny when the reader varies
    by ~0.1 nats and ``gamma`` is fitted to the cosines); this loss only asks for the reader's
    *order* with a margin of a few ``gamma``, whatever the size of the reader's gaps, so with
    ``gamma="auto"`` it can re-order candidates whose cosines differ by ~1e-3. Its optimum ranks
    like :class:`LSRLoss`'s (by the reader); the ``"entropy_target"`` diagnostic reports LSR's
    target at ``beta = 1``.

    Hyperparameters: ``gamma`` *divides* the score differences, about the cosine gap between
    adjacent candidates (``TrainerConfig(gamma="auto")`` gives it); ``min_gap`` 0-0.05 nats
    (pairs the reader barely tells apart are noise).

    Args:
        gamma: Temperature dividing score differences, > 0.
        min_gap: Smallest reader log-likelihood gap (nats, >= 0) for a pair to count.
        only_inconsistent: Train only on cases flagged by ``disagree``.
        inconsistent_weight: Weight (>= 1) of an inconsistent case relative to a consistent one.
        reduction: ``"batchmean"`` (mean over used cases) or ``"sum"``.

    Raises:
        TypeError: If ``gamma`` is not a number or ``only_inconsistent`` is not a bool.
        ValueError: If ``gamma`` is not finite and > 0, ``min_gap`` < 0, or ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> loss_fn = ReaderRankLoss(gamma=0.01)
        >>> scores = torch.tensor([[0.30, 0.29, 0.28]], requires_grad=True)
        >>> out = loss_fn(scores, torch.log(torch.tensor([[0.2, 0.3, 0.9]])))
        >>> out["loss"].backward()
        >>> bool(scores.grad[0, 2] < 0 < scores.grad[0, 0])  # the reader's favourite is pushed up
        True
    """

    def __init__(
        self,
        gamma: float = 0.05,
        *,
        min_gap: float = 0.0,
        only_inconsistent: bool = False,
        inconsistent_weight: float = 1.0,
        reduction: Reduction = "batchmean",
    ) -> None:
        super().__init__(gamma=gamma, only_inconsistent=only_inconsistent, reduction=reduction,
                         inconsistent_weight=inconsistent_weight)
        if isinstance(min_gap, bool) or not isinstance(min_gap, (int, float)) or not (
            math.isfinite(min_gap) and min_gap >= 0
        ):
            raise ValueError(f"min_gap must be a finite float >= 0 (nats), got {min_gap!r}")
        self.min_gap = float(min_gap)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, min_gap={self.min_gap}"

    def _per_case(self, log_p: torch.Tensor, cases: _Cases) -> tuple[torch.Tensor, torch.Tensor]:
        s, r, mask = cases.scores, cases.reader_log_probs, cases.mask  # (m, n) each
        gap = r[:, :, None] - r[:, None, :]  # (m, n, n) d(i, j) = r_i - r_j
        pairs = mask[:, :, None] & mask[:, None, :] & (gap > self.min_gap)  # (m, n, n)
        weight = torch.where(pairs, gap, torch.zeros_like(gap))  # (m, n, n)
        # Padded scores may be anything (even NaN): zero them before they meet a zero weight.
        s = torch.where(mask, s, torch.zeros_like(s))
        margin = (s[:, :, None] - s[:, None, :]) / self.gamma  # (m, n, n)
        per_pair = weight * functional.softplus(-margin)  # (m, n, n)
        per_case = per_pair.sum(dim=(1, 2)) / weight.sum(dim=(1, 2)).clamp_min(_WEIGHT_FLOOR)  # (m,)
        return per_case, _masked_log_softmax(r, mask)
