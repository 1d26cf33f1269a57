"""Abstention with a guarantee: exact binomial arithmetic, the fixed-sequence choice, the file, the guarantee."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from llama_index_lvlm_retriever.evaluation.risk_control import (
    THRESHOLD_GRID,
    binomial_cdf,
    choose_min_support,
    clopper_pearson_upper,
    load_threshold_file,
    save_threshold_file,
    selective_risk,
)


def test_binomial_cdf_and_clopper_pearson_by_hand() -> None:
    assert binomial_cdf(0, 10, 0.1) == pytest.approx(0.9**10)
    assert binomial_cdf(1, 3, 0.5) == pytest.approx(0.5)  # (1 + 3) / 8
    assert binomial_cdf(3, 3, 0.2) == 1.0 and binomial_cdf(-1, 3, 0.2) == 0.0
    # no error in n: P(Bin(n, u) <= 0) = (1 - u)^n = delta -> u = 1 - delta^(1/n)
    assert clopper_pearson_upper(0, 30, 0.1) == pytest.approx(1 - 0.1 ** (1 / 30))
    # one error in 2: (1 - u)^2 + 2u(1 - u) = 1 - u^2 = delta -> u = sqrt(1 - delta)
    assert clopper_pearson_upper(1, 2, 0.19) == pytest.approx(0.9)
    assert clopper_pearson_upper(0, 0, 0.1) == 1.0


def test_grid_is_fixed_and_descending() -> None:
    assert THRESHOLD_GRID[0] == 1.0 and THRESHOLD_GRID[-1] == 0.01 and len(THRESHOLD_GRID) == 100
    assert all(a > b for a, b in zip(THRESHOLD_GRID, THRESHOLD_GRID[1:]))


def test_chooses_the_last_certified_threshold() -> None:
    # 30 unanimous right cases, 10 at support 1/2 with 5 errors. t = 1.00 ... 0.51 answer the 30:
    # p = 0.9^30 = 0.042 <= 0.1, rejected; t = 0.50 answers 40 with 5 errors: P(Bin(40, 0.1) <= 5) = 0.79, stop.
    support = np.array([1.0] * 30 + [0.5] * 10)
    correct = np.array([True] * 30 + [True, False] * 5)
    control = choose_min_support(support, correct, target_risk=0.1, delta=0.1)
    assert control.threshold == 0.51
    assert control.p_value == pytest.approx(0.9**30)
    assert control.bound == pytest.approx(1 - 0.1 ** (1 / 30))  # Clopper-Pearson on 0 errors in 30
    assert (control.validation_coverage, control.validation_risk) == (0.75, 0.0)
    # with 20 unanimous cases even t = 1 fails (0.9^20 = 0.12 > 0.1): nothing is certified
    few = choose_min_support(support[10:], correct[10:], target_risk=0.1, delta=0.1)
    # ... and the numbers are those of t = 1, the test that failed: 0 errors in 20, p = 0.9^20
    assert few.threshold is None and few.validation_risk == 0.0 and few.validation_coverage == 2 / 3
    assert few.bound == pytest.approx(1 - 0.1 ** (1 / 20)) and few.p_value == pytest.approx(0.9**20)
    # a system that is always right is certified down to the end of the grid
    assert choose_min_support(np.array([0.25, 1.0] * 30), np.ones(60, bool), 0.1, 0.1).threshold == 0.01


def test_test_risk_and_coverage() -> None:
    control = choose_min_support(np.array([1.0] * 30 + [0.5] * 10), np.array([True] * 30 + [True, False] * 5), 0.1, 0.1)
    tested = control.with_test(np.array([1.0, 1.0, 0.75, 0.5]), np.array([True, False, True, True]))
    # 0.51 answers the 1.0, 1.0, 0.75 cases (one error): coverage 3/4, risk 1/3
    assert (tested.test_cases, tested.test_coverage) == (4, 0.75) and tested.test_risk == pytest.approx(1 / 3)
    coverage, risk = selective_risk(np.array([0.2]), np.array([True]), 0.5)
    assert coverage == 0.0 and math.isnan(risk)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"target risk must be in \(0, 1\), e.g. 0.1; got 1.5"):
        choose_min_support(np.ones(3), np.ones(3, bool), 1.5)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        choose_min_support(np.ones(3), np.ones(3, bool), 0.1, delta=0.0)
    with pytest.raises(ValueError, match="needs validation cases"):
        choose_min_support(np.ones(0), np.ones(0, bool), 0.1)
    with pytest.raises(ValueError, match=r"support has shape \(3,\) but correct has \(2,\)"):
        choose_min_support(np.ones(3), np.ones(2, bool), 0.1)


def test_threshold_file_round_trip_and_errors(tmp_path: Path) -> None:
    control = choose_min_support(np.array([1.0] * 30), np.ones(30, bool), 0.1, 0.1)
    path = save_threshold_file(tmp_path / "t.json", control, {"system": "rag"})
    record = load_threshold_file(path)
    assert record["min_support"] == 0.01 and record["system"] == "rag" and record["target_risk"] == 0.1
    assert record["test_risk"] is None  # not tested yet: NaN is written as null
    nothing = choose_min_support(np.array([1.0] * 5), np.ones(5, bool), 0.1, 0.1)
    with pytest.raises(ValueError, match="no min_support is certified for target risk 0.1 with 5 validation cases"):
        save_threshold_file(tmp_path / "n.json", nothing)
    with pytest.raises(FileNotFoundError, match="no threshold file at .*missing.json"):
        load_threshold_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_threshold_file(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"kind": "something"}))
    with pytest.raises(ValueError, match="is not a threshold file"):
        load_threshold_file(tmp_path / "other.json")
    (tmp_path / "zero.json").write_text(json.dumps({**record, "min_support": 0}))
    with pytest.raises(ValueError, match=r"has min_support 0; expected a number in \(0, 1\]"):
        load_threshold_file(tmp_path / "zero.json")


def test_the_guarantee_holds_in_simulation() -> None:
    # Support levels 1/4 ... 1 equally likely, with error rates 0.6, 0.3, 0.1, 0.02: the true selective
    # risk at a threshold is the mean error rate of the levels it answers. Over 400 validation draws the
    # chosen threshold must have a true risk above the target at most delta of the time (plus slack
    # for the 400 draws: 3 standard errors).
    levels = np.array([0.25, 0.5, 0.75, 1.0])
    error_rate = np.array([0.6, 0.3, 0.1, 0.02])
    target, delta = 0.1, 0.1
    rng = np.random.default_rng(0)
    violations, chosen = 0, 0
    for _ in range(400):
        level = rng.integers(0, 4, size=300)
        correct = rng.random(300) >= error_rate[level]
        control = choose_min_support(levels[level], correct, target, delta)
        if control.threshold is None:
            continue
        chosen += 1
        answered = levels >= control.threshold - 1e-12
        violations += error_rate[answered].mean() > target
    assert chosen > 300  # it usually finds a threshold
    assert violations / 400 <= delta + 3 * math.sqrt(delta * (1 - delta) / 400)
