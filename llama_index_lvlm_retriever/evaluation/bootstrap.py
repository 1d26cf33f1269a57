"""Seeded percentile bootstrap over cases, and McNemar's exact test.

A statistic is any function from a ``(B, n)`` matrix of case weights to ``(B,)`` values (see
:mod:`.metrics`). The point estimate is the statistic under unit weights; each bootstrap resample
draws ``n`` cases with replacement and passes their multiplicities as weights. All statistics in
one call see the same resamples, so differences between systems evaluated together are paired.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Estimate", "Statistic", "bootstrap_estimates", "mcnemar_exact", "resample_weights"]

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps ``(B, n)`` case weights to ``(B,)`` values."""

# Bound on B * n per chunk of resamples (float64 cells), to keep memory flat for large n.
_MAX_CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval (NaN when undefined).

    Args:
        value: The statistic on the evaluated cases.
        ci_low: Lower percentile bound.
        ci_high: Upper percentile bound.
    """

    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready dict; NaN becomes ``None``."""
        return {"value": _or_none(self.value), "ci_low": _or_none(self.ci_low), "ci_high": _or_none(self.ci_high)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Estimate:
        """Inverse of :meth:`to_dict`."""
        return cls(*(_or_nan(record[key]) for key in ("value", "ci_low", "ci_high")))


def resample_weights(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """``(n_resamples, n)`` multiplicities of ``n`` cases drawn with replacement, per resample."""
    draws = rng.integers(0, n, size=(n_resamples, n))  # (B, n) case indices
    offsets = (np.arange(n_resamples) * n)[:, None]  # (B, 1) row offsets for one flat bincount
    counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n)
    return counts.reshape(n_resamples, n).astype(np.float64)  # (B, n)


def bootstrap_estimates(
    statistics: Mapping[str, Statistic],
    n: int,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Point estimates and percentile bootstrap intervals for several statistics at once.

    Args:
        statistics: Named statistics over the same ``n`` cases.
        n: Number of cases.
        n_resamples: Bootstrap resamples (0 skips the intervals: they are NaN).
        confidence: Coverage of the interval, e.g. 0.95 for the 2.5th-97.5th percentiles.
        seed: Seed of the resampling generator; equal seeds give equal intervals.

    Returns:
        One :class:`Estimate` per statistic. Resamples where a statistic is undefined (NaN, e.g.
        an empty subset) are left out of its interval; it is NaN if none is defined.

    Raises:
        ValueError: ``n < 1``, ``n_resamples < 0`` or ``confidence`` outside ``(0, 1)``.

    Example:
        >>> import numpy as np
        >>> correct = np.array([1.0, 0.0, 1.0, 1.0])
        >>> est = bootstrap_estimates({"accuracy": lambda w: w @ correct / w.sum(1)}, n=4, seed=0)
        >>> est["accuracy"].value
        0.75
    """
    if n < 1:
        raise ValueError(f"the bootstrap needs at least one case, got n={n}; evaluate a non-empty case list")
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")
    ones = np.ones((1, n))
    points = {name: float(np.asarray(f(ones))[0]) for name, f in statistics.items()}
    if n_resamples == 0:
        return {name: Estimate(value, math.nan, math.nan) for name, value in points.items()}
    rng = np.random.default_rng(seed)
    samples = {name: np.empty(n_resamples) for name in statistics}
    chunk = max(1, _MAX_CHUNK_CELLS // n)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        weights = resample_weights(rng, n, size)  # (size, n)
        for name, f in statistics.items():
            samples[name][start : start + size] = f(weights)
    tail = 100.0 * (1.0 - confidence) / 2.0
    out = {}
    for name, values in samples.items():
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            out[name] = Estimate(points[name], math.nan, math.nan)
            continue
        low, high = np.percentile(finite, [tail, 100.0 - tail])
        out[name] = Estimate(points[name], float(low), float(high))
    return out


def mcnemar_exact(n_first_only: int, n_second_only: int) -> float:
    """Two-sided exact McNemar test p-value from the discordant pair counts.

    Under the null hypothesis (both systems equally accurate) each of the ``b + c`` discordant
    cases is equally likely to favour either system, so ``min(b, c) ~ Binomial(b + c, 1/2)``:
    ``p = min(1, 2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c))``; ``p = 1`` when ``b + c = 0``.

    Args:
        n_first_only: ``b``, cases only the first system gets right.
        n_second_only: ``c``, cases only the second system gets right.

    Returns:
        The p-value in ``(0, 1]``.

    Raises:
        ValueError: A count is negative.

    Example:
        >>> round(mcnemar_exact(1, 5), 4)  # 2 * (1 + 6) / 64
        0.2188
    """
    b, c = int(n_first_only), int(n_second_only)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    total = b + c
    if total == 0:
        return 1.0
    tail = sum(math.comb(total, i) for i in range(min(b, c) + 1))  # exact integers, no overflow
    return min(1.0, 2 * tail / 2**total)


def _or_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else float(x)
