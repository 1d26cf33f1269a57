"""Weighted metrics: hand-computed values, and weights == the expanded (resampled) sample."""

from __future__ import annotations

import numpy as np
import pytest

from llama_index_lvlm_retriever.evaluation.metrics import (
    aurc,
    auroc,
    f1_per_label,
    nan_mean,
    risk_coverage_curve,
    weighted_mean,
)

ONE = np.ones((1, 4))


def test_weighted_mean_with_mask_and_nan() -> None:
    values = np.array([1.0, 0.0, 1.0, np.nan])
    # unit weights skip the NaN: (1 + 0 + 1) / 3; weights (2, 1, 0, 5): (2 + 0) / 3
    np.testing.assert_allclose(weighted_mean(values, np.vstack([ONE, [[2, 1, 0, 5]]])), [2 / 3, 2 / 3])
    mask = np.array([False, True, False, True])
    np.testing.assert_allclose(weighted_mean(values, ONE, mask), [0.0])
    assert np.isnan(weighted_mean(values, ONE, np.zeros(4, bool))[0])  # empty subset


def test_nan_mean_ignores_nan_without_warning() -> None:
    out = nan_mean(np.array([[1.0, np.nan, 0.0], [np.nan, np.nan, np.nan]]))
    assert out[0] == 0.5 and np.isnan(out[1])


def test_f1_per_label_by_hand() -> None:
    pred = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], bool)
    gold = np.array([[1, 0], [0, 1], [0, 1], [0, 0]], bool)
    # label 0: tp 1, fp 1, fn 0 -> 2/3; label 1: tp 1, fp 0, fn 1 -> 2/3
    np.testing.assert_allclose(f1_per_label(pred, gold, ONE), [[2 / 3, 2 / 3]])
    # a label nobody predicts and nobody has is undefined
    assert np.isnan(f1_per_label(np.zeros((2, 1), bool), np.zeros((2, 1), bool), np.ones((1, 2))))[0, 0]


def test_auroc_by_hand_with_ties() -> None:
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    positive = np.array([True, True, False, False])
    # pairs: 0.9 > 0.5, 0.9 > 0.1, 0.5 = 0.5 (1/2), 0.5 > 0.1 -> 3.5 / 4
    assert auroc(scores, positive, ONE)[0] == pytest.approx(0.875)
    assert np.isnan(auroc(scores, np.ones(4, bool), ONE)[0])  # no negatives


def test_risk_coverage_curve_and_aurc_by_hand() -> None:
    confidence = np.array([1.0, 1.0, 0.5, 0.5, 0.25])
    error = np.array([False, True, False, True, True])
    thresholds, coverage, risk = risk_coverage_curve(confidence, error)
    np.testing.assert_allclose(thresholds, [1.0, 0.5, 0.25])
    np.testing.assert_allclose(coverage, [0.4, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0.5, 0.5, 0.6])
    # E_i in expectation: 0.5, 1, 1.5, 2, 3 -> E_i / i = 0.5, 0.5, 0.5, 0.5, 0.6 -> mean 2.6 / 5
    assert aurc(confidence, error, np.ones((1, 5)))[0] == pytest.approx(0.52)
    # a perfect ranker (errors last) beats a reversed one
    ranked = np.array([1.0, 0.8, 0.6, 0.4])
    good = aurc(ranked, np.array([False, False, True, True]), ONE)[0]
    bad = aurc(ranked, np.array([True, True, False, False]), ONE)[0]
    # good: E = 0, 0, 1, 2 -> (0 + 0 + 1/3 + 1/2) / 4; bad: E = 1, 2, 2, 2 -> (1 + 1 + 2/3 + 1/2) / 4
    assert (good, bad) == (pytest.approx((1 / 3 + 1 / 2) / 4), pytest.approx((2 + 2 / 3 + 1 / 2) / 4))


def test_weights_equal_the_expanded_sample() -> None:
    """A weight row of multiplicities gives the metric of the sample with repeated cases."""
    rng = np.random.default_rng(7)
    n = 30
    scores = np.round(rng.uniform(size=n), 1)  # rounding makes ties
    positive = rng.uniform(size=n) < 0.4
    confidence = np.round(rng.uniform(size=n), 1)
    pred = rng.uniform(size=(n, 3)) < 0.5
    gold = rng.uniform(size=(n, 3)) < 0.5
    for seed in range(5):
        idx = np.random.default_rng(seed).integers(0, n, size=n)
        w = np.bincount(idx, minlength=n).astype(float)[None, :]
        ones = np.ones((1, n))
        assert auroc(scores, positive, w)[0] == pytest.approx(auroc(scores[idx], positive[idx], ones)[0])
        assert aurc(confidence, positive, w)[0] == pytest.approx(aurc(confidence[idx], positive[idx], ones)[0])
        np.testing.assert_allclose(f1_per_label(pred, gold, w), f1_per_label(pred[idx], gold[idx], ones))


def test_auroc_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = np.round(rng.uniform(size=200), 2)
    positive = rng.uniform(size=200) < scores  # informative scores
    assert auroc(scores, positive, np.ones((1, 200)))[0] == pytest.approx(metrics.roc_auc_score(positive, scores))
