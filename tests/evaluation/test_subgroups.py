"""Subgroup metrics on the shared fixture (conftest.py): rag is right on c1, c2, c4, c6, wrong on c3, c5."""

from __future__ import annotations

import pytest

from llama_index_lvlm_retriever.evaluation.predictions import evaluate_predictions
from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport
from llama_index_lvlm_retriever.evaluation.subgroups import (
    MISSING_GROUP,
    case_groups,
    subgroup_estimates,
)


def test_case_groups_and_missing_values() -> None:
    meta = {"c1": {"site": "north"}, "c2": {"site": 2}, "c3": {}, "c4": {"site": None}}
    assert case_groups(meta, "site") == {"c1": "north", "c2": "2", "c3": MISSING_GROUP, "c4": MISSING_GROUP}
    with pytest.raises(ValueError, match=r"no case has the metadata field 'scanner'; fields in the cases: \['site'\]"):
        case_groups(meta, "scanner")


def test_subgroup_metrics_by_hand(task, predictions) -> None:
    report = evaluate_predictions(predictions, task, baseline="rag", n_bootstrap=100, seed=0)
    # north: c1 (A, right), c2 (B, right), c3 (gold C, predicted B: wrong); south: c4 right, c5 wrong, c6 right
    groups = {"c1": "north", "c2": "north", "c3": "north", "c4": "south", "c5": "south", "c6": "south"}
    out = subgroup_estimates(report.rows["rag"], groups, report.labels, n_bootstrap=100, seed=0)
    assert list(out) == ["north", "south"]
    assert out["north"]["n"].value == 3 and out["north"]["accuracy"].value == pytest.approx(2 / 3)
    # north sensitivities: A 1/1, B 1/1, C 0/1 -> balanced accuracy 2/3
    assert (out["north"]["sensitivity_A"].value, out["north"]["sensitivity_C"].value) == (1.0, 0.0)
    assert out["north"]["balanced_accuracy"].value == pytest.approx(2 / 3)
    # south: A 1/1 (c4), B 0/1 (c5 -> C), C 1/1 (c6)
    assert out["south"]["sensitivity_B"].value == 0.0 and out["south"]["balanced_accuracy"].value == pytest.approx(2 / 3)
    assert out["south"]["accuracy"].ci_low <= 2 / 3 <= out["south"]["accuracy"].ci_high
    with pytest.raises(KeyError, match=r"cases \['c6'\] have no group value"):
        subgroup_estimates(report.rows["rag"], {k: v for k, v in groups.items() if k != "c6"}, report.labels)

    report.subgroups["site"] = {"rag": out}
    text = report.to_markdown()
    assert "## Subgroups by `site`" in text and "| north | 3 | 0.667 [" in text
    again = ConsistencyReport.from_dict(report.to_dict())
    assert again.subgroups["site"]["rag"]["south"]["sensitivity_B"].value == 0.0
