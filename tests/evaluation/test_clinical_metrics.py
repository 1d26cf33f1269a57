"""Clinical metrics: per-class rates, ECE, reliability bins, confusion matrix, and their place in the report.

The report-level checks use the shared fixture (conftest.py). "rag", mean aggregation:

====  ====  ====  ================================  ========
case  gold  pred  probability of the answer          correct
====  ====  ====  ================================  ========
c1    A     A     (0.8 + 0.8 + 0.1) / 3 = 0.5667     yes
c2    B     B     (0.1 + 0.9) / 2 = 0.5              yes
c3    C     B     0.8                                no
c4    A     A     0.8                                yes
c5    B     C     (0.8 + 0.8 + 0.1) / 3 = 0.5667     no
c6    C     C     (0.9 + 0.1 + 0.1) / 3 = 0.3667     yes
====  ====  ====  ================================  ========

Label A: TP 2, FN 0, FP 0, TN 4 -> all four rates 1. Label B: TP 1 (c2), FN 1 (c5), FP 1 (c3),
TN 3 -> sensitivity 1/2, specificity 3/4, PPV 1/2, NPV 3/4; label C likewise (TP c6, FN c3, FP c5).
ECE (10 bins): bin [0.5, 0.6) holds c1, c2, c5: |2 - 1.6333| = 0.3667; bin [0.8, 0.9) holds c3, c4:
|1 - 1.6| = 0.6; bin [0.3, 0.4) holds c6: |1 - 0.3667| = 0.6333; ECE = 1.6 / 6.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llama_index_lvlm_retriever.evaluation.clinical_metrics import (
    class_rates,
    clinical_metrics,
    confusion_matrix,
    expected_calibration_error,
    reliability_bins,
)
from llama_index_lvlm_retriever.evaluation.predictions import evaluate_predictions
from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport, write_report

PRED = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], bool)
GOLD = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [1, 0]], bool)


def test_class_rates_by_hand() -> None:
    # label 0: TP 2 (cases 0, 4), FP 1 (case 1), FN 0, TN 2 -> sens 1, spec 2/3, PPV 2/3, NPV 1
    # label 1: TP 2 (2, 3), FP 0, FN 1 (case 1), TN 2 -> sens 2/3, spec 1, PPV 1, NPV 2/3
    rates = class_rates(PRED, GOLD, np.ones((1, 5)))
    np.testing.assert_allclose(rates["sensitivity"], [[1.0, 2 / 3]])
    np.testing.assert_allclose(rates["specificity"], [[2 / 3, 1.0]])
    np.testing.assert_allclose(rates["ppv"], [[2 / 3, 1.0]])
    np.testing.assert_allclose(rates["npv"], [[1.0, 2 / 3]])
    # a label with no positive case has no sensitivity (and no PPV when never predicted)
    none = class_rates(np.zeros((2, 1), bool), np.zeros((2, 1), bool), np.ones((1, 2)))
    assert np.isnan(none["sensitivity"][0, 0]) and np.isnan(none["ppv"][0, 0]) and none["specificity"][0, 0] == 1.0


def test_weights_equal_the_expanded_sample() -> None:
    weights = np.array([[2.0, 0.0, 1.0, 3.0, 1.0]])
    expanded = np.repeat(np.arange(5), weights[0].astype(int))
    for name, values in class_rates(PRED, GOLD, weights).items():
        np.testing.assert_allclose(values, class_rates(PRED[expanded], GOLD[expanded], np.ones((1, 7)))[name])
    conf = np.array([0.9, 0.55, 0.3, 1.0, 0.62])
    ok = np.array([True, False, True, True, False])
    np.testing.assert_allclose(
        expected_calibration_error(conf, ok, weights), expected_calibration_error(conf[expanded], ok[expanded], np.ones((1, 7)))
    )


def test_ece_by_hand_and_its_binning() -> None:
    # bins of width 1/2: [0, 0.5) holds 0.2 (right) and 0.4 (wrong): |1 - 0.6| = 0.4;
    # [0.5, 1] holds 0.5 (wrong) and 1.0 (right; 1.0 belongs to the last bin): |1 - 1.5| = 0.5 -> 0.9 / 4
    conf = np.array([0.2, 0.4, 0.5, 1.0])
    ok = np.array([True, False, False, True])
    assert expected_calibration_error(conf, ok, np.ones((1, 4)), n_bins=2)[0] == pytest.approx(0.225)
    # one bin: |sum(correct) - sum(conf)| / n = |2 - 2.1| / 4
    assert expected_calibration_error(conf, ok, np.ones((1, 4)), n_bins=1)[0] == pytest.approx(0.025)
    # a perfectly calibrated sample: confidence 0.75, three of four right
    assert expected_calibration_error(np.full(4, 0.75), np.array([1, 1, 1, 0], bool), np.ones((1, 4)))[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="n_bins must be >= 1, got 0"):
        expected_calibration_error(conf, ok, np.ones((1, 4)), n_bins=0)
    bins = reliability_bins(conf, ok, n_bins=2)
    assert bins["count"] == [2.0, 2.0] and bins["lower"] == [0.0, 0.5] and bins["upper"] == [0.5, 1.0]
    np.testing.assert_allclose(bins["confidence"], [0.3, 0.75])
    np.testing.assert_allclose(bins["accuracy"], [0.5, 0.5])
    assert reliability_bins(conf, ok, n_bins=4)["accuracy"][0] == 1.0  # [0, 0.25) holds 0.2 (right)
    assert np.isnan(reliability_bins(np.array([0.9]), np.array([True]), n_bins=2)["accuracy"][0])  # empty bin


def test_confusion_matrix_and_its_errors() -> None:
    matrix = confusion_matrix(["A", "B", "C", "A", "B", "C"], ["A", "B", "B", "A", "C", "C"], ["A", "B", "C"])
    assert matrix.tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    with pytest.raises(ValueError, match=r"labels \['Z'\] are not among the task's labels"):
        confusion_matrix(["A"], ["Z"], ["A", "B"])
    with pytest.raises(ValueError, match="gold has 2 entries but predicted has 1"):
        confusion_matrix(["A", "B"], ["A"], ["A", "B"])


def test_clinical_metrics_flat_dict() -> None:
    out = clinical_metrics(PRED, GOLD, np.array([0.9, 0.9, 0.9, 0.9, 0.9]), PRED[:, 0] == GOLD[:, 0], ["neg", "pos"])
    assert out["sensitivity_neg"] == 1.0 and out["sensitivity_pos"] == pytest.approx(2 / 3)
    assert out["npv_pos"] == pytest.approx(2 / 3)
    assert out["ece"] == pytest.approx(abs(0.8 - 0.9))  # one bin, 4 of 5 right at 0.9
    assert set(out) == {f"{r}_{label}" for r in ("sensitivity", "specificity", "ppv", "npv") for label in ("neg", "pos")} | {"ece"}


def test_report_holds_the_clinical_metrics_with_intervals(task, predictions, tmp_path: Path) -> None:
    report = evaluate_predictions(predictions, task, baseline="rag", n_bootstrap=200, seed=1)
    est = report.estimates["rag"]
    for label in "A":
        for rate in ("sensitivity", "specificity", "ppv", "npv"):
            assert est[f"{rate}_{label}"].value == 1.0
    for label in "BC":
        assert (est[f"sensitivity_{label}"].value, est[f"specificity_{label}"].value) == (0.5, 0.75)
        assert (est[f"ppv_{label}"].value, est[f"npv_{label}"].value) == (0.5, 0.75)
        assert est[f"sensitivity_{label}"].ci_low <= 0.5 <= est[f"sensitivity_{label}"].ci_high
    assert est["ece"].value == pytest.approx(1.6 / 6)
    assert est["ece"].ci_low < est["ece"].ci_high
    flat = report.metrics("rag")
    assert flat["rag_sensitivity_B"] == 0.5 and "rag_ece_ci_high" in flat

    text = report.to_markdown()
    assert "## Clinical metrics per class" in text and "## Calibration" in text and "## Confusion matrices" in text
    assert "| B | 0.500 [" in text  # sensitivity of B with its interval
    assert "10 equal-width bins" in text
    assert "| C | 0 | 1 | 1 |" in text  # rag's confusion row for gold C: c3 -> B, c6 -> C

    paths = write_report(report, tmp_path)
    record = json.loads(paths["json"].read_text())
    assert record["confusion_matrices"]["rag"] == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert record["reliability"]["rag"]["count"][5] == 3 and record["ece_bins"] == 10
    assert record["metrics"]["rag"]["ece"]["ci_low"] is not None
    assert paths["reliability_diagram"].is_file() and paths["confusion_rag"].is_file()
    again = ConsistencyReport.from_json(paths["json"])
    assert again.estimates["rag"]["npv_B"].value == 0.75


def test_multi_label_report_has_rates_but_no_confusion_matrix(multi_label_predictions) -> None:
    task, preds = multi_label_predictions
    report = evaluate_predictions(preds, task, n_bootstrap=0)
    # x: gold in m1, m2; predicted in m1, m2 -> sensitivity 1, specificity 1 (m3 negative, not predicted)
    assert report.estimates["ml"]["sensitivity_x"].value == 1.0 and report.estimates["ml"]["specificity_x"].value == 1.0
    assert "confusion_matrices" not in report.to_dict() and "## Confusion matrices" not in report.to_markdown()


def test_reliability_diagram_shows_the_cases_per_point(task, predictions) -> None:
    figure_cls = pytest.importorskip("matplotlib.figure").Figure
    from llama_index_lvlm_retriever.evaluation import clinical_plots

    report = evaluate_predictions({"rag": predictions["rag"]}, task, n_bootstrap=0)
    fig = figure_cls()
    clinical_plots._reliability(fig, report)
    ax = fig.axes[0]
    # rag's bins (module docstring): [0.3, 0.4) 1 case, [0.5, 0.6) 3 cases, [0.8, 0.9) 2 cases
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "3"]
    line = ax.get_lines()[1]  # after the diagonal
    np.testing.assert_allclose(line.get_xdata(), [1.1 / 3, 1.6333333 / 3, 0.8], atol=1e-6)
    np.testing.assert_allclose(line.get_ydata(), [1.0, 2 / 3, 0.5])
