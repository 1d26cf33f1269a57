"""One CLI vocabulary: repeats rejected, renamed options still work with a warning, each default
shown once in --help, --exclude-self on every retrieving command, the --question warning, and log
lines that leave progress bars intact."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
from pathlib import Path

import pytest
from tqdm import tqdm

from llama_index_lvlm_retriever.cli import build_parser, main
from llama_index_lvlm_retriever.cli._common import (
    CLIError,
    apply_config_defaults,
    require_exclude_self,
)
from llama_index_lvlm_retriever.cli._logging import LOG_FORMAT, TqdmLoggingHandler
from llama_index_lvlm_retriever.cli._options import DeprecatedAliasAction, SingleValueAction
from llama_index_lvlm_retriever.cli.kb import warn_unused_question
from llama_index_lvlm_retriever.errors import UsageError

RETRIEVING_COMMANDS = {
    # command -> whether it excludes the query's own KB pair by default
    "query": False,
    "diagnose": False,
    "predict": False,
    "evaluate": True,
    "collect-feedback": True,
    "train-reader": True,
}
REQUIRED = {
    "query": ["--kb", "kb", "--image", "q.png"],
    "diagnose": ["--kb", "kb", "--image", "q.png", "--reader", "r"],
    "predict": ["--kb", "kb", "--reader", "r", "--out", "o"],
    "evaluate": ["--kb", "kb", "--cases", "c.jsonl", "--reader", "r"],
    "collect-feedback": ["--kb", "kb", "--cases", "c.jsonl", "--reader", "r", "--out", "o"],
    "train-reader": ["--kb", "kb", "--cases", "c.jsonl", "--reader", "r", "--out", "o"],
    "build-kb": ["--items", "kb.jsonl", "--embed-model", "m", "--out", "o"],
}
# (command, old option, value, new destination)
RENAMES = [
    ("evaluate", "--method", "majority", "aggregation"),
    ("evaluate", "--dtype", "bfloat16", "reader_dtype"),
    ("collect-feedback", "--dtype", "float16", "reader_dtype"),
    ("collect-feedback", "--heads", "text", "feedback_heads"),
    ("train-reader", "--dtype", "bfloat16", "reader_dtype"),
    ("build-kb", "--dtype", "bfloat16", "encoder_dtype"),
    ("query", "--dtype", "float16", "encoder_dtype"),
]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser, _ = build_parser()
    return parser.parse_args(argv)


def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    _, registry = build_parser()
    parsers = dict(registry)
    for action in registry["kb"]._actions:  # kb add / kb delete
        if isinstance(action, argparse._SubParsersAction):
            parsers.update({f"kb {name}": p for name, p in action.choices.items()})
    return parsers


# --- repeated single-value options -------------------------------------------------------------


def test_a_repeated_option_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["query", "--kb", "kb", "--image", "a.png", "--image", "b.png"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --image: given more than once" in err and "'b.png'" in err


def test_an_old_and_a_new_spelling_together_count_as_a_repeat(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["evaluate", *REQUIRED["evaluate"], "--aggregation", "weighted", "--method", "majority"])
    assert "given more than once" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(_all_parsers()))
def test_every_single_value_option_rejects_repeats(command: str) -> None:
    parser = _all_parsers()[command]
    plain_stores = [a for a in parser._actions if type(a) is argparse._StoreAction]
    assert plain_stores == [], f"{command}: {[a.option_strings for a in plain_stores]} accept repeats"
    if any(a.option_strings and a.nargs != 0 for a in parser._actions):  # 'kb' only holds subcommands
        assert any(isinstance(a, SingleValueAction) for a in parser._actions)


def test_each_parse_starts_afresh() -> None:
    # The second parse must not remember the first one's options.
    for _ in range(3):
        args = _parse(["query", "--kb", "kb", "--image", "a.png", "--k-image", "3"])
        assert args.k_image == 3 and not any(key.startswith("_") for key in vars(args))


def test_repeatable_options_still_repeat() -> None:
    args = _parse(["evaluate", *REQUIRED["evaluate"], "--system", "a=x", "--system", "b=y"])
    assert args.system == ["a=x", "b=y"]


# --- renamed options -----------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "old", "value", "dest"), RENAMES)
def test_an_old_spelling_maps_onto_the_new_option_and_warns_once(
    command: str, old: str, value: str, dest: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse([command, *REQUIRED[command], old, value])
    expected = [value] if dest == "feedback_heads" else value
    assert getattr(args, dest) == expected
    assert not hasattr(args, old.lstrip("-").replace("-", "_")) or old.lstrip("-") == dest
    err = capsys.readouterr().err
    new = "--" + dest.replace("_", "-")
    assert err.count("is deprecated") == 1 and f"{old} is deprecated" in err and new in err


@pytest.mark.parametrize(("command", "old", "value", "dest"), RENAMES)
def test_old_spellings_are_hidden_from_help(command: str, old: str, value: str, dest: str) -> None:
    text = _all_parsers()[command].format_help()
    assert re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", text) is None
    assert "--" + dest.replace("_", "-") in text


def test_the_new_spelling_does_not_warn(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["evaluate", *REQUIRED["evaluate"], "--aggregation", "majority", "--reader-dtype", "float16"])
    assert (args.aggregation, args.reader_dtype) == ("majority", "float16")
    assert "deprecated" not in capsys.readouterr().err


def test_a_config_file_with_old_keys_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "evaluate.json"
    config.write_text(json.dumps({"method": "most_confident", "dtype": "float16"}))
    _, registry = build_parser()
    applied = apply_config_defaults(registry["evaluate"], str(config))
    assert applied == {"aggregation": "most_confident", "reader_dtype": "float16"}
    args = registry["evaluate"].parse_args(REQUIRED["evaluate"])
    assert (args.aggregation, args.reader_dtype) == ("most_confident", "float16")
    err = capsys.readouterr().err
    assert "'method'" in err and "'aggregation'" in err and "'dtype'" in err


def test_a_config_file_with_both_spellings_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "evaluate.json"
    config.write_text(json.dumps({"method": "majority", "aggregation": "weighted"}))
    _, registry = build_parser()
    with pytest.raises(UsageError, match="both 'method' .old name. and 'aggregation'"):
        apply_config_defaults(registry["evaluate"], str(config))


# --- --help lists each default once -------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(_all_parsers()))
def test_help_states_each_default_at_most_once(command: str) -> None:
    parser = _all_parsers()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        text = formatter._expand_help(action)
        # "(default: X)" is what the formatter appends; a second one is the bug (demo's --data-root
        # legitimately names one default per dataset, in prose).
        assert text.count("(default:") <= 1, f"{command} {action.option_strings}: {text!r}"
        assert "(default: None)" not in text and "(default: [])" not in text, f"{command} {action.option_strings}"


def test_help_keeps_a_written_default_and_adds_the_rest() -> None:
    text = " ".join(_all_parsers()["query"].format_help().split())
    assert "trained image-head directory (default: identity = standard RAG) --text-head" in text
    assert "(default: None)" not in text
    assert "0 disables it (default: 2)" in text  # an unexplained default is still shown
    assert "(default: --no-exclude-self)" in text


# --- --exclude-self on every retrieving command --------------------------------------------------


@pytest.mark.parametrize(("command", "default"), sorted(RETRIEVING_COMMANDS.items()))
def test_every_retrieving_command_has_exclude_self(command: str, default: bool) -> None:
    assert _parse([command, *REQUIRED[command]]).exclude_self is default
    assert _parse([command, *REQUIRED[command], "--exclude-self"]).exclude_self is True
    assert _parse([command, *REQUIRED[command], "--no-exclude-self"]).exclude_self is False
    help_text = _all_parsers()[command].format_help()
    assert "--exclude-self, --no-exclude-self" in help_text


@pytest.mark.parametrize("command", ["collect-feedback", "train-reader"])
def test_training_commands_refuse_to_read_a_cases_own_pair(command: str) -> None:
    args = _parse([command, *REQUIRED[command], "--no-exclude-self"])
    with pytest.raises(CLIError, match=rf"{command} always excludes .* drop --no-exclude-self"):
        require_exclude_self(args, command)


# --- --question without --question-weight ----------------------------------------------------------


def test_question_without_weight_warns(capsys: pytest.CaptureFixture[str]) -> None:
    warn_unused_question("is it malignant?", 0.0)
    err = capsys.readouterr().err
    assert "--question has no effect" in err and "--question-weight" in err


@pytest.mark.parametrize(("question", "weight"), [("", 0.0), ("is it malignant?", 0.3), ("   ", 0.0)])
def test_question_with_effect_or_none_does_not_warn(question: str, weight: float, capsys: pytest.CaptureFixture[str]) -> None:
    warn_unused_question(question, weight)
    assert capsys.readouterr().err == ""


def test_query_warns_before_loading_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The KB folder does not exist, so the command fails after the warning: the warning is given
    # on the way in, before any model is loaded.
    code = main(["query", "--kb", str(tmp_path / "missing"), "--image", "q.png", "--question", "malignant?"])
    assert code != 0
    assert "--question has no effect" in capsys.readouterr().err


# --- log lines and progress bars -------------------------------------------------------------------


class _TTY(io.StringIO):
    """A stream tqdm treats as a terminal (it redraws bars with carriage returns)."""

    def isatty(self) -> bool:
        return True


def _log_during_a_bar(handler: logging.Handler, stream: io.StringIO) -> list[str]:
    logger = logging.getLogger("test_vocabulary.bar")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)
    try:
        with tqdm(total=10, file=stream, desc="embed", ascii=True, mininterval=0, miniters=1) as bar:
            bar.update(3)
            logger.info("loaded the encoder")
            bar.update(7)
    finally:
        logger.removeHandler(handler)
    # What a terminal shows: each line is what is left after its last carriage return.
    return [line.rsplit("\r", 1)[-1] for line in stream.getvalue().split("\n")]


def test_a_log_line_during_a_progress_bar_stays_on_its_own_line() -> None:
    stream = _TTY()
    lines = _log_during_a_bar(TqdmLoggingHandler(stream), stream)
    assert "INFO test_vocabulary.bar: loaded the encoder" in lines
    bar_lines = [line for line in lines if "embed" in line]
    assert bar_lines and all("loaded the encoder" not in line for line in bar_lines)
    assert "10/10" in bar_lines[-1]


def test_a_plain_stream_handler_would_break_the_bar() -> None:
    # The failure the tqdm handler prevents: the message glued to a half-drawn bar.
    stream = _TTY()
    lines = _log_during_a_bar(logging.StreamHandler(stream), stream)
    assert any("embed" in line and "loaded the encoder" in line for line in stream.getvalue().split("\n"))
    assert "INFO test_vocabulary.bar: loaded the encoder" not in lines


def test_main_logs_through_tqdm_when_logging_is_not_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    try:
        main(["info", "--kb", str(tmp_path / "missing")])
        assert [type(h) for h in root.handlers] == [TqdmLoggingHandler]
    finally:
        for handler in root.handlers:
            handler.close()


def test_the_alias_action_type_is_used_for_every_rename() -> None:
    for command, old, _, dest in RENAMES:
        parser = _all_parsers()[command]
        alias = next(a for a in parser._actions if old in a.option_strings)
        assert isinstance(alias, DeprecatedAliasAction) and alias.dest == dest and alias.help == argparse.SUPPRESS
