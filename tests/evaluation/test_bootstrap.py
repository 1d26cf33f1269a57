"""Bootstrap intervals (seeded, containing the estimate) and McNemar's exact test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llama_index_lvlm_retriever.evaluation.bootstrap import (
    Estimate,
    bootstrap_estimates,
    mcnemar_exact,
    resample_weights,
)
from llama_index_lvlm_retriever.evaluation.predictions import evaluate_predictions

CORRECT = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])


def _accuracy(w: np.ndarray) -> np.ndarray:
    return w @ CORRECT / w.sum(axis=1)


def test_resample_weights_are_multiplicities() -> None:
    w = resample_weights(np.random.default_rng(0), n=8, n_resamples=50)
    assert w.shape == (50, 8)
    np.testing.assert_array_equal(w.sum(axis=1), np.full(50, 8.0))
    assert np.all(w == np.round(w)) and w.min() >= 0


def test_bootstrap_is_seeded_and_contains_the_estimate() -> None:
    a = bootstrap_estimates({"acc": _accuracy}, n=8, n_resamples=500, seed=1)["acc"]
    b = bootstrap_estimates({"acc": _accuracy}, n=8, n_resamples=500, seed=1)["acc"]
    assert a == b
    assert a.value == 0.75  # 6 of 8
    assert a.ci_low <= a.value <= a.ci_high
    assert a.ci_low < a.ci_high
    # another seed draws other resamples
    w1 = resample_weights(np.random.default_rng(1), 8, 20)
    w2 = resample_weights(np.random.default_rng(2), 8, 20)
    assert not np.array_equal(w1, w2)


def test_bootstrap_interval_matches_a_naive_loop() -> None:
    # Same generator, same draws: the vectorised weights reproduce an index-resampling loop.
    n, n_resamples = 8, 300
    rng = np.random.default_rng(5)
    naive = [CORRECT[rng.integers(0, n, size=n)].mean() for _ in range(n_resamples)]
    est = bootstrap_estimates({"acc": _accuracy}, n=n, n_resamples=n_resamples, confidence=0.9, seed=5)["acc"]
    low, high = np.percentile(naive, [5, 95])
    assert (est.ci_low, est.ci_high) == (pytest.approx(low), pytest.approx(high))


def test_no_resamples_gives_nan_intervals_and_undefined_stays_nan() -> None:
    est = bootstrap_estimates({"acc": _accuracy}, n=8, n_resamples=0)["acc"]
    assert est.value == 0.75 and math.isnan(est.ci_low) and math.isnan(est.ci_high)
    nan = bootstrap_estimates({"none": lambda w: np.full(w.shape[0], np.nan)}, n=3, n_resamples=10)["none"]
    assert all(math.isnan(x) for x in (nan.value, nan.ci_low, nan.ci_high))


def test_bootstrap_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="at least one case, got n=0"):
        bootstrap_estimates({"acc": _accuracy}, n=0)
    with pytest.raises(ValueError, match="n_resamples must be >= 0"):
        bootstrap_estimates({"acc": _accuracy}, n=8, n_resamples=-1)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        bootstrap_estimates({"acc": _accuracy}, n=8, confidence=1.0)


def test_estimate_round_trips_nan_as_none() -> None:
    est = Estimate(0.5, math.nan, 0.75)
    assert est.to_dict() == {"value": 0.5, "ci_low": None, "ci_high": 0.75}
    back = Estimate.from_dict(est.to_dict())
    assert back.value == 0.5 and math.isnan(back.ci_low) and back.ci_high == 0.75


def test_mcnemar_exact_by_hand() -> None:
    # b = 1, c = 9: 2 * (C(10, 0) + C(10, 1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)  # symmetric
    # b = 0, c = 6: 2 / 64
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(3, 3) == 1.0  # capped
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pairs
    # large counts stay exact and finite: b = 400, c = 600 is far from chance
    assert 0.0 < mcnemar_exact(400, 600) < 1e-9
    with pytest.raises(ValueError, match="discordant counts must be >= 0"):
        mcnemar_exact(-1, 2)


def test_mcnemar_matches_scipy_binomial() -> None:
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(2, 7), (5, 5), (12, 3), (0, 15)]:
        expected = stats.binomtest(min(b, c), b + c, 0.5).pvalue
        assert mcnemar_exact(b, c) == pytest.approx(min(1.0, expected))


def test_report_intervals_are_deterministic_and_contain_the_estimates(task, predictions) -> None:
    one = evaluate_predictions(predictions, task, n_bootstrap=300, seed=11)
    two = evaluate_predictions(predictions, task, n_bootstrap=300, seed=11)
    assert one.to_dict() == two.to_dict()
    for system in one.systems:
        for metric in ("accuracy", "macro_f1", "agreement", "inconsistent_rate", "oracle", "aurc"):
            est = one.estimate(system, metric)
            assert est.ci_low <= est.value + 1e-12 and est.value <= est.ci_high + 1e-12, (system, metric, est)
