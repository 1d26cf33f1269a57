"""Classification and selective-prediction metrics over weighted cases, in numpy.

Every metric takes per-case arrays and a ``(B, n)`` matrix of case weights and returns one value
per weight row, ``(B,)``. A row of ones is the plain metric on the sample; a row of bootstrap
multiplicities (how often each case was drawn) is the metric on that resample. Writing the
metrics once this way makes the point estimate and its bootstrap distribution the same code, and
vectorises the bootstrap. Undefined values (an empty subset, a label with no positives) are NaN.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "auroc",
    "aurc",
    "f1_per_label",
    "nan_mean",
    "risk_coverage_curve",
    "weighted_mean",
]


def weighted_mean(values: np.ndarray, weights: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``sum_i w_i m_i v_i / sum_i w_i m_i`` per weight row; NaN where the subset is empty.

    Args:
        values: ``(n,)`` per-case values (bools are 0/1).
        weights: ``(B, n)`` case weights.
        mask: ``(n,)`` bool subset of cases (all when ``None``); NaN values are always excluded.

    Returns:
        ``(B,)`` weighted means.
    """
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v) if mask is None else np.isfinite(v) & np.asarray(mask, dtype=bool)
    w = weights * keep  # (B, n)
    total = w.sum(axis=1)  # (B,)
    numerator = w @ np.where(keep, v, 0.0)  # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, numerator / np.where(total > 0, total, 1.0), np.nan)


def nan_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (without a warning) where every entry is NaN."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    count = finite.sum(axis=-1)
    total = np.where(finite, v, 0.0).sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def f1_per_label(predicted: np.ndarray, gold: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-label F1 ``2 TP / (2 TP + FP + FN)`` with weighted counts.

    Single-label tasks pass one-hot matrices; multi-label tasks pass the predicted and gold
    indicator matrices. A label absent from both predictions and gold in a weight row has no F1
    there (NaN), so macro averages skip it, as scikit-learn does for labels in neither
    ``y_true`` nor ``y_pred``.

    Args:
        predicted: ``(n, L)`` bool, label predicted.
        gold: ``(n, L)`` bool, label in the gold answer.
        weights: ``(B, n)`` case weights.

    Returns:
        ``(B, L)`` F1 scores.
    """
    pred = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(gold, dtype=np.float64)
    tp = weights @ (pred * true)  # (B, L)
    fp = weights @ (pred * (1.0 - true))  # (B, L)
    fn = weights @ ((1.0 - pred) * true)  # (B, L)
    denominator = 2.0 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2.0 * tp / np.where(denominator > 0, denominator, 1.0), np.nan)


def auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Area under the ROC curve: ``P(score of a positive > score of a negative)``, ties count 1/2.

    This is the Mann-Whitney U statistic divided by ``n_pos * n_neg``, with each case counted
    ``w_i`` times; the cases are sorted once and every weight row is handled by cumulative sums,
    so the cost is ``O(B n)`` after one ``O(n log n)`` sort.

    Args:
        scores: ``(n,)`` scores; higher means "more likely positive".
        positive: ``(n,)`` bool labels.
        weights: ``(B, n)`` case weights.

    Returns:
        ``(B,)`` AUROC; NaN where a weight row has no positive or no negative case.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n = s.shape[0]
    if n == 0:
        return np.full(weights.shape[0], np.nan)
    order = np.argsort(s, kind="stable")
    s, pos = s[order], pos[order]
    w = weights[:, order]  # (B, n), cases in ascending score order
    negatives = w * ~pos  # (B, n)
    cum_neg = np.cumsum(negatives, axis=1)  # (B, n) negative weight at or before each position
    starts = np.concatenate([[0], np.flatnonzero(np.diff(s) != 0) + 1])  # (G,) tie-group starts
    ends = np.concatenate([starts[1:], [n]]) - 1  # (G,) tie-group last positions
    group = np.repeat(np.arange(len(starts)), ends - starts + 1)  # (n,) group of each position
    below = np.where(starts > 0, cum_neg[:, np.maximum(starts - 1, 0)], 0.0)  # (B, G) strictly lower
    tied = cum_neg[:, ends] - below  # (B, G) negatives with an equal score
    per_position = below[:, group] + 0.5 * tied[:, group]  # (B, n)
    u = (w * pos * per_position).sum(axis=1)  # (B,)
    pairs = (w * pos).sum(axis=1) * negatives.sum(axis=1)  # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, u / np.where(pairs > 0, pairs, 1.0), np.nan)


def risk_coverage_curve(
    confidence: np.ndarray, error: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Risk-coverage points when abstaining on cases below each confidence threshold.

    Args:
        confidence: ``(n,)`` per-case confidence (e.g. agreement); higher is answered first.
        error: ``(n,)`` bool, the answer is wrong.

    Returns:
        ``(thresholds, coverage, risk)``, each ``(G,)`` over the distinct confidence values in
        descending order: answering every case with confidence ``>= thresholds[g]`` covers
        ``coverage[g]`` of the cases with error rate ``risk[g]``.
    """
    c = np.asarray(confidence, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    thresholds = np.unique(c)[::-1]  # (G,) descending
    answered = c[None, :] >= thresholds[:, None]  # (G, n)
    covered = answered.sum(axis=1)  # (G,)
    risk = (answered * e).sum(axis=1) / np.maximum(covered, 1)
    return thresholds, covered / max(len(c), 1), risk


def aurc(confidence: np.ndarray, error: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Area under the risk-coverage curve (lower is better), ties resolved in expectation.

    With cases answered in descending confidence, ``AURC = (1/N) sum_{i=1..N} E_i / i`` where
    ``E_i`` is the number of errors among the first ``i`` answered cases (Geifman et al., 2019).
    Cases with equal confidence (agreement takes only ``k`` values) have no order, so ``E_i`` is
    its expectation under a random order within the tie: linear inside the tie group. Summing
    ``(a + b i) / i`` over a group uses harmonic numbers, so this is exact and ``O(B n)``.

    Args:
        confidence: ``(n,)`` per-case confidence.
        error: ``(n,)`` bool, the answer is wrong.
        weights: ``(B, n)`` integer case weights (ones, or bootstrap multiplicities).

    Returns:
        ``(B,)`` AURC in ``[0, 1]``; a system that cannot rank its errors scores its error rate,
        and NaN for an all-zero weight row.
    """
    c = np.asarray(confidence, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    values, group = np.unique(-c, return_inverse=True)  # groups in descending confidence
    onehot = np.zeros((c.shape[0], values.shape[0]))  # (n, G)
    onehot[np.arange(c.shape[0]), group.ravel()] = 1.0
    sizes = np.rint(weights @ onehot)  # (B, G) cases per group
    errors = weights @ (onehot * e[:, None])  # (B, G) errors per group
    cum_sizes = np.cumsum(sizes, axis=1)  # (B, G)
    before_sizes = cum_sizes - sizes  # (B, G) cases answered before the group
    before_errors = np.cumsum(errors, axis=1) - errors  # (B, G)
    total = cum_sizes[:, -1]  # (B,)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(total.max(initial=0)) + 1))])
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(sizes > 0, errors / np.where(sizes > 0, sizes, 1.0), 0.0)  # (B, G)
        # E_i = before_errors + rate * (i - before_sizes) for i in (before_sizes, cum_sizes]
        intercept = before_errors - rate * before_sizes
        h = harmonic[cum_sizes.astype(np.int64)] - harmonic[before_sizes.astype(np.int64)]
        area = (intercept * h + rate * sizes).sum(axis=1)
        return np.where(total > 0, area / np.where(total > 0, total, 1.0), np.nan)
