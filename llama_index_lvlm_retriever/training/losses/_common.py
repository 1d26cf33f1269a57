"""Plumbing shared by the retriever-training losses: input checks, case selection, softmaxes.

Every loss here compares the retriever's distribution over one case's candidates,
``P_retr(c) = softmax_c(s(c) / gamma)``, with a reader-derived target. This module holds what they
all do the same way: validate shapes and values, drop padded candidates and (optionally) consistent
cases, compute masked log-softmaxes and entropies, and package the output dict. Shapes use one
vocabulary: ``batch`` cases, ``n`` candidates per case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

__all__ = [
    "ENTROPY_RETRIEVER_KEY",
    "ENTROPY_TARGET_KEY",
    "LOSS_KEY",
    "N_CASES_KEY",
    "Reduction",
]

Reduction = Literal["batchmean", "sum"]

LOSS_KEY = "loss"
"""The scalar to optimise (the only entry that carries gradients)."""
ENTROPY_RETRIEVER_KEY = "entropy_retriever"
"""Mean over the used cases of the entropy of ``P_retr`` in nats (detached; 0 when no case is used)."""
ENTROPY_TARGET_KEY = "entropy_target"
"""Mean over the used cases of the entropy of the target ``Q`` in nats (detached; 0 when no case is used)."""
N_CASES_KEY = "n_cases"
"""Number of cases that entered the loss, an int64 scalar (fewer than ``batch`` with ``only_inconsistent``)."""

_NEG_INF = float("-inf")


@dataclass(frozen=True)
class _Cases:
    """The cases that enter the loss, each tensor ``(m, n)`` with ``m`` the number of used cases.

    Reader and frozen values at masked entries are replaced by 0, so no NaN/inf from padding
    reaches the arithmetic; padded scores are masked inside the softmax instead.
    """

    scores: torch.Tensor
    reader_log_probs: torch.Tensor
    frozen_scores: torch.Tensor | None
    mask: torch.Tensor
    weights: torch.Tensor | None = None  # (m,) per-case weights (soft inconsistent emphasis); None = equal


def _check_temperature(name: str, value: float) -> float:
    """Return ``value`` as a float after checking it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float > 0, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{name} must be a finite float > 0 (a temperature that divides), got {value!r}"
        )
    return float(value)


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log softmax`` over the unmasked entries of each row, ``(m, n)``; exactly 0 at masked entries.

    Masked logits become -inf before the softmax (zero probability), and the -inf in the result is
    then replaced by 0 so that products such as ``Q * log P`` stay finite (0 * 0, not 0 * -inf).
    """
    log_p = torch.log_softmax(logits.masked_fill(~mask, _NEG_INF), dim=-1)  # (m, n)
    return log_p.masked_fill(~mask, 0.0)


def _entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row's distribution given as masked log-probs (0 at padding), ``(m,)``."""
    # Masked entries hold log p = 0 (see _masked_log_softmax), so they add exp(0) * 0 = 0.
    return -(log_p.exp() * log_p).sum(dim=-1)


