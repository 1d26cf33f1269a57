"""``LSRLoss``: REPLUG's LM-supervised retrieval, KL from the tempered reader likelihood to the retriever."""

from __future__ import annotations

import torch

from llama_index_lvlm_retriever.training.losses._common import (
    Reduction,
    _Cases,
    _check_temperature,
    _KLTargetLoss,
    _masked_log_softmax,
)

__all__ = ["LSRLoss"]


class LSRLoss(_KLTargetLoss):
    """Pull the retriever's candidate distribution towards the reader's tempered likelihood of the gold answer.

    Formula, per case with candidates ``c`` (the unmasked ones only)::

        P_retr(c) = exp(s(c) / gamma) / sum_c' exp(s(c') / gamma)
        Q(c)      = exp(log P_reader(y | x, c) / beta) / sum_c' exp(log P_reader(y | x, c') / beta)
        loss      = (1 / B) * sum_cases KL(Q || P_retr)

    where ``s(c)`` is the current retriever's score (cosine) of candidate ``c``, ``gamma`` and
    ``beta`` temperatures, ``P_reader(y | x, c)`` the frozen reader's probability of the gold answer
    ``y`` for query ``x`` given candidate ``c`` alone, and ``B`` the number of cases used
    (``batchmean``). ``Q`` is detached, so ``dloss/ds(c) = (P_retr(c) - Q(c)) / (gamma * B)``.

    Source: "REPLUG: Retrieval-Augmented Black-Box Language Models", arXiv 2301.12652 (LM-supervised
    retrieval, LSR).

    Inputs: ``scores`` and ``reader_log_probs`` (``log P_reader(y | x, c)``), both
    ``(batch, n_candidates)``; optional ``mask`` ``(batch, n_candidates)`` and ``disagree``
    ``(batch,)`` as described in :mod:`llama_index_lvlm_retriever.training.losses`;
    ``frozen_scores`` is accepted and ignored.

    Relation to the other losses: :class:`PosteriorKLLoss` with a uniform prior (constant frozen
    scores) is this loss with ``beta = 1``; without the prior the target ignores the original
    ranking entirely, which is stronger but noisier supervision. :class:`EMDRLoss` instead
    maximises the marginal likelihood of the gold answer.

    Hyperparameters: ``gamma`` is a temperature that *divides* the cosines, 0.01-0.1 typical
    (0.05 default, as in the paper). ``beta`` is a temperature that *divides* the reader
    log-likelihoods, 0.1-1 typical: ``beta = 1`` makes ``Q`` the reader's normalised likelihood,
    smaller values sharpen it towards the single most helpful candidate.

    Args:
        gamma: Temperature dividing the retriever's scores, > 0.
        beta: Temperature dividing the reader log-likelihoods in the target, > 0.
        only_inconsistent: Train only on cases flagged by ``disagree``; when the reader answers the
            same whatever the candidate, ``Q`` is close to uniform and carries no ranking signal.
        inconsistent_weight: Weight (>= 1) of an inconsistent case relative to a consistent one in the
            mean (the soft version of ``only_inconsistent``; needs ``disagree``); 1 = equal weights.
        reduction: ``"batchmean"`` (sum over candidates, (weighted) mean over used cases) or ``"sum"``.

    Raises:
        TypeError: If a temperature is not a number or ``only_inconsistent`` is not a bool.
        ValueError: If a temperature is not finite and > 0 or ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> loss_fn = LSRLoss(gamma=0.05, beta=0.5)
        >>> scores = torch.tensor([[0.31, 0.30, 0.25]], requires_grad=True)
        >>> out = loss_fn(scores, torch.log(torch.tensor([[0.2, 0.9, 0.5]])))
        >>> sorted(out)
        ['entropy_retriever', 'entropy_target', 'loss', 'n_cases']
    """

    def __init__(
        self,
        gamma: float = 0.05,
        *,
        beta: float = 1.0,
        only_inconsistent: bool = False,
        inconsistent_weight: float = 1.0,
        reduction: Reduction = "batchmean",
    ) -> None:
        super().__init__(gamma=gamma, only_inconsistent=only_inconsistent, reduction=reduction,
                         inconsistent_weight=inconsistent_weight)
        self.beta = _check_temperature("beta", beta)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}"

    def _log_target(self, cases: _Cases) -> torch.Tensor:
        return _masked_log_softmax(cases.reader_log_probs / self.beta, cases.mask)  # (m, n)
