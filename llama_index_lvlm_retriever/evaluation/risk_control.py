"""Abstention with a guarantee: choose ``min_support`` on validation cases for a target selective risk.

The system answers a case when its answer support (the share of neighbours whose own answer is the
answer shown) is at least a threshold ``t``, and abstains otherwise. The *selective risk* at ``t`` is
the error rate on the answered cases. :func:`choose_min_support` picks ``t`` so that, with
probability at least ``1 - delta`` over the draw of the validation cases, the selective risk on new
cases from the same distribution is at most ``target_risk``:

* **Learn-then-Test with fixed-sequence testing** (Angelopoulos et al., 2021, "Learn then Test:
  Calibrating Predictive Algorithms to Achieve Risk Control", arXiv 2110.01052). For each threshold
  ``t`` of a grid fixed in advance (:data:`THRESHOLD_GRID`: 1.00, 0.99, ..., 0.01, from most to
  least abstaining), test ``H_t: risk(t) > target_risk``. Given the ``n_t`` validation cases
  answered at ``t``, their errors ``e_t`` are ``Binomial(n_t, risk(t))``, so the exact p-value is
  ``p_t = P(Binomial(n_t, target_risk) <= e_t)`` (``p_t = 1`` when nothing is answered). Walk the
  grid in order and stop at the first ``p_t > delta``; the chosen threshold is the last rejected
  one (the one answering the most cases). Fixed-sequence testing controls the family-wise error
  at ``delta`` without a multiplicity correction, hence the guarantee.
* The reported **bound** is the one-sided Clopper-Pearson upper ``1 - delta`` confidence bound on
  the selective risk at the chosen threshold: the ``u`` with ``P(Binomial(n_t, u) <= e_t) = delta``
  (it is ``<= target_risk`` exactly when the test at ``t`` rejects).

When even ``t = 1`` (answer only unanimous cases) cannot be certified, no threshold is chosen
(``threshold`` is ``None``; the bound, risk and coverage reported are those at ``t = 1``): the
target is out of reach for this system or with this many validation cases.

All functions are pure; :func:`save_threshold_file` / :func:`load_threshold_file` read and write the
small JSON file ``predict --threshold-file`` and ``diagnose --threshold-file`` take.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llama_index_lvlm_retriever.evaluation._io import atomic_write_bytes

__all__ = [
    "THRESHOLD_FILE_KIND",
    "THRESHOLD_GRID",
    "RiskControl",
    "binomial_cdf",
    "choose_min_support",
    "clopper_pearson_upper",
    "load_threshold_file",
    "save_threshold_file",
    "selective_risk",
]

THRESHOLD_GRID: tuple[float, ...] = tuple(round(1.0 - i / 100, 2) for i in range(100))
"""Candidate ``min_support`` values, fixed before seeing data, in testing order (1.00 down to 0.01)."""
THRESHOLD_FILE_KIND = "lvlm-retriever/min-support-threshold"
"""The ``kind`` of a threshold file, checked on load."""
# Support values are k-fractions computed in floating point; 1e-12 absorbs their round-off,
# as in LVLMDiagnosisQueryEngine's abstain rule.
_EPS = 1e-12


@dataclass(frozen=True)
class RiskControl:
    """The outcome of :func:`choose_min_support` (and, once known, the test-set check).

    Args:
        threshold: The chosen ``min_support`` (answer when support >= it), or ``None`` if none is certified;
            then ``bound``, ``validation_coverage``, ``validation_risk`` and ``p_value`` describe the
            first threshold tested (1.00), the one that failed.
        target_risk: The target selective risk ``R``.
        delta: The allowed probability that the guarantee fails.
        bound: Clopper-Pearson upper ``1 - delta`` bound on the selective risk at ``threshold``.
        validation_cases: Validation cases.
        validation_coverage: Share of validation cases answered at ``threshold``.
        validation_risk: Error rate on the answered validation cases.
        p_value: The binomial p-value of the last rejected test (of the failed first one when none is certified).
        test_cases: Test cases (0 until :meth:`with_test` is called).
        test_coverage: Share of test cases answered (NaN before :meth:`with_test`).
        test_risk: Error rate on the answered test cases (NaN when none is answered).
        method: How the threshold was chosen, in words.
    """

    threshold: float | None
    target_risk: float
    delta: float
    bound: float
    validation_cases: int
    validation_coverage: float
    validation_risk: float
    p_value: float
    test_cases: int = 0
    test_coverage: float = math.nan
    test_risk: float = math.nan
    method: str = "Learn-then-Test fixed-sequence binomial tests over min_support 1.00, 0.99, ..., 0.01"

    def with_test(self, support: np.ndarray, correct: np.ndarray) -> RiskControl:
        """A copy with the test coverage and risk at the chosen threshold."""
        coverage, risk = selective_risk(support, correct, self.threshold)
        return RiskControl(**{**asdict(self), "test_cases": int(np.asarray(support).shape[0]),
                              "test_coverage": coverage, "test_risk": risk})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes ``None``)."""
        return {key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in asdict(self).items()}


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(Binomial(n, p) <= k)``, summed exactly in log space (``lgamma``), no SciPy needed.

    Example:
        >>> round(binomial_cdf(1, 4, 0.5), 4)  # (1 + 4) / 16
        0.3125
    """
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided upper ``1 - delta`` Clopper-Pearson bound on a binomial rate (1.0 when ``n = 0``).

    The ``u`` solving ``P(Binomial(n, u) <= errors) = delta``, by bisection (60 halvings: below
    1e-15); ``errors = n`` gives 1.

    Example:
        >>> round(clopper_pearson_upper(0, 10, 0.05), 4)  # 1 - 0.05 ** (1 / 10)
        0.2589
    """
    if n == 0 or errors >= n:
        return 1.0
    low, high = errors / n, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if binomial_cdf(errors, n, middle) > delta:
            low = middle
        else:
            high = middle
    return high