def _kl_to_target(log_q: torch.Tensor, log_p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``KL(Q || P) = sum_c Q(c) (log Q(c) - log P(c))`` per case, ``(m,)``.

    Entries with ``Q(c) = 0`` (masked or underflowed) contribute 0, the limit of ``q log q``,
    instead of the NaN that ``0 * (-inf)`` would give.
    """
    q = log_q.exp()  # (m, n)
    terms = torch.where(mask & (q > 0), q * (log_q - log_p), torch.zeros_like(log_p))  # (m, n)
    return terms.sum(dim=-1)


def _first_bad(bad: torch.Tensor) -> tuple[int, ...]:
    """Index of the first True entry of ``bad`` as a tuple of ints."""
    return tuple(int(i) for i in torch.nonzero(bad)[0])


class _CandidateLoss(nn.Module):
    """Base of the retriever-training losses: validation, case selection and the output dict.

    Subclasses implement :meth:`_per_case` and set ``_needs_frozen_scores`` when they use the
    frozen retriever's scores. The public ``forward`` signature and output convention are
    documented in :mod:`llama_index_lvlm_retriever.training.losses`.
    """

    _needs_frozen_scores: bool = False

    def __init__(
        self,
        *,
        gamma: float,
        only_inconsistent: bool,
        reduction: Reduction,
        inconsistent_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.gamma = _check_temperature("gamma", gamma)
        if not isinstance(only_inconsistent, bool):
            raise TypeError(f"only_inconsistent must be a bool, got {only_inconsistent!r}")
        self.only_inconsistent = only_inconsistent
        if reduction not in get_args(Reduction):
            raise ValueError(f"reduction must be one of {get_args(Reduction)}, got {reduction!r}")
        self.reduction: Reduction = reduction
        if isinstance(inconsistent_weight, bool) or not isinstance(inconsistent_weight, (int, float)) or not (
            math.isfinite(inconsistent_weight) and inconsistent_weight >= 1.0
        ):
            raise ValueError(
                f"inconsistent_weight must be a finite float >= 1 (the weight of an inconsistent case relative "
                f"to a consistent one; use only_inconsistent=True to drop consistent cases), got {inconsistent_weight!r}"
            )
        self.inconsistent_weight = float(inconsistent_weight)

    def extra_repr(self) -> str:
        soft = f", inconsistent_weight={self.inconsistent_weight}" if self.inconsistent_weight != 1.0 else ""
        return f"gamma={self.gamma}, only_inconsistent={self.only_inconsistent}{soft}, reduction={self.reduction!r}"

    @torch.no_grad()
    def optimum_order(
        self, reader_log_probs: torch.Tensor, frozen_scores: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-candidate values whose descending order is the ranking at the loss's optimum, ``(n, N)``.

        For a KL target the minimiser of ``KL(Q || softmax(s / gamma))`` is ``s = gamma * log Q + const``,
        so the optimum ranks candidates by ``log Q``; the reader-only losses override this. Masked
        entries are ``-inf``. Used by :mod:`~llama_index_lvlm_retriever.training.target_diagnostics`
        to tell, before training, whether the target can change retrieval at all.

        Args:
            reader_log_probs: ``(n, N)`` ``log P_reader(gold | c)``.
            frozen_scores: ``(n, N)`` the frozen retriever's scores.
            mask: ``(n, N)`` bool, True for real candidates.
        """
        zero = torch.zeros((), dtype=torch.float64, device=mask.device)
        cases = _Cases(
            scores=frozen_scores.double(),
            reader_log_probs=torch.where(mask, reader_log_probs.double(), zero),
            frozen_scores=torch.where(mask, frozen_scores.double(), zero),
            mask=mask,
        )
        return self._optimum_logits(cases).masked_fill(~mask, _NEG_INF)

    def _optimum_logits(self, cases: _Cases) -> torch.Tensor:
        """``(m, n)`` values ordered as the optimum ranks the candidates (default: by the reader)."""
        return cases.reader_log_probs

    def forward(
        self,
        scores: torch.Tensor,
        reader_log_probs: torch.Tensor,
        *,
        frozen_scores: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        disagree: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the loss over a batch of cases.

        Args:
            scores: ``(batch, n)`` current retriever scores (cosines) of each case's candidates;
                the tensor gradients flow into.
            reader_log_probs: ``(batch, n)`` ``log P_reader(gold | c)``, finite where ``mask`` is True.
            frozen_scores: ``(batch, n)`` scores of the frozen (pre-training) retriever; required by
                :class:`PosteriorKLLoss`, ignored by the other losses.
            mask: ``(batch, n)`` bool, True for real candidates and False for padding; ``None`` = all
                real. Values at padded entries are ignored (they may be anything, even NaN).
            disagree: ``(batch,)`` bool, True for inconsistent cases (the reader's predictions differ
                across candidates); required when ``only_inconsistent=True``, else ignored.

        Returns:
            ``{"loss", "entropy_retriever", "entropy_target", "n_cases"}``; see the package docstring.

        Raises:
            ValueError: On a shape or dtype mismatch, a missing required input, a case with no
                unmasked candidate, or a non-finite reader/frozen value at an unmasked entry.
        """
        cases = self._select(scores, reader_log_probs, frozen_scores, mask, disagree)
        n_cases = torch.tensor(cases.mask.shape[0], dtype=torch.int64, device=scores.device)
        if cases.mask.shape[0] == 0:
            # No case left: a zero that is still connected to ``scores``, so the engine's backward()
            # and optimiser step run unchanged (with zero gradients) instead of failing.
            zero = (torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0) * 0.0).sum()
            zeros = zero.detach()
            return {
                LOSS_KEY: zero,
                ENTROPY_RETRIEVER_KEY: zeros,
                ENTROPY_TARGET_KEY: zeros,
                N_CASES_KEY: n_cases,
            }
        log_p = _masked_log_softmax(cases.scores / self.gamma, cases.mask)  # (m, n) log P_retr
        per_case, log_q = self._per_case(log_p, cases)  # (m,), (m, n)
        if cases.weights is not None:  # soft emphasis on inconsistent cases: a weighted mean
            weighted = per_case * cases.weights  # (m,)
            loss = weighted.sum() if self.reduction == "sum" else weighted.sum() / cases.weights.sum()
        else:
            loss = per_case.sum() if self.reduction == "sum" else per_case.mean()
        return {
            LOSS_KEY: loss,
            ENTROPY_RETRIEVER_KEY: _entropy(log_p.detach()).mean(),
            ENTROPY_TARGET_KEY: _entropy(log_q.detach()).mean(),
            N_CASES_KEY: n_cases,
        }

    def _per_case(self, log_p: torch.Tensor, cases: _Cases) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the per-case loss ``(m,)`` and the masked log target ``log Q`` ``(m, n)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _per_case")

    # ------------------------------------------------------------------ input handling
    def _select(
        self,
        scores: torch.Tensor,
        reader_log_probs: torch.Tensor,
        frozen_scores: torch.Tensor | None,
        mask: torch.Tensor | None,
        disagree: torch.Tensor | None,
    ) -> _Cases:
        """Validate the inputs and return the used cases with padding values zeroed."""
        name = type(self).__name__
        if (
            not isinstance(scores, torch.Tensor)
            or scores.dim() != 2
            or not scores.is_floating_point()
        ):
            got = (
                f"shape {tuple(scores.shape)}, dtype {scores.dtype}"
                if isinstance(scores, torch.Tensor)
                else type(scores).__name__
            )
            raise ValueError(
                f"{name}: scores must be a float tensor of shape (batch, n_candidates), got {got}"
            )
        shape = tuple(scores.shape)
        _check_shape(name, "reader_log_probs", reader_log_probs, shape)
        if frozen_scores is None and self._needs_frozen_scores:
            raise ValueError(
                f"{name} needs frozen_scores= (the frozen retriever's scores, shape {shape}) for its prior; "
                "pass the scores cached when the feedback was collected"
            )
        if frozen_scores is not None:
            _check_shape(name, "frozen_scores", frozen_scores, shape)
        if mask is None:
            mask = torch.ones(shape, dtype=torch.bool, device=scores.device)
        else:
            _check_shape(name, "mask", mask, shape, dtype=torch.bool)
        if disagree is None and self.only_inconsistent:
            raise ValueError(
                f"{name}(only_inconsistent=True) needs disagree= (a (batch,) bool tensor, True for "
                f"inconsistent cases), got None; pass it or set only_inconsistent=False"
            )
        if disagree is None and self.inconsistent_weight != 1.0:
            raise ValueError(
                f"{name}(inconsistent_weight={self.inconsistent_weight}) needs disagree= (a (batch,) bool tensor, "
                f"True for inconsistent cases), got None; pass it or set inconsistent_weight=1.0"
            )
        if disagree is not None:
            _check_shape(name, "disagree", disagree, shape[:1], dtype=torch.bool)

        empty = ~mask.any(dim=-1)  # (batch,)
        if bool(empty.any()):
            i = _first_bad(empty)[0]
            raise ValueError(
                f"{name}: case {i} has no unmasked candidate (mask[{i}] is all False); drop it before the loss"
            )
        checked = [("reader_log_probs", reader_log_probs)]
        if self._needs_frozen_scores and frozen_scores is not None:
            checked.append(("frozen_scores", frozen_scores))
        for label, values in checked:
            bad = mask & ~torch.isfinite(values)  # (batch, n)
            if bool(bad.any()):
                i, j = _first_bad(bad)
                raise ValueError(
                    f"{name}: {label}[{i}, {j}] is {float(values[i, j])} at an unmasked candidate; values must be "
                    f"finite (clamp log-probs, e.g. .clamp(min=-1e4), or mask the candidate out)"
                )

        # Compute in at least float32: softmaxes of cosines / gamma lose too much precision in bf16.
        dtype = torch.promote_types(scores.dtype, torch.float32)
        rows = (
            torch.nonzero(disagree).flatten()
            if self.only_inconsistent and disagree is not None
            else None
        )  # (m,) indices of the used cases, None = all

        def take(values: torch.Tensor) -> torch.Tensor:
            values = values if rows is None else values[rows]  # (m, n)
            return values.to(dtype)

        used_mask = mask if rows is None else mask[rows]  # (m, n)
        zero = torch.zeros((), dtype=dtype, device=scores.device)
        weights = None
        if self.inconsistent_weight != 1.0 and disagree is not None and not self.only_inconsistent:
            one = torch.ones((), dtype=dtype, device=scores.device)
            weights = torch.where(disagree, one * self.inconsistent_weight, one)  # (m,)
        return _Cases(
            weights=weights,
            # Padded scores are left as they are: _masked_log_softmax overwrites them with -inf
            # through masked_fill, which passes them an exact zero gradient (even if they are NaN).
            scores=take(scores),
            reader_log_probs=torch.where(used_mask, take(reader_log_probs), zero).detach(),
            frozen_scores=None
            if frozen_scores is None
            else torch.where(used_mask, take(frozen_scores), zero).detach(),
            mask=used_mask,
        )


def _check_shape(
    loss: str, name: str, value: object, shape: tuple[int, ...], *, dtype: torch.dtype | None = None
) -> None:
    """Raise ``ValueError`` unless ``value`` is a tensor of ``shape`` (and ``dtype`` if given)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{loss}: {name} must be a tensor of shape {shape}, got {type(value).__name__}"
        )
    if tuple(value.shape) != shape:
        raise ValueError(
            f"{loss}: {name} has shape {tuple(value.shape)} but scores have shape {shape}"
            if len(shape) == 2
            else f"{loss}: {name} has shape {tuple(value.shape)}, expected {shape} (one flag per case of scores)"
        )
    if dtype is not None and value.dtype != dtype:
        raise ValueError(f"{loss}: {name} must have dtype {dtype}, got {value.dtype}")
    if dtype is None and not value.is_floating_point():
        raise ValueError(f"{loss}: {name} must be a floating-point tensor, got {value.dtype}")


class _KLTargetLoss(_CandidateLoss):
    """Base of the losses ``KL(Q || P_retr)`` towards a detached target; subclasses give ``log Q``."""

    def _log_target(self, cases: _Cases) -> torch.Tensor:
        """Masked ``log Q`` ``(m, n)`` computed from detached inputs only."""
        raise NotImplementedError(f"{type(self).__name__} must implement _log_target")

    def _per_case(self, log_p: torch.Tensor, cases: _Cases) -> tuple[torch.Tensor, torch.Tensor]:
        log_q = self._log_target(cases).detach()  # (m, n); the target never receives gradients
        return _kl_to_target(log_q, log_p, cases.mask), log_q

    def _optimum_logits(self, cases: _Cases) -> torch.Tensor:
        return self._log_target(cases)  # (m, n): the minimiser is s = gamma * log Q + const
