"""Every metric of evaluate_predictions on the hand-written fixture (see conftest.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llama_index_lvlm_retriever.evaluation.predictions import evaluate_predictions
from llama_index_lvlm_retriever.evaluation.records import CasePrediction

LN3 = math.log(3.0)
H_2_1 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))  # entropy of vote shares (2/3, 1/3)
RA_ROW = [0.8, 0.1, 0.1]


def _value(report, system: str, metric: str) -> float:
    return report.estimate(system, metric).value


def test_rag_rows_by_hand(task, predictions) -> None:
    report = evaluate_predictions(predictions, task, n_bootstrap=0)
    rows = {row.case_id: row for row in report.rows["rag"]}
    # c1: mean of rA, rA, rB = (1.7, 1.0, 0.3) / 3 -> A; votes A A B
    assert rows["c1"].prediction == ("A",) and rows["c1"].correct
    np.testing.assert_allclose(rows["c1"].distribution, [1.7 / 3, 1.0 / 3, 0.3 / 3])
    assert rows["c1"].probability == pytest.approx(1.7 / 3)
    assert rows["c1"].neighbour_predictions == (("A",), ("A",), ("B",))
    assert rows["c1"].neighbour_correct == (True, True, False)
    assert rows["c1"].vote_entropy == pytest.approx(H_2_1 / LN3)
    # c2: the 1-1 vote tie goes to B (summed A = 0.85 < B = 1.0); mean (0.425, 0.5, 0.075) -> B
    assert rows["c2"].majority == ("B",)
    assert (rows["c2"].agreement, rows["c2"].vote_entropy, rows["c2"].prediction) == (0.5, 1.0, ("B",))
    # c3: one neighbour -> consistent, agreement 1, entropy 0
    assert (rows["c3"].consistent, rows["c3"].agreement, rows["c3"].vote_entropy, rows["c3"].k) == (True, 1.0, 0.0, 1)
    # c6: 1-1-1 tie -> C by summed probability (1.1 vs 0.95, 0.95); 3 distinct answers
    assert rows["c6"].majority == ("C",) and rows["c6"].n_distinct == 3
    assert rows["c6"].agreement == pytest.approx(1 / 3)


def test_rag_metrics_by_hand(task, predictions) -> None:
    report = evaluate_predictions(predictions, task, n_bootstrap=0)
    # correct: c1 c2 c4 c6 -> 4/6
    assert _value(report, "rag", "accuracy") == pytest.approx(4 / 6)
    # predictions A B B A C C vs gold A B C A B C: F1(A) = 1, F1(B) = 2/(2+1+1), F1(C) = 2/(2+1+1)
    assert _value(report, "rag", "f1_A") == pytest.approx(1.0)
    assert _value(report, "rag", "f1_B") == pytest.approx(0.5)
    assert _value(report, "rag", "f1_C") == pytest.approx(0.5)
    assert _value(report, "rag", "macro_f1") == pytest.approx(2 / 3)
    # AUROC: A 4/4 pairs = 1; B: c2 beats 3 of 4 negatives, c5 ties c1 and beats 2 -> 5.5/8;
    # C: c3 (0.05) beats none, c6 (0.367) beats 3 -> 3/8; macro (1 + 0.6875 + 0.375) / 3
    assert _value(report, "rag", "auroc") == pytest.approx((1 + 0.6875 + 0.375) / 3)
    # inconsistent: c1 c2 c5 c6
    assert _value(report, "rag", "inconsistent_rate") == pytest.approx(4 / 6)
    assert _value(report, "rag", "accuracy_consistent") == pytest.approx(1 / 2)  # c3 wrong, c4 right
    assert _value(report, "rag", "accuracy_inconsistent") == pytest.approx(3 / 4)  # c5 wrong
    # agreement (2/3 + 1/2 + 1 + 1 + 2/3 + 1/3) / 6 = 25/36
    assert _value(report, "rag", "agreement") == pytest.approx(25 / 36)
    # entropy (0.5794 + 1 + 0 + 0 + 0.5794 + 1) / 6, with 0.5794 = H(2/3, 1/3) / ln 3
    assert _value(report, "rag", "vote_entropy") == pytest.approx((2 * H_2_1 / LN3 + 2) / 6)
    assert _value(report, "rag", "n_distinct") == pytest.approx((2 + 2 + 1 + 1 + 2 + 3) / 6)
    # oracle: all but c3 -> 5/6; all-correct: c4 only -> 1/6; gap 5/6 - 4/6
    assert _value(report, "rag", "oracle") == pytest.approx(5 / 6)
    assert _value(report, "rag", "all_correct") == pytest.approx(1 / 6)
    assert _value(report, "rag", "oracle_gap") == pytest.approx(1 / 6)
    # label precision over c1..c5 (c6 unlabelled): (2/3 + 1/2 + 0 + 2/2 + 1/3) / 5; recall 4/5
    assert _value(report, "rag", "label_precision") == pytest.approx(0.5)
    assert _value(report, "rag", "label_recall") == pytest.approx(0.8)
    # AURC: agreement groups 1 {c3 x, c4}, 2/3 {c1, c5 x}, 1/2 {c2}, 1/3 {c6};
    # expected errors E_i = .5, 1, 1.5, 2, 2, 2 -> mean of E_i / i = (4 * 0.5 + 0.4 + 1/3) / 6
    assert _value(report, "rag", "aurc") == pytest.approx((2.0 + 0.4 + 1 / 3) / 6)
    # disagreement AUROC: wrong c3 (0) and c5 (1/3) vs right c1 1/3, c2 1/2, c4 0, c6 2/3:
    # c3: tie with c4 = 0.5; c5: tie with c1 + beats c4 = 1.5 -> 2 / 8
    assert _value(report, "rag", "disagreement_auroc") == pytest.approx(0.25)
    curve = report.curves["rag"]
    np.testing.assert_allclose(curve["threshold"], [1.0, 2 / 3, 1 / 2, 1 / 3])
    np.testing.assert_allclose(curve["coverage"], [2 / 6, 4 / 6, 5 / 6, 1.0])
    np.testing.assert_allclose(curve["risk"], [1 / 2, 2 / 4, 2 / 5, 2 / 6])


def test_all_consistent_system(task, predictions) -> None:
    report = evaluate_predictions(predictions, task, n_bootstrap=0)
    # aware: every case consistent, only c5 wrong
    assert _value(report, "aware", "accuracy") == pytest.approx(5 / 6)
    assert _value(report, "aware", "inconsistent_rate") == 0.0
    assert _value(report, "aware", "accuracy_consistent") == pytest.approx(5 / 6)
    assert math.isnan(_value(report, "aware", "accuracy_inconsistent"))  # empty subset
    assert (_value(report, "aware", "agreement"), _value(report, "aware", "vote_entropy")) == (1.0, 0.0)
    assert _value(report, "aware", "oracle") == _value(report, "aware", "all_correct") == pytest.approx(5 / 6)
    assert _value(report, "aware", "oracle_gap") == pytest.approx(0.0)
    # one confidence group: E_i = i / 6 -> AURC = error rate 1/6; all-tied detector -> 0.5
    assert _value(report, "aware", "aurc") == pytest.approx(1 / 6)
    assert _value(report, "aware", "disagreement_auroc") == pytest.approx(0.5)
    assert math.isnan(_value(report, "aware", "label_precision"))  # no labelled neighbours
    assert _value(report, "closed-book", "accuracy") == pytest.approx(3 / 6)


def test_sklearn_agrees_on_f1_and_auroc(task, predictions) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    report = evaluate_predictions(predictions, task, n_bootstrap=0)
    rows = report.rows["rag"]
    gold = [r.gold[0] for r in rows]
    pred = [r.prediction[0] for r in rows]
    probs = np.array([r.distribution for r in rows])
    assert _value(report, "rag", "macro_f1") == pytest.approx(metrics.f1_score(gold, pred, average="macro"))
    expected = metrics.roc_auc_score(gold, probs, multi_class="ovr", average="macro", labels=list(task.labels))
    assert _value(report, "rag", "auroc") == pytest.approx(expected)


def test_comparisons_by_hand(task, predictions) -> None:
    report = evaluate_predictions(predictions, task, baseline="rag", n_bootstrap=200, seed=3)
    by_key = {(c.system, c.subset): c for c in report.comparisons}
    assert set(by_key) == {(s, sub) for s in ("closed-book", "aware") for sub in ("all", "consistent", "inconsistent")}
    # aware vs rag: aware right on c3 where rag is wrong, never the reverse
    overall = by_key[("aware", "all")]
    assert (overall.n_cases, overall.n_system_only, overall.n_baseline_only) == (6, 1, 0)
    assert overall.difference.value == pytest.approx(1 / 6)
    assert overall.p_value == 1.0  # 2 * C(1, 0) / 2^1
    # subsets by rag's consistency: consistent {c3, c4}, inconsistent {c1, c2, c5, c6}
    consistent = by_key[("aware", "consistent")]
    assert (consistent.n_cases, consistent.accuracy, consistent.baseline_accuracy) == (2, 1.0, 0.5)
    inconsistent = by_key[("aware", "inconsistent")]
    assert (inconsistent.n_cases, inconsistent.difference.value) == (4, 0.0)
    # closed-book vs rag: b = {c3, c5}, c = {c2, c4, c6}: p = 2 * (1 + 5 + 10) / 32 = 1
    cb = by_key[("closed-book", "all")]
    assert (cb.n_system_only, cb.n_baseline_only, cb.p_value) == (2, 3, 1.0)
    assert cb.difference.value == pytest.approx(-1 / 6)
    assert cb.difference.ci_low <= cb.difference.value <= cb.difference.ci_high
    assert report.baseline == "rag"


def test_default_baseline_is_first_system(task, predictions) -> None:
    report = evaluate_predictions(predictions, task, n_bootstrap=0)
    assert report.baseline == "closed-book"
    assert {c.system for c in report.comparisons} == {"rag", "aware"}
    single = evaluate_predictions({"rag": predictions["rag"]}, task, n_bootstrap=0)
    assert single.comparisons == () and single.baseline is None


def test_multi_label_metrics_by_hand(multi_label_predictions) -> None:
    task, preds = multi_label_predictions
    report = evaluate_predictions(preds, task, n_bootstrap=0)
    rows = {row.case_id: row for row in report.rows["ml"]}
    # m1: mean (0.8, 0.3) -> {x}; P({x}) = 0.8 * (1 - 0.3)
    assert rows["m1"].prediction == ("x",) and rows["m1"].correct
    assert rows["m1"].probability == pytest.approx(0.56)
    # m2: rows -> {x, y} and {x}: inconsistent; mean (0.7, 0.45) -> {x}, wrong; oracle via row 0
    assert (rows["m2"].consistent, rows["m2"].correct, rows["m2"].neighbour_correct) == (False, False, (True, False))
    # m3: gold {} and prediction {} -> exact match
    assert rows["m3"].prediction == () and rows["m3"].correct
    assert _value(report, "ml", "accuracy") == pytest.approx(2 / 3)
    # F1(x): tp 2 -> 1; F1(y): tp 0, fn 1 -> 0; macro 0.5
    assert (_value(report, "ml", "f1_x"), _value(report, "ml", "f1_y")) == (1.0, 0.0)
    assert _value(report, "ml", "macro_f1") == pytest.approx(0.5)
    # AUROC x: positives 0.8, 0.7 vs negative 0.2 -> 1; y: 0.45 vs 0.3, 0.1 -> 1
    assert _value(report, "ml", "auroc") == pytest.approx(1.0)
    assert _value(report, "ml", "inconsistent_rate") == pytest.approx(1 / 3)
    assert _value(report, "ml", "oracle") == pytest.approx(1.0)


def test_method_changes_the_answer(task, predictions) -> None:
    # c6 of "rag" under majority: 1-1-1 vote tie -> C by summed probability, shares 1/3 each
    report = evaluate_predictions(predictions, task, method="majority", n_bootstrap=0)
    c6 = next(r for r in report.rows["rag"] if r.case_id == "c6")
    assert c6.prediction == ("C",)
    assert c6.distribution[2] == pytest.approx(1 / 3, abs=1e-5)
    assert report.settings["method"] == "majority"


# --------------------------------------------------------------------------- bad input


def test_rejects_labels_outside_the_task(task, predictions) -> None:
    predictions["rag"][0] = CasePrediction("c1", ("D",), np.array([RA_ROW]))
    with pytest.raises(ValueError, match=r"case 'c1' of system 'rag' has gold label\(s\) \['D'\] outside"):
        evaluate_predictions(predictions, task, n_bootstrap=0)


def test_rejects_several_gold_labels_for_single_label(task, predictions) -> None:
    predictions["rag"][0] = CasePrediction("c1", ("A", "B"), np.array([RA_ROW]))
    with pytest.raises(ValueError, match="has 2 gold labels .* needs exactly one"):
        evaluate_predictions(predictions, task, n_bootstrap=0)


def test_rejects_empty_inputs(task, predictions) -> None:
    with pytest.raises(ValueError, match="system 'rag' has no cases"):
        evaluate_predictions({"rag": []}, task)
    with pytest.raises(ValueError, match="no systems to evaluate"):
        evaluate_predictions({}, task)


def test_rejects_different_case_sets(task, predictions) -> None:
    predictions["aware"] = predictions["aware"][:-1] + [CasePrediction("c9", ("A",), np.array([RA_ROW]))]
    with pytest.raises(ValueError, match=r"system 'aware' was evaluated on different cases than 'closed-book': "
                       r"missing \['c6'\], extra \['c9'\]"):
        evaluate_predictions(predictions, task)


def test_rejects_duplicates_and_conflicting_gold(task, predictions) -> None:
    dup = {"rag": predictions["rag"] + [predictions["rag"][0]]}
    with pytest.raises(ValueError, match=r"duplicate case ids \['c1'\]"):
        evaluate_predictions(dup, task)
    predictions["aware"][0] = CasePrediction("c1", ("B",), np.array([RA_ROW]))
    with pytest.raises(ValueError, match="case 'c1' has gold \\['A'\\] under 'closed-book' but \\['B'\\] under 'aware'"):
        evaluate_predictions(predictions, task, n_bootstrap=0)


def test_rejects_bad_shapes_and_settings(task, predictions) -> None:
    predictions["rag"][1] = CasePrediction("c2", ("B",), np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"case 'c2' of system 'rag': distributions must have shape \(k >= 1, 3 labels\)"):
        evaluate_predictions(predictions, task, n_bootstrap=0)
    ok = {"x": [CasePrediction("c1", ("A",), np.array([RA_ROW]), neighbour_ids=("a", "b"))]}
    with pytest.raises(ValueError, match="neighbour_ids has 2 entries for 1 neighbours"):
        evaluate_predictions(ok, task, n_bootstrap=0)
    good = {"x": [CasePrediction("c1", ("A",), np.array([RA_ROW]))]}
    with pytest.raises(ValueError, match="baseline 'y' is not one of the systems"):
        evaluate_predictions(good, task, baseline="y")
    with pytest.raises(ValueError, match="unknown aggregation method 'mean'"):
        evaluate_predictions(good, task, method="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got -1"):
        evaluate_predictions(good, task, temperature=-1)
    with pytest.raises(ValueError, match="confidence must be in"):
        evaluate_predictions(good, task, confidence=95)
    with pytest.raises(ValueError, match="repeat \\['A'\\]"):
        evaluate_predictions(good, type(task)(("A", "A", "B")))
