"""The metrics of one system over its scored cases, as bootstrap-ready statistics.

Metric names (keys of :func:`system_statistics`; the Markdown report explains each):

* ``accuracy`` (multi-label: exact match), ``macro_f1``, ``f1_<label>`` per label, ``auroc``
  (one-vs-rest macro AUROC of the aggregated probabilities; labels without positives or without
  negatives are skipped);
* consistency: ``inconsistent_rate``, ``agreement``, ``vote_entropy``, ``n_distinct`` (means over
  cases), ``accuracy_consistent`` and ``accuracy_inconsistent``;
* ``oracle`` (some neighbour alone leads to the right answer), ``all_correct`` (every neighbour
  does) and ``oracle_gap = oracle - accuracy``, all "@k";
* ``label_precision`` (share of the labelled neighbours whose knowledge-base label is a gold label)
  and ``label_recall`` (share of cases with at least one such neighbour), over the cases that have
  labelled neighbours, "@k";
* selective prediction, abstaining on low agreement: ``aurc`` (area under the risk-coverage
  curve) and ``disagreement_auroc`` (AUROC of ``1 - agreement`` as a detector of wrong answers);
* clinical (:mod:`.clinical_metrics`): ``sensitivity_<label>``, ``specificity_<label>``,
  ``ppv_<label>``, ``npv_<label>`` one-vs-rest per label, and ``ece`` (expected calibration error
  of the answer's probability, 10 equal-width bins).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llama_index_lvlm_retriever.evaluation.bootstrap import Statistic
from llama_index_lvlm_retriever.evaluation.clinical_metrics import (
    CLASS_RATES,
    DEFAULT_ECE_BINS,
    class_rates,
    expected_calibration_error,
)
from llama_index_lvlm_retriever.evaluation.metrics import (
    aurc,
    auroc,
    f1_per_label,
    nan_mean,
    risk_coverage_curve,
    weighted_mean,
)
from llama_index_lvlm_retriever.evaluation.records import CaseResult

__all__ = ["AT_K_METRICS", "METRIC_DESCRIPTIONS", "CaseArrays", "system_curve", "system_statistics"]

METRIC_DESCRIPTIONS: dict[str, str] = {
    "accuracy": "share of cases answered correctly (multi-label: exact match of the label set)",
    "macro_f1": "F1 averaged over labels present in the gold answers or the predictions",
    "auroc": "one-vs-rest AUROC of the aggregated probabilities, averaged over labels",
    "inconsistent_rate": "share of cases whose neighbours led the reader to different answers",
    "agreement": "mean share of neighbours voting for the majority answer",
    "vote_entropy": "mean vote entropy, normalised to [0, 1]",
    "n_distinct": "mean number of distinct answers among the neighbours",
    "accuracy_consistent": "accuracy on the cases where all neighbours agree",
    "accuracy_inconsistent": "accuracy on the cases where the neighbours disagree",
    "oracle": "share of cases where some neighbour alone leads to the right answer",
    "all_correct": "share of cases where every neighbour alone leads to the right answer",
    "oracle_gap": "oracle minus accuracy",
    "label_precision": "share of labelled neighbours whose label is a gold label",
    "label_recall": "share of cases with at least one neighbour carrying a gold label",
    "answer_support": "mean share of neighbours whose own answer is the answer shown",
    "accuracy_image_head": "accuracy of the answer from the image head's neighbours alone (paper: acc img)",
    "accuracy_text_head": "accuracy of the answer from the text head's neighbours alone (paper: acc text)",
    "aurc": "area under the risk-coverage curve when abstaining on low agreement (lower is better)",
    "disagreement_auroc": "AUROC of (1 - agreement) for detecting wrong answers",
    "ece": f"expected calibration error of the answer's probability ({DEFAULT_ECE_BINS} equal-width bins over [0, 1])",
    "sensitivity_LABEL": "one-vs-rest TP / (TP + FN) for the label",
    "specificity_LABEL": "one-vs-rest TN / (TN + FP) for the label",
    "ppv_LABEL": "positive predictive value TP / (TP + FP) (depends on prevalence)",
    "npv_LABEL": "negative predictive value TN / (TN + FN) (depends on prevalence)",
}
"""What each system metric means (``LABEL`` stands for each label name; ``f1_<label>`` is not listed)."""

AT_K_METRICS: frozenset[str] = frozenset({"oracle", "all_correct", "oracle_gap", "label_precision", "label_recall"})
"""Metrics that depend on the number of neighbours; flat metric keys carry ``@k`` for them."""


@dataclass(frozen=True)
class CaseArrays:
    """Per-case arrays of one system, in case order (the inputs of every statistic).

    Args:
        correct: ``(n,)`` the aggregated answer is right.
        predicted: ``(n, L)`` predicted-label indicators (one-hot for single-label tasks).
        gold: ``(n, L)`` gold-label indicators.
        probabilities: ``(n, L)`` aggregated probabilities.
        consistent: ``(n,)`` all neighbours agree.
        agreement: ``(n,)`` majority vote share.
        vote_entropy: ``(n,)`` normalised vote entropy.
        n_distinct: ``(n,)`` distinct answers.
        oracle: ``(n,)`` some neighbour is right.
        all_correct: ``(n,)`` every neighbour is right.
        label_precision: ``(n,)`` share of labelled neighbours with a gold label (NaN: none labelled).
        label_hit: ``(n,)`` 1 if some neighbour has a gold label, 0 if not (NaN: none labelled).
        support: ``(n,)`` share of neighbours whose own answer is the answer shown.
        image_head_correct: ``(n,)`` the answer from the image head's neighbours alone is right
            (NaN: the case has none).
        text_head_correct: ``(n,)`` the same for the text head's neighbours.
    """

    correct: np.ndarray
    predicted: np.ndarray
    gold: np.ndarray
    probabilities: np.ndarray
    consistent: np.ndarray
    agreement: np.ndarray
    vote_entropy: np.ndarray
    n_distinct: np.ndarray
    oracle: np.ndarray
    all_correct: np.ndarray
    label_precision: np.ndarray
    label_hit: np.ndarray
    support: np.ndarray
    image_head_correct: np.ndarray
    text_head_correct: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[CaseResult], labels: Sequence[str]) -> CaseArrays:
        """Collect the arrays from scored rows."""
        index = {name: i for i, name in enumerate(labels)}
        n, n_labels = len(rows), len(labels)
        predicted = np.zeros((n, n_labels), dtype=bool)
        gold = np.zeros((n, n_labels), dtype=bool)
        precision = np.full(n, np.nan)
        hit = np.full(n, np.nan)
        for i, row in enumerate(rows):
            predicted[i, [index[name] for name in row.prediction]] = True
            gold[i, [index[name] for name in row.gold]] = True
            known = [label for label in row.neighbour_labels if label is not None]
            if known:
                matches = sum(label in row.gold for label in known)
                precision[i] = matches / len(known)
                hit[i] = float(matches > 0)
        return cls(
            correct=np.array([row.correct for row in rows], dtype=bool),
            predicted=predicted,
            gold=gold,
            probabilities=np.array([row.distribution for row in rows], dtype=np.float64).reshape(n, n_labels),
            consistent=np.array([row.consistent for row in rows], dtype=bool),
            agreement=np.array([row.agreement for row in rows], dtype=np.float64),
            vote_entropy=np.array([row.vote_entropy for row in rows], dtype=np.float64),
            n_distinct=np.array([row.n_distinct for row in rows], dtype=np.float64),
            oracle=np.array([any(row.neighbour_correct) for row in rows], dtype=bool),
            all_correct=np.array([all(row.neighbour_correct) for row in rows], dtype=bool),
            label_precision=precision,
            label_hit=hit,
            support=np.array([row.support for row in rows], dtype=np.float64),
            image_head_correct=_head_correct(rows, "image"),
            text_head_correct=_head_correct(rows, "text"),
        )


def system_statistics(rows: Sequence[CaseResult], labels: Sequence[str]) -> dict[str, Statistic]:
    """Every metric of one system as a statistic of the case weights (see the module docstring).

    Args:
        rows: The system's scored cases.
        labels: The task's label names.

    Returns:
        Metric name -> statistic mapping ``(B, n)`` weights to ``(B,)`` values.
    """
    a = CaseArrays.from_rows(rows, labels)
    error = ~a.correct
    stats: dict[str, Statistic] = {
        "accuracy": lambda w: weighted_mean(a.correct, w),
        "macro_f1": lambda w: nan_mean(f1_per_label(a.predicted, a.gold, w)),
        "auroc": lambda w: nan_mean(
            np.stack([auroc(a.probabilities[:, j], a.gold[:, j], w) for j in range(len(labels))], axis=-1)
        ),
        "inconsistent_rate": lambda w: weighted_mean(~a.consistent, w),
        "agreement": lambda w: weighted_mean(a.agreement, w),
        "vote_entropy": lambda w: weighted_mean(a.vote_entropy, w),
        "n_distinct": lambda w: weighted_mean(a.n_distinct, w),
        "accuracy_consistent": lambda w: weighted_mean(a.correct, w, a.consistent),
        "accuracy_inconsistent": lambda w: weighted_mean(a.correct, w, ~a.consistent),
        "oracle": lambda w: weighted_mean(a.oracle, w),
        "all_correct": lambda w: weighted_mean(a.all_correct, w),
        "oracle_gap": lambda w: weighted_mean(a.oracle.astype(float) - a.correct, w),
        "label_precision": lambda w: weighted_mean(a.label_precision, w),
        "label_recall": lambda w: weighted_mean(a.label_hit, w),
        "answer_support": lambda w: weighted_mean(a.support, w),
        "accuracy_image_head": lambda w: weighted_mean(a.image_head_correct, w),
        "accuracy_text_head": lambda w: weighted_mean(a.text_head_correct, w),
        "aurc": lambda w: aurc(a.agreement, error, w),
        "disagreement_auroc": lambda w: auroc(1.0 - a.agreement, error, w),
    }
    for j, label in enumerate(labels):
        stats[f"f1_{label}"] = _label_f1(a, j)
        for rate in CLASS_RATES:
            stats[f"{rate}_{label}"] = _label_rate(a, j, rate)
    confidence = np.array([row.probability for row in rows], dtype=np.float64)
    stats["ece"] = lambda w: expected_calibration_error(confidence, a.correct, w, DEFAULT_ECE_BINS)
    return stats


def system_curve(rows: Sequence[CaseResult]) -> dict[str, list[float]]:
    """Risk-coverage points of one system when abstaining on low agreement.

    Returns:
        ``{"threshold": [...], "coverage": [...], "risk": [...]}`` in descending threshold order.
    """
    agreement = np.array([row.agreement for row in rows], dtype=np.float64)
    error = np.array([not row.correct for row in rows], dtype=bool)
    thresholds, coverage, risk = risk_coverage_curve(agreement, error)
    return {"threshold": thresholds.tolist(), "coverage": coverage.tolist(), "risk": risk.tolist()}


def _head_correct(rows: Sequence[CaseResult], head: str) -> np.ndarray:
    """``(n,)`` 1/0 where the case has neighbours of ``head``, NaN where it has none."""
    return np.array([float(row.head_correct[head]) if head in row.head_correct else np.nan for row in rows])


def _label_f1(a: CaseArrays, j: int) -> Statistic:
    # A factory so each closure keeps its own label index.
    return lambda w: f1_per_label(a.predicted[:, j : j + 1], a.gold[:, j : j + 1], w)[:, 0]


def _label_rate(a: CaseArrays, j: int, rate: str) -> Statistic:
    # A factory so each closure keeps its own label index and rate.
    return lambda w: class_rates(a.predicted[:, j : j + 1], a.gold[:, j : j + 1], w)[rate][:, 0]
