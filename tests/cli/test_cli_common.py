"""Shared CLI helpers: --config defaults, resolved options, atomic JSON writes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from llama_index_lvlm_retriever.cli._common import (
    CLIError,
    add_config_option,
    apply_config_defaults,
    resolved_config,
    write_json_atomic,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kb", required=True)
    parser.add_argument("--top-k", type=int, default=2)
    add_config_option(parser)
    return parser


def test_config_values_become_defaults_and_satisfy_required(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"kb": "kb_dir", "top_k": 7}))
    parser = _parser()
    assert apply_config_defaults(parser, str(config)) == {"kb": "kb_dir", "top_k": 7}
    args = parser.parse_args([])
    assert (args.kb, args.top_k) == ("kb_dir", 7)
    assert parser.parse_args(["--top-k", "3"]).top_k == 3


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "config file not found"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"kb": "x", "topk": 1}', r"unknown option\(s\) \['topk'\]"),
    ],
)
def test_bad_config_files_raise(tmp_path: Path, content: str | None, match: str) -> None:
    config = tmp_path / "c.json"
    if content is not None:
        config.write_text(content)
    with pytest.raises(CLIError, match=match):
        apply_config_defaults(_parser(), str(config))


def test_resolved_config_drops_handlers_and_non_json_values() -> None:
    args = argparse.Namespace(kb="d", top_k=3, command="query", config="c.json", handler=print, path=Path("p"))
    assert resolved_config(args) == {"kb": "d", "top_k": 3}


def test_write_json_atomic_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    write_json_atomic(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_write_json_atomic_keeps_old_file_when_serialisation_fails(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text('{"old": true}')
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_unexpected_errors_are_one_line_unless_debug(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A library error the CLI does not know (e.g. faiss's RuntimeError on a truncated index) becomes one
    # line and exit code 1; --debug re-raises it with its traceback.
    from llama_index_lvlm_retriever import cli

    def boom(args: argparse.Namespace) -> int:
        raise RuntimeError("Error in faiss::FileIOReader: read error")

    parser, registry = cli.build_parser()
    registry["info"].set_defaults(handler=boom)
    monkeypatch.setattr(cli, "build_parser", lambda: (parser, registry))
    assert cli.main(["info", "--kb", "kb"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: RuntimeError: Error in faiss::FileIOReader: read error (run with --debug for the traceback)"
    with pytest.raises(RuntimeError, match="read error"):
        cli.main(["--debug", "info", "--kb", "kb"])


def test_building_the_parser_imports_no_torch_transformers_or_llama_index() -> None:
    # --help and --version only build the parser: the heavy libraries load when a command runs.
    import subprocess
    import sys

    code = (
        "import sys; from llama_index_lvlm_retriever.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'llama_index.core') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
