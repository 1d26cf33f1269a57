"""``PosteriorKLLoss``: the paper's KL from the reader-weighted posterior to the retriever softmax."""

from __future__ import annotations

import torch

from llama_index_lvlm_retriever.training.losses._common import (
    Reduction,
    _Cases,
    _check_temperature,
    _KLTargetLoss,
    _masked_log_softmax,
)

__all__ = ["PosteriorKLLoss"]


class PosteriorKLLoss(_KLTargetLoss):
    """Pull the retriever's candidate distribution towards the reader-weighted frozen-retriever posterior.

    Formula, per case with candidates ``c`` (the unmasked ones only)::

        P_retr(c) = exp(s(c) / gamma) / sum_c' exp(s(c') / gamma)
        P_0(c)    = exp(s_0(c) / gamma_0) / sum_c' exp(s_0(c') / gamma_0)
        Q(c)      = P_reader(y | x, c) * P_0(c) / sum_c' P_reader(y | x, c') * P_0(c')
        loss      = (1 / B) * sum_cases KL(Q || P_retr) = (1 / B) * sum_cases sum_c Q(c) log(Q(c) / P_retr(c))

    where ``s(c)`` is the current retriever's score (cosine) of candidate ``c``, ``s_0(c)`` the
    frozen (pre-training) retriever's score, ``gamma`` and ``gamma_0`` (``prior_gamma``) softmax
    temperatures, ``P_reader(y | x, c)`` the frozen reader's probability of the gold answer ``y``
    for query ``x`` given candidate ``c`` alone, and ``B`` the number of cases used (``batchmean``).
    ``Q`` is the posterior over candidates given that the reader answered correctly; it is
    detached, so the gradient is ``dloss/ds(c) = (P_retr(c) - Q(c)) / (gamma * B)``.

    Source: "LVLM-Aware Multimodal Retrieval for RAG-Based Medical Diagnosis with General-Purpose
    Models", arXiv 2508.17394 (stage-2 retriever training with the reader frozen).

    Inputs: ``scores``, ``reader_log_probs`` (``log P_reader(y | x, c)``) and ``frozen_scores``, all
    ``(batch, n_candidates)``; optional ``mask`` ``(batch, n_candidates)`` and ``disagree``
    ``(batch,)`` as described in :mod:`llama_index_lvlm_retriever.training.losses`.

    Relation to the other losses: with a uniform prior (constant ``frozen_scores``) it equals
    :class:`LSRLoss` with ``beta = 1``; :class:`EMDRLoss` has the same gradient with the *current*
    retriever as the prior, so the two coincide at the first step (``s = s_0``, ``gamma_0 = gamma``).
    The frozen prior keeps the target anchored to the original ranking, which stabilises training
    when the reader's preferences are noisy.

    Hyperparameters: ``gamma`` is a temperature that *divides* the cosines. ``prior_gamma``
    (default: ``gamma``) also divides the frozen scores in the prior, and it decides what training
    can learn: the minimiser of ``KL(Q || P_retr)`` is
    ``s = s_0 * gamma / prior_gamma + gamma * log P_reader(y | x, c) + const``, so the optimum
    re-orders two candidates only when the reader's log-likelihood gap exceeds their frozen score
    gap divided by ``prior_gamma``. With ``prior_gamma`` fitted to the cosine spread (``~1e-3``)
    and reader gaps of ~0.1 nats the optimum *is* the frozen ranking; ``prior_gamma = 1`` on raw
    cosines (the paper's code) gives a nearly flat prior and a target ranked by the reader.
    ``gamma = 1`` makes ``P_retr`` nearly uniform over candidates whose cosines differ by ~0.01;
    its gradient is small, but Adam normalises the step size, so it trains (and it avoids spending
    the loss on flattening a sharp softmax). Check a setting with
    :func:`~llama_index_lvlm_retriever.training.target_diagnostics.diagnose_target` before training.

    Args:
        gamma: Temperature dividing the current retriever's scores, > 0.
        prior_gamma: Temperature dividing the frozen scores in the prior ``P_0``, > 0;
            ``None`` = ``gamma``.
        only_inconsistent: Train only on cases flagged by ``disagree`` (the reader's prediction
            changes with the candidate); on consistent cases the reader term is nearly constant
            across candidates and the target is close to the prior, carrying little signal.
        inconsistent_weight: Weight (>= 1) of an inconsistent case relative to a consistent one in the
            mean (the soft version of ``only_inconsistent``; needs ``disagree``); 1 = equal weights.
        reduction: ``"batchmean"`` (sum over candidates, (weighted) mean over used cases) or ``"sum"``.

    Raises:
        TypeError: If a temperature is not a number or ``only_inconsistent`` is not a bool.
        ValueError: If a temperature is not finite and > 0 or ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> loss_fn = PosteriorKLLoss(gamma=0.05)
        >>> scores = torch.tensor([[0.31, 0.30, 0.25]], requires_grad=True)
        >>> reader = torch.log(torch.tensor([[0.2, 0.9, 0.5]]))
        >>> out = loss_fn(scores, reader, frozen_scores=scores.detach())
        >>> out["loss"].backward()
        >>> bool(scores.grad[0, 1] < 0)  # the reader prefers candidate 1: its score is pushed up
        True
    """

    _needs_frozen_scores = True

    def __init__(
        self,
        gamma: float = 0.05,
        *,
        prior_gamma: float | None = None,
        only_inconsistent: bool = False,
        inconsistent_weight: float = 1.0,
        reduction: Reduction = "batchmean",
    ) -> None:
        super().__init__(gamma=gamma, only_inconsistent=only_inconsistent, reduction=reduction,
                         inconsistent_weight=inconsistent_weight)
        self.prior_gamma = (
            self.gamma if prior_gamma is None else _check_temperature("prior_gamma", prior_gamma)
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prior_gamma={self.prior_gamma}"

    def _log_target(self, cases: _Cases) -> torch.Tensor:
        if cases.frozen_scores is None:  # the base class enforces it; guards the type for readers
            raise ValueError("PosteriorKLLoss needs frozen_scores=")
        # log Q = log P_reader + log P_0 - log Z; the prior's own normaliser cancels in the softmax.
        logits = cases.reader_log_probs + cases.frozen_scores / self.prior_gamma  # (m, n)
        return _masked_log_softmax(logits, cases.mask)
