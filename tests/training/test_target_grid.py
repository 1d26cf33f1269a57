"""``training/target_grid.py``: the validation-only choice, merging runs of one seed, the pooled table.

Hand-made results of two "runs" (the layout ``run_grid`` writes); every number below is computed by
hand from them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training"))
from target_grid import READER_BEST, STANDARD, _merged, pooled_table, validation_summary  # noqa: E402

DEFAULT = "posterior, gamma 1 (paper's code)"
WIDE = "posterior, gamma 1, mlp hidden 128"
ENCODER = "encoder mode: posterior, gamma 1"
OLD = "posterior, prior_gamma = gamma (old default)"


def _point(gain: float, adopted: bool) -> dict[str, Any]:
    return {"point": {}, "target_diagnostics": {}, "val_initial": None, "val_best": None,
            "adoption": {"delta_loglik": gain, "loglik_lower_bound": gain / 2, "delta_accuracy": 0.0,
                         "n_cases": 250, "adopted": adopted}}


def _result(dataset: str, seed: int, points: dict[str, tuple[float, bool, float, float]]) -> dict[str, Any]:
    """points: name -> (validation gain, adopted, legal test accuracy, oracle-fit test accuracy)."""
    test: dict[str, Any] = {STANDARD: {"accuracy": 0.70}, READER_BEST: {"accuracy": 0.74}}
    for name, (_, _, legal, oracle) in points.items():
        test[f"legal: {name}"] = {"accuracy": legal}
        test[f"oracle-fit: {name}"] = {"accuracy": oracle}
    return {"dataset": dataset, "seed": seed, "test": test,
            "grid": {name: _point(gain, adopted) for name, (gain, adopted, _, _) in points.items()}}


def _write(folder: Path, result: dict[str, Any]) -> Path:
    path = folder / f"{result['dataset']}-seed{result['seed']}.json"
    path.write_text(json.dumps(result))
    return path


def test_the_choice_reads_validation_only_and_points_run_on_every_seed(tmp_path: Path) -> None:
    first = _write(tmp_path, _result("elpv", 0, {DEFAULT: (0.010, True, 0.70, 0.72), WIDE: (0.004, False, 0.70, 0.73),
                                                  OLD: (0.050, True, 0.60, 0.60), ENCODER: (0.020, True, 0.71, 0.73)}))
    second = _write(tmp_path, _result("fashion-mnist", 0, {DEFAULT: (0.020, False, 0.70, 0.72),
                                                           WIDE: (0.030, True, 0.70, 0.74),
                                                           ENCODER: (0.012, False, 0.70, 0.71)}))
    summary = validation_summary([first, second])
    # OLD has the largest gain but ran on one seed only, so it does not compete; WIDE's mean
    # (0.004 + 0.030) / 2 = 0.017 beats DEFAULT's (0.010 + 0.020) / 2 = 0.015.
    assert summary["mean_holdout_delta_loglik"][DEFAULT] == 0.015
    assert summary["chosen"] == WIDE and summary["best_on_validation"] == WIDE
    # The head: encoder mode's mean (0.016) is below the chosen adapter point's (0.017).
    assert summary["mode"]["encoder"] == ENCODER and summary["mode"]["chosen"] == "adapter"
    # Only validation columns are in the summary (no test accuracy).
    assert {key for run in summary["runs"] for point in run["points"].values() for key in point} == {
        "settings", "frozen_topk_share", "val_initial", "val_selected", "holdout_delta_loglik",
        "holdout_delta_loglik_lower_bound", "holdout_delta_accuracy", "holdout_cases", "seconds_legal"}


def test_pooled_table_averages_seeds_and_shares_of_the_ceiling(tmp_path: Path) -> None:
    paths = [
        _write(tmp_path, _result("fashion-mnist", 0, {DEFAULT: (0.02, True, 0.71, 0.72)})),
        _write(tmp_path, _result("fashion-mnist", 1, {DEFAULT: (0.00, False, 0.70, 0.73)})),
    ]
    table = pooled_table(paths)
    row = next(line for line in table.splitlines() if line.startswith(f"| {DEFAULT} "))
    # legal: (+1.0 + 0.0) / 2 = +0.5, adopted on 1 of 2; oracle-fit (+2 + 3) / 2 = +2.5 of a +4.0 ceiling = 62%.
    assert row == f"| {DEFAULT} | 2 | +0.0100 | +0.5 (1/2) | +2.5 (62%) |"
    assert "fashion-mnist ceiling +4.0 points over 2 seed(s)" in table


def test_a_run_with_only_adds_points_to_the_same_seed(tmp_path: Path) -> None:
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps(_result("elpv", 0, {DEFAULT: (0.01, True, 0.71, 0.72)})))
    later = _result("elpv", 0, {WIDE: (0.02, False, 0.70, 0.73)})
    merged = _merged(path, later)
    assert set(merged["grid"]) == {DEFAULT, WIDE}
    assert {f"legal: {DEFAULT}", f"legal: {WIDE}", STANDARD} <= set(merged["test"])
    # Another seed or dataset is not merged in.
    assert _merged(path, _result("elpv", 1, {WIDE: (0.02, False, 0.70, 0.73)}))["grid"].keys() == {WIDE}
