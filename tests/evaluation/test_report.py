"""ConsistencyReport outputs: flat metrics, JSON round trip, Markdown tables, PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from llama_index_lvlm_retriever.evaluation.predictions import evaluate_predictions
from llama_index_lvlm_retriever.evaluation.records import CaseResult
from llama_index_lvlm_retriever.evaluation.report import (
    ConsistencyReport,
    metric_prefix,
    write_report,
)
from llama_index_lvlm_retriever.schemas import load_schema


@pytest.fixture
def report(task, predictions) -> ConsistencyReport:
    return evaluate_predictions(predictions, task, baseline="rag", n_bootstrap=100, seed=0, settings={"k": 3})


def test_flat_metrics_keys(report) -> None:
    flat = report.metrics("rag")
    assert flat["rag_accuracy"] == pytest.approx(4 / 6)
    assert flat["rag_oracle@3"] == pytest.approx(5 / 6)  # rag's largest k is 3
    assert flat["rag_label_precision@3"] == pytest.approx(0.5)
    assert flat["rag_accuracy_ci_low"] <= flat["rag_accuracy"] <= flat["rag_accuracy_ci_high"]
    assert all(isinstance(v, float) and not math.isnan(v) for v in flat.values())
    aware = report.metrics("aware")
    assert "aware_accuracy_inconsistent" not in aware  # undefined: no inconsistent case
    cb = report.metrics("closed-book")
    assert "closed_book_oracle@1" in cb
    everything = report.all_metrics()
    assert everything["aware_vs_rag_all_accuracy_difference"] == pytest.approx(1 / 6)
    assert everything["aware_vs_rag_all_mcnemar_p"] == 1.0
    assert (report.primary_metric, report.greater_is_better) == ("accuracy", True)
    assert metric_prefix("LVLM-aware (ours)") == "lvlm_aware_ours"
    with pytest.raises(KeyError, match="unknown system 'nope'"):
        report.metrics("nope")
    with pytest.raises(KeyError, match="unknown metric 'accuracy@5'"):
        report.estimate("rag", "accuracy@5")


def test_compare_any_two_systems(report) -> None:
    # closed-book vs aware, subsets by aware's consistency (all consistent -> inconsistent is empty)
    comparisons = report.compare("closed-book", "aware", n_bootstrap=50)
    by_subset = {c.subset: c for c in comparisons}
    # closed-book right on c1 c3 c5, aware right on all but c5: b = {c5}, c = {c2, c4, c6}
    assert (by_subset["all"].n_system_only, by_subset["all"].n_baseline_only) == (1, 3)
    assert by_subset["all"].p_value == pytest.approx(2 * (1 + 4) / 16)
    assert by_subset["inconsistent"].n_cases == 0 and math.isnan(by_subset["inconsistent"].accuracy)


def test_json_round_trip(report, tmp_path: Path) -> None:
    path = report.to_json(tmp_path / "sub" / "report.json")
    loaded = ConsistencyReport.from_json(path)
    assert loaded.to_dict() == report.to_dict()
    assert loaded.rows == report.rows
    assert loaded.metrics("rag") == report.metrics("rag")
    record = json.loads(path.read_text())  # strict JSON: NaN was written as null
    assert record["metrics"]["aware"]["accuracy_inconsistent"]["value"] is None
    assert len(record["rows"]["rag"]) == 6
    assert record["rows"]["rag"][1]["neighbour_kb_ids"] == ["c2-n0", "c2-n1"]
    assert not list(path.parent.glob(".*tmp"))  # no temp file left behind
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the test extra) checks the output schema")
    for rows in record["rows"].values():
        for row in rows:
            jsonschema.validate(row, load_schema("evaluation_row"))


def test_rows_written_before_the_vocabulary_was_unified_still_load(report) -> None:
    # report.json files of earlier versions name the answer "prediction" and the neighbours' ids,
    # KB labels and scores "neighbour_ids", "neighbour_labels", "retrieval_scores".
    row = report.rows["rag"][1]
    renames = {"answer": "prediction", "neighbour_kb_ids": "neighbour_ids", "neighbour_kb_labels": "neighbour_labels",
               "neighbour_retrieval_scores": "retrieval_scores"}
    old = {renames.get(key, key): value for key, value in row.to_dict().items()}
    assert "prediction" in old and "answer" not in old
    assert CaseResult.from_dict(old) == row


def test_from_json_errors(tmp_path: Path, report) -> None:
    with pytest.raises(FileNotFoundError, match="no report at"):
        ConsistencyReport.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        ConsistencyReport.from_json(bad)
    record = report.to_dict()
    record["format_version"] = 99
    with pytest.raises(ValueError, match="report format version 99 is not supported"):
        ConsistencyReport.from_dict(record)


def test_markdown_has_one_row_per_system(report) -> None:
    text = report.to_markdown()
    main = text.split("## Accuracy and consistency")[1].split("##")[0]
    table = [line for line in main.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(report.systems)  # header, rule, one row per system
    assert [line.split("|")[1].strip() for line in table[2:]] == ["closed-book", "rag", "aware"]
    rag_row = table[3]
    assert "0.667 [" in rag_row  # accuracy 4/6 with its interval
    assert "| 3 |" in rag_row  # k
    assert "defined by the baseline system `rag`" in text
    assert "| aware | rag | all | 6 |" in text
    assert "## F1 per label" in text and "| A | B | C |" in text


def test_plots_are_valid_pngs(report, tmp_path: Path) -> None:
    paths = report.save_plots(tmp_path / "plots")
    assert [p.name for p in paths] == [
        "accuracy_by_consistency.png", "agreement_histogram.png", "risk_coverage.png", "reliability_diagram.png",
        *[f"confusion_{s}.png" for s in report.systems],
    ]
    for path in paths:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_write_report_writes_everything(report, tmp_path: Path) -> None:
    paths = write_report(report, tmp_path / "out")
    assert set(paths) == {
        "json", "markdown", "accuracy_by_consistency", "agreement_histogram", "risk_coverage", "reliability_diagram",
        *[f"confusion_{s}" for s in report.systems],
    }
    assert all(p.is_file() for p in paths.values())
    assert paths["markdown"].read_text() == report.to_markdown()
    assert ConsistencyReport.from_json(paths["json"]).to_dict() == report.to_dict()


def test_multi_label_report_round_trips(multi_label_predictions, tmp_path: Path) -> None:
    task, preds = multi_label_predictions
    report = evaluate_predictions(preds, task, n_bootstrap=20)
    loaded = ConsistencyReport.from_json(report.to_json(tmp_path / "ml.json"))
    assert loaded.multi_label and loaded.rows["ml"][2].prediction == ()
    assert "multi-label" in loaded.to_markdown()


def test_empty_subset_prints_no_p_value(task, predictions) -> None:
    # "aware" is consistent on every case, so as the baseline its inconsistent subset is empty:
    # no cases, no test; the table shows "-" (not p = 1.000) and the JSON null.
    report = evaluate_predictions(predictions, task, baseline="aware", n_bootstrap=20)
    empty = [c for c in report.comparisons if c.subset == "inconsistent"]
    assert empty and all(c.n_cases == 0 and math.isnan(c.p_value) for c in empty)
    rows = [line for line in report.to_markdown().splitlines() if "| inconsistent | 0 |" in line]
    assert rows and all(line.endswith("| 0 | 0 | - |") for line in rows)
    assert all(c["p_value"] is None for c in report.to_dict()["comparisons"] if c["n_cases"] == 0)
    loaded = ConsistencyReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert math.isnan([c for c in loaded.comparisons if c.subset == "inconsistent"][0].p_value)
    assert not any("inconsistent_mcnemar_p" in key for key in report.all_metrics())


def test_report_json_carries_provenance(report, tmp_path: Path) -> None:
    block = {"package": {"version": "x"}, "command": ["lvlm-retriever", "evaluate"]}
    paths = write_report(report, tmp_path / "out", provenance=block)
    record = json.loads(paths["json"].read_text())
    assert record["provenance"] == block
    assert ConsistencyReport.from_json(paths["json"]).to_dict() == report.to_dict()  # the reader ignores it
