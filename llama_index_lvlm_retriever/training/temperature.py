"""The retrieval softmax temperature ``gamma``, derived from the encoder's score spread (``gamma="auto"``).

Every stage-2 loss compares the reader-derived target with ``P_retr(c) = softmax_c(s(c) / gamma)``
over a case's candidates. What matters is ``gamma`` relative to the *spread* of the candidates'
cosines, and that spread depends on the encoder: with the demo's CLIP the top cosine is ~0.987 and
the top-16 span ~0.022, so the paper's fixed ``gamma = 0.05`` turns every candidate list into an
almost uniform softmax (entropy 2.29 of 2.30 nats over 10 candidates); a broader encoder (a top-50
span of 0.2) makes the same 0.05 nearly one-hot. A near-uniform ``P_retr`` is not useless: its
gradient is small but Adam rescales the step, and a KL loss then spends its effort ranking the
candidates as the target does instead of flattening a sharp softmax. What decides whether training
can change retrieval is the target's *optimum* (see
:mod:`~llama_index_lvlm_retriever.training.target_diagnostics`), not this temperature alone.

**The rule** (:func:`auto_gamma`): one ``gamma`` per retriever head, the temperature at which the
*frozen* retriever's softmax over each training case's candidates has a mean entropy of half its
maximum,

.. code-block:: text

    mean_i H(softmax(s_0(i, .) / gamma)) = H_min + 0.5 * (mean_i log n_i - H_min)

(``s_0`` = the cached frozen scores of the training candidates, ``n_i`` = case ``i``'s number of
candidates, ``H_min`` the mean entropy as ``gamma -> 0``: 0 unless top scores tie, as they do for KB
items with identical captions), found by bisection on ``log gamma`` (the entropy grows monotonically
with ``gamma``).
Why this rule: it is scale-free (any encoder, either head: image->image cosines ~0.95 and
image->caption cosines ~0.1 get their own value), it fixes the quantity that decides whether the
loss has signal (``exp(H) = sqrt(n)`` effective candidates, e.g. ~4.5 of 20, close to the handful
the reader sees at inference) instead of a proxy, and it is one scalar per head, so the losses keep
their scalar ``gamma`` and training and pool validation use the same value. A per-query rule
(``gamma_i = 3 x std`` of the query's cosines, tried in a probe) leaves ``H`` near ``log n`` whenever
the top candidates are close together, which is exactly the failure above.

:func:`retrieval_entropy` reports the mean entropy at any ``gamma``; the engine logs a note (INFO)
when it exceeds :data:`UNIFORM_WARNING_SHARE` of ``log n`` (a ``gamma`` far above the scores' spread,
as the default 1.0 on raw cosines is by design: it then needs a large step, see ``TrainerConfig``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from llama_index_lvlm_retriever.training.losses._common import _masked_log_softmax

__all__ = ["AUTO_ENTROPY_SHARE", "UNIFORM_WARNING_SHARE", "auto_gamma", "resolve_gamma", "retrieval_entropy"]

logger = logging.getLogger(__name__)

AUTO_ENTROPY_SHARE = 0.5
"""``gamma="auto"`` targets a mean entropy of this share of ``log n`` (``exp(H) = n^0.5`` candidates)."""
UNIFORM_WARNING_SHARE = 0.9
"""Note (INFO) when the mean entropy of ``P_retr`` exceeds this share of ``log n``: the softmax is ~uniform."""

# Bisection bracket on gamma: far below any cosine gap a float32 score can resolve, and far above
# any cosine spread (|cos| <= 1), so the target entropy always lies inside.
_GAMMA_LOW, _GAMMA_HIGH = 1e-6, 1e3
_BISECTION_STEPS = 60  # halves log(1e9) ~ 20.7 to ~2e-17: exact to float precision


def retrieval_entropy(scores: torch.Tensor, mask: torch.Tensor, gamma: float) -> tuple[float, float]:
    """Mean entropy of ``softmax(scores / gamma)`` over cases with >= 2 candidates, and mean ``log n``.

    Args:
        scores: ``(n, N)`` retrieval scores (cosines).
        mask: ``(n, N)`` bool, ``True`` where a candidate exists.
        gamma: Temperature (> 0) dividing the scores.

    Returns:
        ``(mean entropy, mean log n)`` in nats; ``(0.0, 0.0)`` when no case has two candidates.

    Example:
        >>> import torch
        >>> h, log_n = retrieval_entropy(torch.tensor([[0.9, 0.9, 0.9]]), torch.ones(1, 3, dtype=torch.bool), 0.05)
        >>> round(h, 4) == round(log_n, 4) == round(math.log(3), 4)  # equal scores: uniform
        True
    """
    rows = mask.sum(dim=1) >= 2  # (n,) a single candidate has entropy 0 whatever gamma is
    if not bool(rows.any()):
        return 0.0, 0.0
    s, m = scores[rows].double(), mask[rows]  # (r, N); double: gamma ~1e-6 gives logits ~1e6
    log_p = _masked_log_softmax(s / gamma, m)  # (r, N), -inf where masked
    entropy = -(log_p.exp() * log_p.masked_fill(~m, 0.0)).sum(dim=1)  # (r,)
    log_n = m.sum(dim=1).double().log()  # (r,)
    return float(entropy.mean()), float(log_n.mean())


def auto_gamma(scores: torch.Tensor, mask: torch.Tensor, share: float = AUTO_ENTROPY_SHARE) -> float:
    """The temperature at which the mean entropy of ``softmax(scores / gamma)`` is ``share * log n``.

    Args:
        scores: ``(n, N)`` frozen retrieval scores of the training candidates.
        mask: ``(n, N)`` bool, ``True`` where a candidate exists.
        share: Target mean entropy as a share of the mean ``log n``, in ``(0, 1)``.

    Returns:
        ``gamma > 0``. With tied scores (the entropy cannot fall below ``H_min`` however small
        ``gamma`` is) the target is ``H_min + share * (log n - H_min)``: half-way between the most
        peaked softmax the scores allow and uniform; without ties ``H_min = 0`` and it is
        ``share * log n``.

    Raises:
        ValueError: ``share`` outside ``(0, 1)`` or no case with two candidates.

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.987 - 0.022 * j / 15 for j in range(16)]])  # the demo CLIP's top-16
        >>> g = auto_gamma(s, torch.ones_like(s, dtype=torch.bool))
        >>> h, log_n = retrieval_entropy(s, torch.ones_like(s, dtype=torch.bool), g)
        >>> round(h / log_n, 3), g < 0.05
        (0.5, True)
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"auto_gamma: share must be in (0, 1), got {share}")
    _, log_n = retrieval_entropy(scores, mask, 1.0)
    if log_n == 0.0:
        raise ValueError(
            "gamma='auto' needs training cases with at least 2 candidates each to measure the score spread; "
            "collect more candidates (FeedbackConfig.n_candidates) or set TrainerConfig.gamma to a float"
        )
    # Ties (e.g. KB items with identical captions) keep the entropy above 0 however small gamma is:
    # aim between the most peaked softmax the scores allow and uniform, so the target is reachable.
    floor_entropy, _ = retrieval_entropy(scores, mask, _GAMMA_LOW)
    target = floor_entropy + share * (log_n - floor_entropy)
    low, high = math.log(_GAMMA_LOW), math.log(_GAMMA_HIGH)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (low + high)
        entropy, _ = retrieval_entropy(scores, mask, math.exp(mid))
        if entropy < target:
            low = mid  # too peaked: a larger gamma flattens the softmax
        else:
            high = mid
    return float(math.exp(0.5 * (low + high)))


