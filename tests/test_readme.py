"""The README's claims match the code: its command lines, option names, file names and counts."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from llama_index_lvlm_retriever.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
# ``lvlm-retriever <words>`` up to the end of a code span, a line or a table cell; continuation
# lines (a trailing backslash) are joined first.
_COMMAND = re.compile(r"(?<![\w/-])lvlm-retriever\s+([^`\n|]+)")
_OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _command_lines(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [match.group(1).strip() for match in _COMMAND.finditer(joined)]


def _subcommand(parser: argparse.ArgumentParser, words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The deepest subcommand parser the leading words name (``kb add`` -> the ``add`` parser)."""
    path: list[str] = []
    for word in words:
        if word.startswith("-"):
            continue
        choices = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if choices is None or word not in choices:
            break
        parser = choices[word]
        path.append(word)
    return parser, path


def _help_has(help_text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text) is not None


def test_every_readme_command_line_uses_options_its_help_lists() -> None:
    parser, _ = build_parser()
    lines = _command_lines(_readme())
    assert len(lines) >= 25  # the README's examples were found (not a vacuous pass)
    problems = []
    for line in lines:
        words = line.replace("#", " ").split()
        sub, path = _subcommand(parser, words)
        if not path:
            problems.append(f"`lvlm-retriever {line}`: {words[0]!r} is not a subcommand")
            continue
        # --help only: a hidden deprecated alias (e.g. demo's --retriever-model) is drift too.
        help_text = sub.format_help() + parser.format_help()
        missing = sorted({o for o in _OPTION.findall(line) if not _help_has(help_text, o)})
        if missing:
            problems.append(f"`lvlm-retriever {line}`: {' '.join(path)} --help has no {missing}")
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_option_the_command_lacks() -> None:
    parser, _ = build_parser()
    sub, path = _subcommand(parser, "demo --dataset retinamnist --retriever-model x".split())
    assert path == ["demo"]
    assert not _help_has(sub.format_help(), "--retriever-model")  # the old spelling is hidden
    assert _help_has(sub.format_help(), "--embed-model")
    sub, path = _subcommand(parser, "kb delete --kb kb --ids a".split())
    assert path == ["kb", "delete"] and _help_has(sub.format_help(), "--ids")


def test_output_file_names_in_the_readme_are_the_ones_the_code_writes(tmp_path: Path) -> None:
    import torch

    from llama_index_lvlm_retriever.evaluation.predict import (
        EVIDENCE_HTML,
        PREDICTIONS_CSV,
        PREDICTIONS_JSONL,
        RUN_FILE,
    )
    from llama_index_lvlm_retriever.training._feedback_shards import write_shard

    text = _readme()
    for name in (PREDICTIONS_JSONL, PREDICTIONS_CSV, EVIDENCE_HTML, RUN_FILE):
        assert f"`{name}`" in text, name
    # The shard names the README gives for collect-feedback are the files a shard write leaves.
    write_shard(tmp_path, 0, {"x": torch.zeros(2)}, fingerprint="f", case_ids=["a"], candidate_ids={"image": [["k"]]})
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["shard-00000.json", "shard-00000.safetensors"]
    for name in written:
        assert f"`{name}`" in text, name
    assert "testing.py" not in text  # a package now: llama_index_lvlm_retriever/testing/
    assert (Path(__file__).resolve().parents[1] / "llama_index_lvlm_retriever" / "testing" / "__init__.py").is_file()


def test_test_case_counts_agree_with_the_demo_table() -> None:
    text = _readme()
    headline = re.search(r"3 seeds pooled, ([\d,]+) test cases", text)
    assert headline is not None
    claims = 0
    for match in re.finditer(r"([\d,]{3,}) (?:ELPV )?test cases", text):
        sentence = text[max(0, match.start() - 200) : match.end()]
        if "ELPV" not in match.group(0) and "make demo" not in sentence:
            continue  # another dataset's count (e.g. the Fashion-MNIST scale variant)
        claims += 1
        if match.group(1) != headline.group(1):
            # Another count is only allowed for a run the README labels as earlier.
            assert "earlier" in sentence, f"{match.group(0)!r} differs from the demo's {headline.group(1)}"
    assert claims >= 2  # the headline and the Evaluation section's example were both checked


@pytest.mark.parametrize("option", ["--report-to", "--report-dir"])
def test_training_report_options_the_readme_documents_exist(option: str) -> None:
    _, registry = build_parser()
    assert f"`{option}" in _readme()
    for command in ("train-reader", "train-retriever"):
        assert _help_has(registry[command].format_help(), option), command
