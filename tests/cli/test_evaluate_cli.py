"""The ``evaluate`` subcommand: systems from heads folders, report files, bad inputs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from llama_index_lvlm_retriever.cli import evaluate
from llama_index_lvlm_retriever.cli._common import CLIError
from llama_index_lvlm_retriever.cli._loading import load_cases, load_task
from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport
from llama_index_lvlm_retriever.heads import QueryHead

REPO = Path(__file__).resolve().parents[2]


def _recipe_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_offline_recipe", REPO / "training" / "run_offline_recipe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def _identity_heads(folder: Path, dim: int) -> Path:
    for name in ("image_head", "text_head"):
        QueryHead.identity(dim).save_pretrained(folder / name)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    recipe = _recipe_module()
    root = recipe.prepare_workdir(tmp_path_factory.mktemp("eval-cli"), n_kb=16, n_train=2, n_test=8)
    recipe.run_command(
        "build-kb",
        {"items": str(root / "data" / "kb.jsonl"), "embed_model": str(root / "models" / "clip"), "out": str(root / "kb"), "no_progress": True},
        root / "build.json",
    )
    return {"root": root, "identity": _identity_heads(root / "identity-heads", 16)}


def test_evaluate_writes_a_report_with_every_system(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    root: Path = world["root"]
    out = root / "eval"
    args = _parse([
        "evaluate", "--kb", str(root / "kb"), "--cases", str(root / "data" / "test.jsonl"),
        "--reader", str(root / "models" / "reader"), "--task", str(root / "data" / "task.json"),
        "--system", f"copy={world['identity']}", "--k-image", "2", "--k-text", "1", "--bootstrap", "20", "--seed", "3",
        "--out", str(out), "--no-progress",
    ])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "| standard RAG | 3 |" in printed and "| copy | 3 |" in printed and "| closed-book | 1 |" in printed

    report = ConsistencyReport.from_json(out / "report.json")
    assert set(report.systems) == {"closed-book", "standard RAG", "copy"}
    assert report.n_cases == 8 and report.baseline == "standard RAG"
    for system in report.systems:
        for name in ("accuracy", "macro_f1", "agreement", "inconsistent_rate"):
            value = report.estimate(system, name).value
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (system, name, value)
    # Identity heads saved to a folder are standard RAG: same neighbours, so the same predictions.
    for name in ("accuracy", "agreement", "label_precision"):
        assert report.estimate("copy", name).value == report.estimate("standard RAG", name).value
    assert report.settings["n_bootstrap"] == 20 and report.settings["seed"] == 3
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", evaluate.EVAL_CONFIG_FILE}
    config = json.loads((out / evaluate.EVAL_CONFIG_FILE).read_text())
    assert (config["k_image"], config["k_text"]) == (2, 1) and config["system"] == [f"copy={world['identity']}"]
    provenance = json.loads((out / "report.json").read_text())["provenance"]
    assert provenance["inputs"]["cases"]["sha256"] and provenance["options"]["k_text"] == 1
    assert provenance["models"]["reader"]["fingerprint"] and provenance["models"]["knowledge_base"]["n_items"] > 0
    assert set(provenance["models"]["systems"]) == {"standard RAG", "copy"} and provenance["ended_at"]


def test_evaluate_writes_a_viewer_per_system_and_an_absolute_config(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root: Path = world["root"]
    monkeypatch.chdir(root)  # relative paths on the command line: the record must make them absolute
    args = _parse([
        "evaluate", "--kb", "kb", "--cases", "data/test.jsonl", "--reader", "models/reader", "--task", "data/task.json",
        "--system", f"copy={world['identity'].relative_to(root)}", "--bootstrap", "10", "--out", "eval-viewer",
        "--no-progress", "--viewer-images", "copy",
    ])
    assert args.handler(args) == 0
    out = root / "eval-viewer"
    printed = capsys.readouterr().out
    cases = load_cases(str(root / "data" / "test.jsonl"))
    report = ConsistencyReport.from_json(out / "report.json")
    for system, file_name in (("standard RAG", "evidence_standard_RAG.html"), ("copy", "evidence_copy.html")):
        assert evaluate.viewer_file_name(system) == file_name and f"-> eval-viewer/{file_name}" in printed
        page = (out / file_name).read_text(encoding="utf-8")
        # One card per case, each with its gold label and correctness, and the correctness filter enabled.
        assert page.count('<article class="case"') == len(cases) == 8
        for case in cases:
            assert f'<h2 title="{case.id}">' in page
        rows = {row.case_id: row for row in report.rows[system]}
        n_right = sum(row.correct for row in rows.values())
        flags = re.findall(r'<article class="case"[^>]* data-correct="([01]?)"', page)
        assert flags.count("1") == n_right and flags.count("0") == 8 - n_right
        assert '<option value="correct">' in page and "<dt>gold</dt>" in page
        assert page.count('class="neighbour"') == sum(len(row.neighbour_ids) for row in rows.values())
        assert (out / f"{Path(file_name).stem}_files").is_dir()  # --viewer-images copy: thumbnails beside it
    assert not (out / "evidence_closed-book.html").exists()  # no retrieval, no evidence to show

    config = json.loads((out / evaluate.EVAL_CONFIG_FILE).read_text())
    for key in ("kb", "cases", "reader", "task", "out"):
        assert Path(config[key]).is_absolute() and Path(config[key]).exists(), key
    assert config["system"] == [f"copy={world['identity']}"]
    assert config["aggregation"] == "weighted" and config["exclude_self"] is True
    provenance = config["provenance"]
    assert provenance["inputs"]["kb"]["path"] == str(root / "kb") and provenance["inputs"]["cases"]["sha256"]
    assert provenance["models"]["reader"]["fingerprint"] and provenance["started_at"] <= provenance["ended_at"]


def test_no_viewer_writes_none(world: dict[str, Any], tmp_path: Path) -> None:
    root: Path = world["root"]
    args = _parse([
        "evaluate", "--kb", str(root / "kb"), "--cases", str(root / "data" / "test.jsonl"), "--reader",
        str(root / "models" / "reader"), "--task", str(root / "data" / "task.json"), "--bootstrap", "10",
        "--no-closed-book", "--out", str(tmp_path), "--no-progress", "--no-viewer",
    ])
    assert args.handler(args) == 0
    assert not list(tmp_path.glob("evidence*"))


def test_system_options_can_drop_the_defaults(world: dict[str, Any]) -> None:
    root: Path = world["root"]
    args = _parse([
        "evaluate", "--kb", str(root / "kb"), "--cases", str(root / "data" / "test.jsonl"),
        "--reader", str(root / "models" / "reader"), "--task", str(root / "data" / "task.json"),
        "--system", f"only={world['identity']}", "--no-standard", "--no-closed-book", "--bootstrap", "5",
        "--out", str(root / "eval-only"), "--no-progress",
    ])
    assert args.handler(args) == 0
    assert ConsistencyReport.from_json(root / "eval-only" / "report.json").systems == ("only",)


def test_parse_systems_reads_name_and_heads_folder(world: dict[str, Any]) -> None:
    systems = evaluate.parse_systems([f"a={world['identity']}", f" b ={world['identity']}"])
    assert list(systems) == ["a", "b"]
    assert systems["a"] == (world["identity"] / "image_head", world["identity"] / "text_head")


def test_bad_inputs_are_refused(world: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(CLIError, match="expected NAME=HEADS_DIR"):
        evaluate.parse_systems(["runs/heads"])
    with pytest.raises(CLIError, match="the name 'a' is used twice"):
        evaluate.parse_systems([f"a={world['identity']}", f"a={world['identity']}"])
    with pytest.raises(CLIError, match="'standard RAG' is used twice"):
        evaluate.parse_systems([f"standard RAG={world['identity']}"])
    (tmp_path / "image_head").mkdir()
    with pytest.raises(CLIError, match="no text_head/ inside; pass a folder written by train-retriever"):
        evaluate.parse_systems([f"x={tmp_path}"])
    with pytest.raises(CLIError, match="folder not found"):
        evaluate.parse_systems([f"x={tmp_path / 'missing'}"])
    args = _parse(["evaluate", "--kb", "kb", "--cases", "c.jsonl", "--reader", "r", "--k-image", "0", "--k-text", "0"])
    with pytest.raises(CLIError, match="--k-image and --k-text are both 0"):
        args.handler(args)
    args = _parse(["evaluate", "--kb", "kb", "--cases", "c.jsonl", "--reader", "r", "--no-standard"])
    with pytest.raises(CLIError, match="--no-standard leaves no retrieval system"):
        args.handler(args)
    with pytest.raises(CLIError, match="--task nope: unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(CLIError, match="--cases .*missing.jsonl: file not found"):
        load_cases(str(tmp_path / "missing.jsonl"))
    (tmp_path / "cases.csv").write_text("image,label\n")
    with pytest.raises(CLIError, match="expected a .jsonl file, got '.csv'"):
        load_cases(str(tmp_path / "cases.csv"))


def test_defaults_match_the_paper() -> None:
    args = _parse(["evaluate", "--kb", "kb", "--cases", "c.jsonl", "--reader", "r"])
    assert (args.k_image, args.k_text, args.head_fusion) == (2, 2, "max")  # the paper's 2 + 2, max-normalised
    assert (args.bootstrap, args.seed, args.aggregation, args.system) == (1000, 0, "weighted", [])


def test_clinical_metrics_subgroups_and_a_risk_controlled_threshold(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root: Path = world["root"]
    lines = (root / "data" / "test.jsonl").read_text().splitlines()
    cases_file = tmp_path / "cases.jsonl"  # the test cases with a site each: north for the first three
    cases_file.write_text("".join(
        json.dumps({**json.loads(line), "site": "north" if i < 3 else "south", "image_path": str(root / "data" / json.loads(line)["image_path"])}) + "\n"
        for i, line in enumerate(lines)
    ))
    out = tmp_path / "eval"
    args = _parse([
        "evaluate", "--kb", str(root / "kb"), "--cases", str(cases_file), "--reader", str(root / "models" / "reader"),
        "--task", str(root / "data" / "task.json"), "--bootstrap", "20", "--no-closed-book", "--out", str(out),
        "--no-progress", "--group-by", "site", "--target-risk", "0.9", "--risk-delta", "0.5",
    ])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "## Clinical metrics per class" in printed and "## Subgroups by `site`" in printed
    report = ConsistencyReport.from_json(out / "report.json")
    labels = report.labels
    for label in labels:
        for rate in ("sensitivity", "specificity", "ppv", "npv"):
            assert f"{rate}_{label}" in report.estimates["standard RAG"]
    assert math.isfinite(report.estimate("standard RAG", "ece").value)
    groups = report.subgroups["site"]["standard RAG"]
    assert (groups["north"]["n"].value, groups["south"]["n"].value) == (3, 5)
    # 8 cases, half for validation: 4 choose the threshold, 4 test it
    control = report.risk_control["standard RAG"]
    assert control["validation_cases"] == 4 and control["test_cases"] == 4 and control["target_risk"] == 0.9
    assert (out / "reliability_diagram.png").is_file() and (out / "confusion_standard_RAG.png").is_file()
    if control["threshold"] is not None:
        saved = json.loads((out / "threshold_standard_RAG.json").read_text())
        assert saved["min_support"] == control["threshold"] and saved["system"] == "standard RAG"
        assert f"target risk 0.9 (standard RAG): min_support {control['threshold']:.2f}, bound" in printed
        # the viewer marks abstentions at the chosen threshold
        page = (out / "evidence_standard_RAG.html").read_text(encoding="utf-8")
        rows = report.rows["standard RAG"]
        n_abstain = sum(row.support < control["threshold"] - 1e-12 for row in rows)
        assert len(re.findall(r'<article class="case"[^>]* data-abstain="1"', page)) == n_abstain
    else:
        assert "no min_support certified" in printed


def test_abstention_and_group_options_are_checked(world: dict[str, Any], tmp_path: Path) -> None:
    root: Path = world["root"]
    base = ["evaluate", "--kb", str(root / "kb"), "--cases", str(root / "data" / "test.jsonl"), "--reader",
            str(root / "models" / "reader"), "--task", str(root / "data" / "task.json"), "--out", str(tmp_path)]
    for extra, message in (
        (["--target-risk", "1.5"], r"--target-risk must be in \(0, 1\), e.g. 0.1; got 1.5"),
        (["--risk-delta", "0"], r"--risk-delta must be in \(0, 1\)"),
        (["--min-support", "0"], r"--min-support must be in \(0, 1\], got 0.0"),
        (["--validation-fraction", "1"], r"--validation-fraction must be in \(0, 1\)"),
        (["--validation-cases", "v.jsonl"], "--validation-cases is only used with --target-risk"),
        (["--group-by", "site"], "--group-by site: no case has the metadata field 'site'"),
    ):
        args = _parse([*base, *extra])
        with pytest.raises(CLIError, match=message):
            args.handler(args)
    assert evaluate.threshold_file_name("LVLM-aware RAG") == "threshold_LVLM-aware_RAG.json"


def test_target_risk_on_separate_validation_cases(world: dict[str, Any], tmp_path: Path) -> None:
    root: Path = world["root"]
    cases = str(root / "data" / "test.jsonl")
    args = _parse([
        "evaluate", "--kb", str(root / "kb"), "--cases", cases, "--reader", str(root / "models" / "reader"),
        "--task", str(root / "data" / "task.json"), "--bootstrap", "5", "--no-closed-book", "--out", str(tmp_path),
        "--no-progress", "--no-viewer", "--target-risk", "0.9", "--risk-delta", "0.5", "--validation-cases", cases,
    ])
    assert args.handler(args) == 0
    control = ConsistencyReport.from_json(tmp_path / "report.json").risk_control["standard RAG"]
    # Chosen on the 8 validation cases, tested on all 8 evaluated cases (the same file here).
    assert control["validation_cases"] == 8 and control["test_cases"] == 8
    if control["threshold"] is not None:
        assert control["test_risk"] == control["validation_risk"]  # same cases, same threshold, same risk