def resolve_gamma(
    name: str, frozen_scores: torch.Tensor, mask: torch.Tensor, gamma: float | str, loss: Any = None
) -> tuple[float, dict[str, Any]]:
    """One head's temperature and its record; warns when ``P_retr`` is ~uniform at it.

    Args:
        name: The head (``"image"`` or ``"text"``), for the messages.
        frozen_scores: ``(n, N)`` frozen scores of the head's training candidates.
        mask: ``(n, N)`` bool.
        gamma: ``TrainerConfig.gamma``: a float or ``"auto"`` (:func:`auto_gamma`).
        loss: A ready loss module; when it has a float ``gamma``, that value is the head's.

    Returns:
        ``(gamma, record)``; the record (for the training history) holds the rule used, the mean
        entropy of ``P_retr`` over the training queries and the mean ``log n``.
    """
    scores, mask = frozen_scores.detach().cpu(), mask.detach().cpu()
    loss_gamma = getattr(loss, "gamma", None)  # duck-typed: the package's losses expose their temperature
    if loss is not None and isinstance(loss_gamma, (int, float)):
        value, rule = float(loss_gamma), "loss"
    elif gamma == "auto":
        value, rule = auto_gamma(scores, mask), "auto"
    else:
        value, rule = float(gamma), "fixed"
    entropy, log_n = retrieval_entropy(scores, mask, value)
    logger.info("%s head: gamma %.5g (%s); mean entropy of P_retr over training queries %.3f of log n %.3f",
                name, value, rule, entropy, log_n)
    if log_n > 0 and entropy > UNIFORM_WARNING_SHARE * log_n:
        # Info, not a warning: the default (gamma 1 on raw cosines, the paper's code) is near-uniform by design.
        logger.info(
            "%s head: with gamma=%.4g the retrieval softmax is nearly uniform (mean entropy %.3f > %.0f%% of "
            "log n = %.3f): gradients are small and Adam rescales them (the default learning rate 0.1 relies on "
            "this); with a small learning rate the heads may not move",
            name, value, entropy, 100 * UNIFORM_WARNING_SHARE, log_n,
        )
    record = {"event": "temperature", "head": name, "gamma": value, "rule": rule, "mean_entropy": entropy,
              "mean_log_n": log_n}
    return value, record
