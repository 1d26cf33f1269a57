"""One option vocabulary for every subcommand: parser factory, help formatter, repeat and alias actions.

* :func:`add_command_parser` creates a subcommand parser whose single-value options reject being
  given twice (argparse would silently keep the last ``--image``) and whose ``--help`` lists each
  default once.
* :func:`add_deprecated_alias` keeps an old option spelling working, hidden from ``--help``, with
  one warning naming the new spelling; :func:`translate_config_keys` does the same for the keys of
  a ``--config`` file.

Kept free of heavy imports: ``lvlm-retriever --help`` builds every parser.
"""

from __future__ import annotations

import argparse
import sys
import weakref
from collections.abc import Mapping
from typing import Any

from llama_index_lvlm_retriever.errors import UsageError

__all__ = [
    "DefaultsOnceHelpFormatter",
    "DeprecatedAliasAction",
    "SingleValueAction",
    "add_command_parser",
    "add_deprecated_alias",
    "add_global_options",
    "translate_config_keys",
]


class DefaultsOnceHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default shown once.

    ``ArgumentDefaultsHelpFormatter`` appends ``(default: %(default)s)`` to every help text that
    lacks the ``%(default)`` placeholder, so a help text that already explains its default
    ("default: identity = standard RAG") got a second, raw one ("(default: None)"). This formatter
    appends the default only when the help text does not mention one and the default says
    something (not ``None``, ``False`` or ``""``).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse.BooleanOptionalAction):
            # --flag/--no-flag: name the side that is on by default (it differs between commands).
            return f"{text} (default: {action.option_strings[0 if action.default else 1]})"
        # ``is`` for None/False: ``0 == False``, and a default of 0 is worth showing.
        if action.default is None or action.default is False or action.default in ("", []) or action.nargs == 0:
            return text
        return super()._get_help_string(action)


# Which destinations each parse has set from the command line, per namespace object. Kept outside the
# namespace so it never reaches ``vars(args)`` (the resolved config written next to outputs); a
# finalizer drops the entry when the namespace is garbage-collected, so a reused id starts afresh.
_SEEN: dict[int, tuple[weakref.ref[argparse.Namespace], set[str]]] = {}


def _already_seen(namespace: argparse.Namespace, dest: str) -> bool:
    """Record ``dest`` as given on the command line; True when it already was in this parse."""
    key = id(namespace)
    entry = _SEEN.get(key)
    if entry is None or entry[0]() is not namespace:
        entry = (weakref.ref(namespace), set())
        _SEEN[key] = entry
        weakref.finalize(namespace, _SEEN.pop, key, None)
    seen = dest in entry[1]
    entry[1].add(dest)
    return seen


class SingleValueAction(argparse._StoreAction):
    """``store`` that rejects a second occurrence of the option (or of an alias of it).

    Raises:
        argparse.ArgumentError: The option was already given; argparse turns it into a usage
            error (exit code 2) that names the option.
    """

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        if _already_seen(namespace, self.dest):
            raise argparse.ArgumentError(
                self,
                f"given more than once (last: {values!r}); pass it once: repeated options are not merged "
                "and the earlier value would be silently dropped",
            )
        super().__call__(parser, namespace, values, option_string)


class DeprecatedAliasAction(SingleValueAction):
    """An old option spelling: stores into the new option's destination and warns once on stderr."""

    def __init__(self, option_strings: list[str], dest: str, *, new_option: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new_option = new_option

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        # A repeat was rejected above, so this prints at most once per parse.
        _warn_renamed(option_string or self.option_strings[0], self.new_option)


def _warn_renamed(old: str, new: str) -> None:
    # The CLI's logging is configured after parsing, so the warning goes straight to stderr.
    print(f"warning: {old} is deprecated and will be removed; use {new}", file=sys.stderr)


def add_command_parser(subparsers: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """``subparsers.add_parser(name, ...)`` with the shared formatter and repeat-rejecting options.

    Every plain ``store`` option added to the returned parser (or its groups) afterwards is a
    :class:`SingleValueAction`. ``formatter_class`` defaults to :class:`DefaultsOnceHelpFormatter`.
    """
    kwargs.setdefault("formatter_class", DefaultsOnceHelpFormatter)
    parser = subparsers.add_parser(name, **kwargs)
    # argparse looks the action class up in the parser's registry: ``None`` is what
    # ``add_argument`` uses without ``action=``; argument groups share the parser's registry.
    parser.register("action", None, SingleValueAction)
    parser.register("action", "store", SingleValueAction)
    return parser


def add_global_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """Add ``-v/--verbose``, ``-q/--quiet`` and ``--debug``, accepted before or after the subcommand.

    The top-level parser holds the defaults (``False``); a subcommand's copies default to
    ``argparse.SUPPRESS``, so they set the value only when given and never reset one given
    before the subcommand.
    """
    default = False if top_level else argparse.SUPPRESS
    group = parser.add_argument_group("global options") if not top_level else parser
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log debug messages, third-party loader output included")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="print warnings, errors and the result only (implies --no-progress)")
    group.add_argument("--debug", action="store_true", default=default, help="show the full traceback of an error")


def add_deprecated_alias(container: Any, old: str, new_action: argparse.Action) -> argparse.Action:
    """Accept ``old`` as a hidden, warning spelling of ``new_action``'s option.

    Args:
        container: The parser or argument group ``new_action`` was added to.
        old: The old option string, e.g. ``"--method"``.
        new_action: The action ``add_argument`` returned for the new name.

    Returns:
        The alias action (its ``dest`` is the new option's).
    """
    alias = container.add_argument(
        old,
        action=DeprecatedAliasAction,
        dest=new_action.dest,
        new_option=new_action.option_strings[0],
        type=new_action.type,
        nargs=new_action.nargs,
        choices=new_action.choices,
        metavar=new_action.metavar,
        default=argparse.SUPPRESS,  # the new option's default stays the one in the namespace
        help=argparse.SUPPRESS,
    )
    alias.old_dest = old.lstrip("-").replace("-", "_")
    return alias


def translate_config_keys(parser: argparse.ArgumentParser, values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Map a ``--config`` file's old option names (deprecated aliases) onto the new ones, warning once each.

    A key that is both an old name here and a real destination (e.g. ``dtype`` when it still
    exists) is left alone.
    """
    dests = {action.dest for action in parser._actions if not isinstance(action, DeprecatedAliasAction)}
    renames = {
        action.old_dest: action for action in parser._actions
        if isinstance(action, DeprecatedAliasAction) and action.old_dest not in dests
    }
    out: dict[str, Any] = {}
    for key, value in values.items():
        alias = renames.get(key)
        if alias is None:
            out[key] = value
            continue
        if alias.dest in values:
            raise UsageError(f"{source}: both {key!r} (old name) and {alias.dest!r} are set; keep {alias.dest!r}")
        _warn_renamed(f"{key!r} in {source}", repr(alias.dest))
        out[alias.dest] = value
    return out
