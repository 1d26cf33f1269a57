"""``EMDRLoss``: negative log marginal likelihood of the gold answer under the retriever's softmax."""

from __future__ import annotations

import torch

from llama_index_lvlm_retriever.training.losses._common import (
    _NEG_INF,
    Reduction,
    _CandidateLoss,
    _Cases,
)

__all__ = ["EMDRLoss"]


class EMDRLoss(_CandidateLoss):
    """Maximise the probability of the gold answer marginalised over the retriever's candidate distribution.

    Formula, per case with candidates ``c`` (the unmasked ones only)::

        P_retr(c) = exp(s(c) / gamma) / sum_c' exp(s(c') / gamma)
        loss      = -(1 / B) * sum_cases log sum_c P_retr(c) * P_reader(y | x, c)

    where ``s(c)`` is the current retriever's score (cosine) of candidate ``c``, ``gamma`` a
    temperature, ``P_reader(y | x, c)`` the frozen reader's probability of the gold answer ``y``
    for query ``x`` given candidate ``c`` alone (a constant: no gradient reaches the reader), and
    ``B`` the number of cases used (``batchmean``). It is computed as
    ``-logsumexp_c(log P_retr(c) + log P_reader(y | x, c))`` for stability. Its gradient is
    ``dloss/ds(c) = (P_retr(c) - Q(c)) / (gamma * B)`` with the current posterior
    ``Q(c) = P_retr(c) P_reader(y | x, c) / sum_c' P_retr(c') P_reader(y | x, c')``; the
    ``"entropy_target"`` diagnostic is the entropy of this ``Q``.

    Source: "End-to-End Training of Multi-Document Reader and Retriever for Open-Domain Question
    Answering", Singh et al., arXiv 2106.05346 (EMDR², retriever term with the reader held fixed).

    Inputs: ``scores`` and ``reader_log_probs`` (``log P_reader(y | x, c)``), both
    ``(batch, n_candidates)``; optional ``mask`` ``(batch, n_candidates)`` and ``disagree``
    ``(batch,)`` as described in :mod:`llama_index_lvlm_retriever.training.losses`;
    ``frozen_scores`` is accepted and ignored.

    Relation to the other losses: it is :class:`PosteriorKLLoss` with the prior re-estimated from
    the *current* retriever at every step (same gradient; equal at the first step), so the target
    moves with the model: no anchor to the original ranking, and it can sharpen without bound onto
    the candidates the reader already likes. Unlike the KL losses its value is not 0 at the optimum
    but ``-log max_c P_reader(y | x, c)``; with a reader that is uniform across candidates
    (``P_reader = p`` everywhere) it is ``-log p`` whatever the scores, with zero gradient.

    Hyperparameters: ``gamma`` is a temperature that *divides* the cosines; 0.01-0.1 typical
    (0.05 default, as in the paper).

    Args:
        gamma: Temperature dividing the retriever's scores, > 0.
        only_inconsistent: Train only on cases flagged by ``disagree``; when the reader answers the
            same whatever the candidate, the loss barely depends on the scores.
        inconsistent_weight: Weight (>= 1) of an inconsistent case relative to a consistent one in the
            mean (the soft version of ``only_inconsistent``; needs ``disagree``); 1 = equal weights.
        reduction: ``"batchmean"`` (mean over used cases) or ``"sum"``.

    Raises:
        TypeError: If ``gamma`` is not a number or ``only_inconsistent`` is not a bool.
        ValueError: If ``gamma`` is not finite and > 0 or ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> loss_fn = EMDRLoss(gamma=0.05)
        >>> scores = torch.zeros(1, 3, requires_grad=True)
        >>> out = loss_fn(scores, torch.log(torch.full((1, 3), 0.25)))
        >>> round(out["loss"].item(), 4)  # -log 0.25
        1.3863
    """

    def __init__(
        self,
        gamma: float = 0.05,
        *,
        only_inconsistent: bool = False,
        inconsistent_weight: float = 1.0,
        reduction: Reduction = "batchmean",
    ) -> None:
        super().__init__(gamma=gamma, only_inconsistent=only_inconsistent, reduction=reduction,
                         inconsistent_weight=inconsistent_weight)

    def _per_case(self, log_p: torch.Tensor, cases: _Cases) -> tuple[torch.Tensor, torch.Tensor]:
        joint = (log_p + cases.reader_log_probs).masked_fill(~cases.mask, _NEG_INF)  # (m, n)
        log_marginal = torch.logsumexp(joint, dim=-1)  # (m,)
        log_q = (joint - log_marginal[:, None]).masked_fill(~cases.mask, 0.0)  # (m, n) posterior
        return -log_marginal, log_q.detach()
