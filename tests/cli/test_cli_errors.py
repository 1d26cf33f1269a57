"""Every CLI error: exit 2 for usage, 1 for data, one ``error:`` line naming the flag or the file.

Also the global options after the subcommand and the quiet output (no third-party loader lines,
no bars with ``--no-progress``), run as a real process where stderr is what a user sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llama_index_lvlm_retriever.cli import build_parser, main
from llama_index_lvlm_retriever.errors import DataError
from llama_index_lvlm_retriever.testing import build_tiny_clip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four coloured images, a KB JSONL of them, a CSV without a ``text`` column, and a tiny CLIP."""
    folder = tmp_path_factory.mktemp("cli_errors")
    rows = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        pixels = np.zeros((24, 24, 3), dtype=np.uint8)
        pixels[:, :] = colour
        pixels[4 + i : 12 + i, 4:12] = 255  # a white square, shifted per image, so no two are identical
        Image.fromarray(pixels).save(folder / f"im{i}.png")
        rows.append({"id": f"i{i}", "image_path": f"im{i}.png", "text": f"caption {i}", "label": str(i % 2)})
    (folder / "kb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "kb.csv").write_text("image,caption\nim0.png,a red square\n")
    build_tiny_clip(folder / "clip")
    return folder


@pytest.fixture(scope="module")
def kb_dir(files: Path) -> Path:
    out = files / "kb"
    assert main(["build-kb", "--items", str(files / "kb.jsonl"), "--embed-model", str(files / "clip"),
                 "--out", str(out), "--no-progress"]) == 0
    return out


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return code, lines[0]


def test_diagnose_without_task_is_a_usage_error_naming_task(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A hub id (or any folder without reader_config.json) carries no task: the CLI asks for --task,
    # before loading any model, in CLI words (no "task=" / "get_task(...)").
    code, line = _error(capsys, ["diagnose", "--kb", str(files / "kb"), "--image", str(files / "im0.png"),
                                 "--reader", "org/some-lvlm"])
    assert code == 2
    assert "--task is required" in line and "--reader org/some-lvlm" in line
    assert "task=" not in line and "get_task" not in line


def test_missing_csv_column_names_the_flag_and_the_file(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, line = _error(capsys, ["build-kb", "--items", str(files / "kb.csv"), "--image-dir", str(files),
                                 "--embed-model", str(files / "clip"), "--out", str(files / "csv_kb")])
    assert code == 1  # the file lacks the column: a data error
    assert "kb.csv: no column 'text' (from --text-column)" in line
    assert "Pass --text-column with one of them" in line and "text_column=" not in line


def test_duplicate_add_and_missing_delete_are_both_data_errors(
    files: Path, kb_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, line = _error(capsys, ["kb", "add", "--kb", str(kb_dir), "--items", str(files / "kb.jsonl")])
    assert code == 1
    assert f"--items {files / 'kb.jsonl'}: 4 id(s) already in the KB" in line and "--upsert" in line
    code, line = _error(capsys, ["kb", "delete", "--kb", str(kb_dir), "--ids", "i0", "nope"])
    assert code == 1
    assert line.startswith("error: --ids:") and "'nope'" in line and "nothing was deleted" in line
    items = json.loads((kb_dir / "manifest.json").read_text())["count"]
    assert items == 4  # neither command changed the KB


def test_build_kb_refuses_an_existing_kb_unless_overwrite(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = files / "kb_overwrite"
    base = ["build-kb", "--items", str(files / "kb.jsonl"), "--embed-model", str(files / "clip"), "--no-progress"]
    assert main([*base, "--out", str(out)]) == 0
    assert main(["kb", "delete", "--kb", str(out), "--ids", "i3"]) == 0
    code, line = _error(capsys, [*base, "--out", str(out)])
    assert code == 2
    assert f"--out {out}: already holds a knowledge base; pass --overwrite" in line
    assert json.loads((out / "manifest.json").read_text())["count"] == 3  # left as it was
    assert main([*base, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["count"] == 4


@pytest.mark.parametrize(
    ("argv", "code", "named"),
    [
        (["query", "--kb", "KB", "--image", "IMG", "--k-image", "-1"], 2, "--k-image"),
        (["query", "--kb", "KB", "--image", "IMG", "--k-image", "0", "--k-text", "0"], 2, "--k-image and --k-text"),
        (["diagnose", "--kb", "KB", "--image", "IMG", "--reader", "r", "--min-support", "0"], 2, "--min-support"),
        (["diagnose", "--kb", "KB", "--image", "missing.png", "--reader", "r", "--task", "elpv"], 2, "--image missing.png"),
        (["predict", "--kb", "KB", "--reader", "r", "--out", "o"], 2, "--images FOLDER, --dicom-dir DIR, --cases FILE"),
        (["predict", "--kb", "KB", "--reader", "r", "--out", "o", "--cases", "missing.jsonl"], 2, "--cases missing.jsonl"),
        (["build-kb", "--items", "KB/x.tsv", "--embed-model", "m", "--out", "o"], 2, "--items KB/x.tsv"),
        (["build-kb", "--items", "KB/x.csv", "--embed-model", "m", "--out", "o"], 2, "needs --image-dir"),
        (["kb", "add", "--kb", "KB", "--items", "KB/x.jsonl", "--upsert", "--skip-bad"], 2, "--skip-bad"),
        (["demo", "--dataset", "dermamnist"], 2, "--embed-model"),
    ],
)
def test_usage_errors_exit_2_naming_the_flag(
    files: Path, kb_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, named: str
) -> None:
    argv = [str(files / "im0.png") if a == "IMG" else a.replace("KB", str(kb_dir)) for a in argv]
    got, line = _error(capsys, argv)
    assert got == code
    assert named.replace("KB", str(kb_dir)) in line


def test_argparse_usage_errors_exit_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["query", "--image", "x.png"])
    assert info.value.code == 2
    assert "the following arguments are required: --kb" in capsys.readouterr().err


def test_missing_kb_folder_is_a_data_error_naming_the_folder(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, line = _error(capsys, ["info", "--kb", str(files / "no_such_kb")])
    assert code == 1
    assert str(files / "no_such_kb") in line


def test_global_options_work_after_the_subcommand(files: Path, kb_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser, _ = build_parser()
    after = parser.parse_args(["kb", "delete", "--kb", "k", "--ids", "a", "--debug", "--quiet", "-v"])
    assert (after.debug, after.quiet, after.verbose) == (True, True, True)
    before = parser.parse_args(["--debug", "info", "--kb", "k"])
    assert (before.debug, before.quiet, before.verbose) == (True, False, False)  # not reset by the subcommand
    # --debug after the subcommand re-raises with the traceback instead of one line.
    with pytest.raises(DataError, match="--ids: no knowledge-base item with id 'nope'"):
        main(["kb", "delete", "--kb", str(kb_dir), "--ids", "nope", "--debug"])
    capsys.readouterr()
    assert main(["query", "--kb", str(kb_dir), "--image", str(files / "im1.png"), "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["kb_id"] == "i1"


def _run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    code = "import sys; from llama_index_lvlm_retriever.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_loader_noise_only_with_verbose_and_no_bars_with_no_progress(files: Path, tmp_path: Path) -> None:
    base = ["build-kb", "--items", str(files / "kb.jsonl"), "--embed-model", str(files / "clip")]
    plain = _run_cli(*base, "--out", str(tmp_path / "a"), "--no-progress", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "faiss.loader" not in plain.stderr and "ModuleNotFoundError" not in plain.stderr
    assert "Loading weights" not in plain.stderr and "it/s]" not in plain.stderr and "%|" not in plain.stderr
    assert "built 4 items" in plain.stdout
    bars = _run_cli(*base, "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert "Embedding knowledge base" in bars.stderr  # our own bar stays without --no-progress
    assert "Loading weights" not in bars.stderr  # the loader's does not
    # info loads faiss too, without a model: a cheap run for the log levels.
    verbose = _run_cli("info", "--kb", str(tmp_path / "a"), "-v", cwd=tmp_path)
    assert "faiss.loader" in verbose.stderr  # the debug log keeps it
    quiet = _run_cli("info", "--kb", str(tmp_path / "a"), "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.startswith(f"knowledge base: {tmp_path / 'a'}\nitems: 4")


def test_milvus_build_prints_no_grpc_tracebacks(files: Path, tmp_path: Path) -> None:
    pytest.importorskip("milvus_lite", reason="the milvus extra (Milvus Lite) is not installed")
    run = _run_cli("build-kb", "--items", str(files / "kb.jsonl"), "--embed-model", str(files / "clip"),
                   "--out", str(tmp_path / "kb"), "--backend", "milvus", "--no-progress", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "grpc" not in run.stderr and "Traceback" not in run.stderr
    assert "built 4 items" in run.stdout


def test_library_keyword_names_become_the_commands_flags(capsys: pytest.CaptureFixture[str]) -> None:
    # A library error in Python words ("pass cases=") reaches the user in the command's words.
    from llama_index_lvlm_retriever import cli
    from llama_index_lvlm_retriever.cli._common import cli_wording, option_names
    from llama_index_lvlm_retriever.errors import UsageError

    parser, registry = cli.build_parser()
    flags = option_names(registry["train-retriever"])
    assert flags["validation_cases"] == "--validation-cases" and "config" not in flags
    assert cli_wording("> 1 needs reader= and cases=, or set rounds=1", flags) == (
        "> 1 needs --reader and --cases, or set --rounds 1"
    )
    assert option_names(registry["kb"])["ids"] == "--ids"  # nested subcommands (kb delete) too

    def library_error(args: object) -> int:
        raise UsageError("pass either config= or keyword settings; set k_text=0 and min_support=0.5")

    registry["diagnose"].set_defaults(handler=library_error)
    original = cli.build_parser
    cli.build_parser = lambda: (parser, registry)
    try:
        code = cli.main(["diagnose", "--kb", "k", "--image", "i", "--reader", "r"])
    finally:
        cli.build_parser = original
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: pass either config= or keyword settings; set --k-text 0 and --min-support 0.5"
    )
