"""Paired comparison of two systems on the same cases: accuracy difference and McNemar's test.

The comparison is made overall and within the baseline's consistent and inconsistent subsets (the
paper's question: does LVLM-aware retrieval help most where standard retrieval disagreed?). The
subsets are always defined by the *baseline* system, so both systems are compared on the same cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from llama_index_lvlm_retriever.evaluation.bootstrap import (
    Estimate,
    Statistic,
    bootstrap_estimates,
    mcnemar_exact,
)
from llama_index_lvlm_retriever.evaluation.metrics import weighted_mean
from llama_index_lvlm_retriever.evaluation.records import CaseResult

__all__ = ["SUBSETS", "PairedComparison", "Subset", "compare_rows"]

Subset = Literal["all", "consistent", "inconsistent"]
SUBSETS: tuple[Subset, ...] = ("all", "consistent", "inconsistent")


@dataclass(frozen=True)
class PairedComparison:
    """``system`` against ``baseline`` on one subset of the cases.

    Args:
        system: The compared system.
        baseline: The reference system; it defines the subsets.
        subset: ``"all"``, or the cases where the baseline was ``"consistent"``/``"inconsistent"``.
        n_cases: Cases in the subset.
        accuracy: Accuracy of ``system`` on the subset.
        baseline_accuracy: Accuracy of ``baseline`` on the subset.
        difference: ``accuracy - baseline_accuracy`` with a paired bootstrap interval.
        n_system_only: Discordant cases only ``system`` gets right (McNemar's ``b``).
        n_baseline_only: Discordant cases only ``baseline`` gets right (McNemar's ``c``).
        p_value: Two-sided exact McNemar p-value (1 when there are no discordant cases; NaN for
            an empty subset, where there is nothing to test).
    """

    system: str
    baseline: str
    subset: Subset
    n_cases: int
    accuracy: float
    baseline_accuracy: float
    difference: Estimate
    n_system_only: int
    n_baseline_only: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes ``None``)."""
        return {
            "system": self.system,
            "baseline": self.baseline,
            "subset": self.subset,
            "n_cases": self.n_cases,
            "accuracy": None if np.isnan(self.accuracy) else self.accuracy,
            "baseline_accuracy": None if np.isnan(self.baseline_accuracy) else self.baseline_accuracy,
            "difference": self.difference.to_dict(),
            "n_system_only": self.n_system_only,
            "n_baseline_only": self.n_baseline_only,
            "p_value": None if np.isnan(self.p_value) else self.p_value,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> PairedComparison:
        """Inverse of :meth:`to_dict`."""
        return cls(
            system=str(record["system"]),
            baseline=str(record["baseline"]),
            subset=record["subset"],
            n_cases=int(record["n_cases"]),
            accuracy=float("nan") if record["accuracy"] is None else float(record["accuracy"]),
            baseline_accuracy=(
                float("nan") if record["baseline_accuracy"] is None else float(record["baseline_accuracy"])
            ),
            difference=Estimate.from_dict(record["difference"]),
            n_system_only=int(record["n_system_only"]),
            n_baseline_only=int(record["n_baseline_only"]),
            p_value=float("nan") if record["p_value"] is None else float(record["p_value"]),
        )


def compare_rows(
    system: str,
    rows: Sequence[CaseResult],
    baseline: str,
    baseline_rows: Sequence[CaseResult],
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    subsets_from: Sequence[CaseResult] | None = None,
) -> list[PairedComparison]:
    """Compare two systems case by case, overall and within the baseline's consistency subsets.

    Args:
        system: Name of the compared system.
        rows: Its scored cases.
        baseline: Name of the reference system.
        baseline_rows: Its scored cases, for the same case ids in the same order.
        n_bootstrap: Paired bootstrap resamples for the difference interval.
        confidence: Interval coverage.
        seed: Resampling seed.
        subsets_from: Rows of a third system whose consistency defines the subsets instead of the
            baseline's (e.g. compare a trained retriever with its placebo on the cases *standard
            RAG* found inconsistent); same case ids in the same order.

    Returns:
        One :class:`PairedComparison` per subset, in the order ``"all"``, ``"consistent"``,
        ``"inconsistent"``; an empty subset has ``n_cases == 0`` and NaN accuracies and p-value.

    Raises:
        ValueError: The two row lists do not cover the same case ids in the same order.
    """
    ids = [row.case_id for row in rows]
    baseline_ids = [row.case_id for row in baseline_rows]
    if ids != baseline_ids:
        raise ValueError(
            f"systems {system!r} and {baseline!r} must be scored on the same cases in the same order "
            "to be compared; evaluate them together"
        )
    if not ids:
        raise ValueError(f"no cases to compare {system!r} with {baseline!r}; evaluate a non-empty case list")
    ours = np.array([row.correct for row in rows], dtype=np.float64)
    theirs = np.array([row.correct for row in baseline_rows], dtype=np.float64)
    reference = baseline_rows if subsets_from is None else subsets_from
    if [row.case_id for row in reference] != ids:
        raise ValueError(
            f"subsets_from must hold the same cases as {system!r} and {baseline!r}, in the same order"
        )
    consistent = np.array([row.consistent for row in reference], dtype=bool)
    masks: dict[Subset, np.ndarray] = {
        "all": np.ones(len(ids), dtype=bool),
        "consistent": consistent,
        "inconsistent": ~consistent,
    }
    differences = bootstrap_estimates(
        {subset: _difference(ours - theirs, mask) for subset, mask in masks.items()},
        n=len(ids),
        n_resamples=n_bootstrap,
        confidence=confidence,
        seed=seed,
    )
    out = []
    for subset, mask in masks.items():
        n_cases = int(mask.sum())
        system_only = int(((ours == 1) & (theirs == 0) & mask).sum())
        baseline_only = int(((ours == 0) & (theirs == 1) & mask).sum())
        out.append(
            PairedComparison(
                system=system,
                baseline=baseline,
                subset=subset,
                n_cases=n_cases,
                accuracy=float(ours[mask].mean()) if n_cases else float("nan"),
                baseline_accuracy=float(theirs[mask].mean()) if n_cases else float("nan"),
                difference=differences[subset],
                n_system_only=system_only,
                n_baseline_only=baseline_only,
                # No cases, no test: NaN (printed "-"), not the p = 1 of "no discordant pairs".
                p_value=mcnemar_exact(system_only, baseline_only) if n_cases else float("nan"),
            )
        )
    return out


def _difference(delta: np.ndarray, mask: np.ndarray) -> Statistic:
    # A factory so each subset's closure keeps its own mask.
    return lambda w: weighted_mean(delta, w, mask)