def selective_risk(support: np.ndarray, correct: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """``(coverage, risk)`` when answering the cases with ``support >= threshold``.

    ``threshold=None`` answers nothing; the risk is NaN when nothing is answered.
    """
    s = np.asarray(support, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if s.shape[0] == 0:
        return math.nan, math.nan
    answered = np.zeros_like(ok) if threshold is None else s >= threshold - _EPS
    n = int(answered.sum())
    return n / s.shape[0], (math.nan if n == 0 else float((~ok[answered]).sum() / n))


def choose_min_support(
    support: np.ndarray, correct: np.ndarray, target_risk: float, delta: float = 0.1
) -> RiskControl:
    """The smallest ``min_support`` on :data:`THRESHOLD_GRID` certified to keep the selective risk <= ``target_risk``.

    Args:
        support: ``(n,)`` answer support of each validation case.
        correct: ``(n,)`` bool, the validation case's answer is right.
        target_risk: ``R`` in ``(0, 1)``: the largest acceptable error rate on answered cases.
        delta: ``(0, 1)``: the guarantee holds with probability ``>= 1 - delta``.

    Returns:
        The :class:`RiskControl` (threshold ``None`` when not even ``t = 1`` is certified).

    Raises:
        ValueError: No validation case, arrays of different lengths, or ``target_risk``/``delta``
            outside ``(0, 1)``.

    Example:
        >>> import numpy as np
        >>> support = np.array([1.0] * 40 + [0.5] * 20)
        >>> correct = np.array([True] * 40 + [True, False] * 10)
        >>> choose_min_support(support, correct, target_risk=0.2, delta=0.1).threshold  # 0.50 fails
        0.51
    """
    s = np.asarray(support, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if s.shape[0] == 0:
        raise ValueError("choosing a threshold needs validation cases; pass at least one")
    if s.shape != ok.shape:
        raise ValueError(f"support has shape {s.shape} but correct has {ok.shape}; pass one value of each per case")
    if not 0.0 < target_risk < 1.0:
        raise ValueError(f"target risk must be in (0, 1), e.g. 0.1; got {target_risk}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), e.g. 0.1; got {delta}")
    chosen: float | None = None
    chosen_p = math.nan
    for t in THRESHOLD_GRID:
        answered = s >= t - _EPS
        n_t, e_t = int(answered.sum()), int((~ok[answered]).sum())
        p_t = 1.0 if n_t == 0 else binomial_cdf(e_t, n_t, target_risk)
        if p_t > delta:
            break
        chosen, chosen_p = t, p_t
    # Without a certified threshold, report the first (most abstaining) one that failed: how far it is.
    described = THRESHOLD_GRID[0] if chosen is None else chosen
    coverage, risk = selective_risk(s, ok, described)
    answered = s >= described - _EPS
    bound = clopper_pearson_upper(int((~ok[answered]).sum()), int(answered.sum()), delta)
    if chosen is None:
        chosen_p = 1.0 if not answered.any() else binomial_cdf(int((~ok[answered]).sum()), int(answered.sum()), target_risk)
    return RiskControl(
        threshold=chosen, target_risk=float(target_risk), delta=float(delta), bound=bound,
        validation_cases=int(s.shape[0]), validation_coverage=coverage, validation_risk=risk, p_value=chosen_p,
    )


def save_threshold_file(path: str | Path, control: RiskControl, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the chosen threshold as a small JSON file, atomically.

    Args:
        path: Target file.
        control: The chosen threshold and its guarantee.
        extra: More entries to record (e.g. the system name, the KB and heads folders).

    Raises:
        ValueError: ``control.threshold`` is ``None`` (nothing to save).
    """
    if control.threshold is None:
        raise ValueError(
            f"no min_support is certified for target risk {control.target_risk} with {control.validation_cases} "
            "validation cases; raise --target-risk or --risk-delta, or add validation cases"
        )
    record = {"kind": THRESHOLD_FILE_KIND, "min_support": control.threshold, **control.to_dict(), **dict(extra or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(record, indent=1, allow_nan=False).encode("utf-8"))
    return path


def load_threshold_file(path: str | Path) -> dict[str, Any]:
    """Read a threshold file written by :func:`save_threshold_file`; returns its record.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not valid JSON, not a threshold file, or a ``min_support`` outside ``(0, 1]``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no threshold file at {str(path)!r}; write one with evaluate --target-risk R")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error}); pass the file evaluate --target-risk wrote") from error
    if not isinstance(record, dict) or record.get("kind") != THRESHOLD_FILE_KIND:
        raise ValueError(f"{str(path)!r} is not a threshold file (kind {THRESHOLD_FILE_KIND!r}); pass the file evaluate --target-risk wrote")
    value = record.get("min_support")
    if not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{str(path)!r} has min_support {value!r}; expected a number in (0, 1]")
    return record
