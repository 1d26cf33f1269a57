"""Clinical metrics: per-class sensitivity, specificity, PPV, NPV; confusion matrix; calibration (ECE).

Like :mod:`.metrics`, the weighted functions take ``(B, n)`` case weights and return one value per
weight row, so the point estimate and its bootstrap distribution are the same code. Each label is
scored one-vs-rest: a case is *positive* for label ``j`` when ``j`` is (one of) its gold label(s)
and *predicted positive* when the answer contains ``j``. With weighted counts ``TP, FP, FN, TN``:

* sensitivity (recall, true positive rate) ``= TP / (TP + FN)``;
* specificity (true negative rate) ``= TN / (TN + FP)``;
* PPV (positive predictive value, precision) ``= TP / (TP + FP)``;
* NPV (negative predictive value) ``= TN / (TN + FN)``.

A rate whose denominator is zero is undefined (NaN). PPV and NPV depend on the prevalence of the
evaluated cases, so they transfer to a clinic only if its prevalence is similar.

Calibration uses the confidence of the answer shown (the aggregated probability of the predicted
label, or of the predicted label set for multi-label tasks) against its correctness, in
:data:`DEFAULT_ECE_BINS` equal-width bins over ``[0, 1]`` (bin ``b`` is ``[b/M, (b+1)/M)``, the last
bin includes 1): ``ECE = sum_b (n_b / n) |acc_b - conf_b| = sum_b |sum_{i in b} (correct_i - conf_i)| / n``
(Naeini et al., 2015; Guo et al., 2017, "On Calibration of Modern Neural Networks", arXiv 1706.04599).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "CLASS_RATES",
    "DEFAULT_ECE_BINS",
    "class_rates",
    "clinical_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "reliability_bins",
]

DEFAULT_ECE_BINS = 10
"""Equal-width confidence bins of the ECE and the reliability diagram."""
CLASS_RATES: tuple[str, ...] = ("sensitivity", "specificity", "ppv", "npv")
"""Names of the per-class rates, in the order :func:`class_rates` returns them."""


def class_rates(predicted: np.ndarray, gold: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest sensitivity, specificity, PPV and NPV per label, with weighted counts.

    Args:
        predicted: ``(n, L)`` bool, label predicted (one-hot for single-label tasks).
        gold: ``(n, L)`` bool, label in the gold answer.
        weights: ``(B, n)`` case weights.

    Returns:
        ``{"sensitivity", "specificity", "ppv", "npv"}`` -> ``(B, L)`` rates, NaN where the
        denominator is zero (e.g. sensitivity of a label without positive cases).

    Example:
        >>> import numpy as np
        >>> pred = np.array([[1, 0], [1, 0], [0, 1]], bool); gold = np.array([[1, 0], [0, 1], [0, 1]], bool)
        >>> {k: v[0].tolist() for k, v in class_rates(pred, gold, np.ones((1, 3))).items()}["sensitivity"]
        [1.0, 0.5]
    """
    pred = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(gold, dtype=np.float64)
    tp = weights @ (pred * true)  # (B, L)
    fp = weights @ (pred * (1.0 - true))  # (B, L)
    fn = weights @ ((1.0 - pred) * true)  # (B, L)
    tn = weights @ ((1.0 - pred) * (1.0 - true))  # (B, L)
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """``(n,)`` bin of each confidence: ``floor(c * M)``, with ``c = 1`` in the last bin."""
    c = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    return np.minimum((c * n_bins).astype(np.int64), n_bins - 1)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, weights: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> np.ndarray:
    """Expected calibration error over equal-width bins (see the module docstring).

    Args:
        confidence: ``(n,)`` probability of the answer shown.
        correct: ``(n,)`` bool, the answer is right.
        weights: ``(B, n)`` case weights.
        n_bins: Number of equal-width bins over ``[0, 1]``.

    Returns:
        ``(B,)`` ECE in ``[0, 1]``; NaN for an all-zero weight row.

    Raises:
        ValueError: ``n_bins < 1``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}; the default is {DEFAULT_ECE_BINS}")
    c = np.asarray(confidence, dtype=np.float64)
    gap = np.asarray(correct, dtype=np.float64) - c  # (n,) correct_i - conf_i
    onehot = np.zeros((c.shape[0], n_bins))  # (n, M)
    onehot[np.arange(c.shape[0]), _bin_index(c, n_bins)] = 1.0
    per_bin = weights @ (onehot * gap[:, None])  # (B, M) summed gaps per bin
    total = weights.sum(axis=1)  # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.abs(per_bin).sum(axis=1) / np.where(total > 0, total, 1.0), np.nan)


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> dict[str, list[float]]:
    """The points of a reliability diagram: per bin, its edges, case count, mean confidence, accuracy.

    Args:
        confidence: ``(n,)`` probability of the answer shown.
        correct: ``(n,)`` bool, the answer is right.
        n_bins: Number of equal-width bins over ``[0, 1]``.

    Returns:
        ``{"lower", "upper", "count", "confidence", "accuracy"}`` lists of length ``n_bins``;
        confidence and accuracy are NaN for an empty bin.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}; the default is {DEFAULT_ECE_BINS}")
    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    index = _bin_index(c, n_bins)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)  # (M,)
    conf_sum = np.bincount(index, weights=c, minlength=n_bins)
    ok_sum = np.bincount(index, weights=ok, minlength=n_bins)
    edges = np.arange(n_bins + 1) / n_bins
    return {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": count.tolist(),
        "confidence": _ratio(conf_sum, count).tolist(),
        "accuracy": _ratio(ok_sum, count).tolist(),
    }


def confusion_matrix(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """``(L, L)`` counts: row = gold label, column = predicted label (single-label tasks).

    Raises:
        ValueError: A label is not in ``labels``, or the sequences differ in length.

    Example:
        >>> confusion_matrix(["a", "b", "b"], ["a", "a", "b"], ["a", "b"]).tolist()
        [[1, 0], [1, 1]]
    """
    if len(gold) != len(predicted):
        raise ValueError(f"gold has {len(gold)} entries but predicted has {len(predicted)}; pass one of each per case")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({x for x in (*gold, *predicted) if x not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the task's labels {list(labels)}")
    out = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(out, ([index[g] for g in gold], [index[p] for p in predicted]), 1)
    return out


def clinical_metrics(
    predicted: np.ndarray,
    gold: np.ndarray,
    confidence: np.ndarray,
    correct: np.ndarray,
    labels: Sequence[str],
    n_bins: int = DEFAULT_ECE_BINS,
) -> dict[str, float]:
    """The clinical metrics on the evaluated cases as a flat dict (no intervals, no file I/O).

    Args:
        predicted: ``(n, L)`` bool predicted-label indicators.
        gold: ``(n, L)`` bool gold-label indicators.
        confidence: ``(n,)`` probability of the answer shown.
        correct: ``(n,)`` bool, the answer is right.
        labels: The task's label names (the columns of ``predicted`` and ``gold``).
        n_bins: ECE bins.

    Returns:
        ``<rate>_<label>`` for each rate of :data:`CLASS_RATES` and label, plus ``ece``; NaN
        where a rate is undefined.
    """
    ones = np.ones((1, np.asarray(correct).shape[0]))
    out: dict[str, float] = {}
    for rate, values in class_rates(predicted, gold, ones).items():
        out.update({f"{rate}_{label}": float(values[0, j]) for j, label in enumerate(labels)})
    out["ece"] = float(expected_calibration_error(confidence, correct, ones, n_bins)[0])
    return out


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)
