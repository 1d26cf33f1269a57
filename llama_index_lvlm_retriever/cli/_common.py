"""Helpers shared by the CLI subcommands."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llama_index_lvlm_retriever.errors import UsageError
from llama_index_lvlm_retriever.storage.files import atomic_write_json


class CLIError(UsageError):
    """A usage error (a bad option or option combination), reported as ``error: ...`` with exit code 2."""


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE``: a JSON object whose keys are this command's option names."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file of option defaults (keys = option names with '_' for '-'); flags override it",
    )


def apply_config_defaults(parser: argparse.ArgumentParser, config_path: str) -> dict[str, Any]:
    """Load ``config_path`` and set its values as the parser's defaults; returns them."""
    path = Path(config_path)
    if not path.is_file():
        raise CLIError(f"config file not found: {path}")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CLIError(f"{path}: not valid JSON ({err.msg})") from err
    if not isinstance(values, dict):
        raise CLIError(f"{path}: expected a JSON object of option defaults")
    from llama_index_lvlm_retriever.cli._options import (
        translate_config_keys,  # _options imports this module
    )

    values = translate_config_keys(parser, values, str(path))  # old option names still work, with a warning
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CLIError(f"{path}: unknown option(s) {unknown}; known: {sorted(known - {'help'})}")
    parser.set_defaults(**values)
    for action in parser._actions:
        # A required option satisfied by the config file is no longer required on the command line.
        if action.dest in values:
            action.required = False
    return values


def add_retrieval_options(group: Any, *, k_image: int = 2, k_text: int = 2, exclude_self: bool = False) -> None:
    """Add ``--k-image``, ``--k-text``, ``--head-fusion``, ``--exclude-self/--no-exclude-self`` and ``--allow-other-kb``.

    The same names on every retrieving command. ``exclude_self`` is the command's default: on for
    commands that run labelled cases which may be in the KB (evaluate, training), off for queries.
    """
    from llama_index_lvlm_retriever.retriever.fusion import DEFAULT_HEAD_FUSION, HEAD_FUSIONS

    group.add_argument("--k-image", type=int, default=k_image, help="neighbours from the image head (image->image search); 0 disables it")
    group.add_argument("--k-text", type=int, default=k_text, help="neighbours from the text head (image->caption search); 0 disables it")
    group.add_argument(
        "--head-fusion",
        default=DEFAULT_HEAD_FUSION,
        choices=list(HEAD_FUSIONS),
        help="per-head score normalisation before merging: max (each head's scores / its best, the paper), rank, zscore, none (raw cosines)",
    )
    group.add_argument(
        "--exclude-self",
        action=argparse.BooleanOptionalAction,
        default=exclude_self,
        help="skip KB pairs whose image is the query image (same id or same decoded pixels), so a query taken "
        "from the KB does not retrieve itself",
    )
    add_allow_other_kb_option(group)


def add_allow_other_kb_option(group: Any) -> None:
    """Add ``--allow-other-kb`` (``LVLMAwareRetrieverConfig.allow_other_kb``) to a command that loads heads."""
    group.add_argument(
        "--allow-other-kb",
        action="store_true",
        help="use trained heads even on a KB sharing under half of the items they were trained on (otherwise "
        "refused; any difference is warned about and recorded in the provenance)",
    )


def check_retrieval_options(args: argparse.Namespace) -> None:
    """Reject negative per-head k and a retrieval with both heads off.

    Raises:
        CLIError: ``--k-image``/``--k-text`` below 0, or both 0.
    """
    for option, value in (("--k-image", args.k_image), ("--k-text", args.k_text)):
        if value < 0:
            raise CLIError(f"{option} must be >= 0, got {value}")
    if args.k_image == 0 and args.k_text == 0:
        raise CLIError("--k-image and --k-text are both 0, so nothing would be retrieved; set one of them >= 1")


def require_exclude_self(args: argparse.Namespace, command: str) -> None:
    """Training commands always exclude a case's own pair; reject ``--no-exclude-self`` there.

    Raises:
        CLIError: ``--no-exclude-self`` was given.
    """
    if not args.exclude_self:
        raise CLIError(
            f"{command} always excludes a training case's own KB pair (its caption holds the gold label, so "
            "training on it teaches the model to copy); drop --no-exclude-self"
        )


def check_output_dir(path: str | Path, option: str, *, replaceable_if: str) -> None:
    """Fail before any work if ``path`` cannot become the output folder of a command.

    The same rules the final write applies (the KB writer's), checked up front
    so a long embedding run does not end in "cannot write there": ``path`` must not be a file; an
    existing non-empty folder is replaced only if it holds ``replaceable_if`` (an earlier output of
    the same kind); the nearest existing folder must be writable (the new folder is built next to
    ``path`` and renamed into place).

    Raises:
        CLIError: One of the rules is broken; the message names the option, the path and the fix.
    """
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise CLIError(f"{option} {target}: exists and is not a folder; pass a folder path")
    if target.is_dir() and any(target.iterdir()) and not (target / replaceable_if).is_file():
        raise CLIError(
            f"{option} {target}: a non-empty folder that is not an earlier output (no {replaceable_if}); "
            "refusing to replace it. Pass a new or empty folder."
        )
    parent = target.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{option} {target}: cannot create it, {parent} is not a writable folder; pass a folder you can write to")


def cli_wording(message: str, flags: Mapping[str, str]) -> str:
    """Rewrite a library message's keyword arguments (``text_column=``) as the CLI flags that set them.

    Args:
        message: The library's error message.
        flags: Keyword argument name -> CLI option string, e.g. ``{"text_column": "--text-column"}``.

    Returns:
        The message with every ``name=`` of ``flags`` replaced by its option (other text unchanged).
    """
    for name, option in flags.items():
        message = re.sub(rf"\b{re.escape(name)}=(?=[^\s),;:.])", option + " ", message)  # "k_text=-1" -> "--k-text -1"
        message = re.sub(rf"\b{re.escape(name)}=", option, message)
    return message


def option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Destination -> long option string of every option of ``parser`` and its subcommands (``kb add``)."""
    names: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                names.update({k: v for k, v in option_names(child).items() if k not in names})
            continue
        long_options = [o for o in action.option_strings if o.startswith("--")]
        # "config=" in a library message is a config object, not the CLI's --config file of defaults.
        if long_options and action.help is not argparse.SUPPRESS and action.dest not in {*names, "config"}:
            names[action.dest] = long_options[0]
    return names


def resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """The command's effective options, JSON-serialisable, for writing next to its outputs."""
    return {k: v for k, v in vars(args).items() if k not in {"handler", "command", "config"} and _jsonable(v)}


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file + ``os.replace``)."""
    atomic_write_json(path, obj)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True
