"""The ``lvlm-retriever`` command: argparse subcommands with thin handlers.

Each subcommand lives in its own module (``kb.py``, ...) that registers its parser and calls one
library function. ``main(argv)`` returns an exit code so tests can call it directly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llama_index_lvlm_retriever._devices import check_device_available
from llama_index_lvlm_retriever.cli import (
    demo,
    diagnose,
    diagnostics,
    evaluate,
    kb,
    predict,
    reader_training,
    retriever_training,
)
from llama_index_lvlm_retriever.cli._common import apply_config_defaults, cli_wording, option_names
from llama_index_lvlm_retriever.cli._logging import configure_logging
from llama_index_lvlm_retriever.cli._options import DefaultsOnceHelpFormatter, add_global_options
from llama_index_lvlm_retriever.errors import LVLMRetrieverError, UsageError
from llama_index_lvlm_retriever.version import __version__

__all__ = ["build_parser", "main"]

# Modules that contribute subcommands, in the order --help lists them.
_COMMAND_MODULES = [kb, diagnostics, diagnose, predict, evaluate, retriever_training, reader_training, demo]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """Build the top-level parser; returns it and a map of subcommand name -> subparser."""
    parser = argparse.ArgumentParser(
        prog="lvlm-retriever",
        description="LVLM-aware multimodal retrieval for medical image diagnosis (LlamaIndex).",
        formatter_class=DefaultsOnceHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_global_options(parser, top_level=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    registry: dict[str, argparse.ArgumentParser] = {}
    for module in _COMMAND_MODULES:
        registry.update(module.register(subparsers))
    for subparser in _all_subparsers(parser):
        # ``lvlm-retriever query --debug`` as well as ``lvlm-retriever --debug query``.
        add_global_options(subparser, top_level=False)
    return parser, registry


def _all_subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every subcommand parser below ``parser``, nested ones (``kb add``) included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += [child, *_all_subparsers(child)]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code.

    Exit codes: 0 success; 2 a usage error (argparse's, :class:`~llama_index_lvlm_retriever.errors.UsageError`
    and its subclasses such as ``CLIError``); 1 a data error (a bad, missing or corrupt file, an
    unreadable image, an encoder mismatch, anything unexpected); 130 interrupted. Errors print as
    one ``error: ...`` line; ``--debug`` re-raises them with the traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, registry = build_parser()
    command = next((a for a in argv if a in registry), None)
    # The library's messages name keyword arguments (``pass task=``); the command's flags replace them.
    flags = option_names(registry[command]) if command is not None else {}
    try:
        command, config = _peek_command_and_config(argv, registry)
        if command is not None and config is not None:
            # --config supplies defaults before parsing, so flags on the command line still win
            # and options it provides are no longer required.
            apply_config_defaults(registry[command], config)
        args = parser.parse_args(argv)
        if args.quiet and hasattr(args, "no_progress"):
            args.no_progress = True  # --quiet: warnings, errors and the command's result only
        # Log lines go through tqdm.write, so progress bars stay intact; loader noise only with --verbose.
        configure_logging(args.verbose, quiet=args.quiet, progress=not getattr(args, "no_progress", args.quiet))
        # Before the handler loads any model, so a CUDA-less torch names the option, not an assert.
        check_device_available(getattr(args, "device", None), option="--device")
        return int(args.handler(args) or 0)
    except UsageError as err:
        # Our own usage errors (CLIError, DeviceUnavailableError, bad option values raised by the
        # library) exit 2 like argparse's; argparse's own already exit 2 through SystemExit.
        return _report(err, argv, code=2, flags=flags)
    except (LVLMRetrieverError, OSError, ValueError, ImportError) as err:
        # Data errors: a bad or missing file, an unreadable image, a corrupt artifact, an encoder
        # mismatch (LVLMRetrieverError's DataError subclasses; OSError/ValueError/ImportError from
        # code paths that raise the builtins).
        return _report(err, argv, code=1, flags=flags)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        # Anything else (a library's own error type we did not translate) still reaches the user
        # as one line naming the error; --debug shows where it came from.
        return _report(err, argv, code=1, with_type=True, flags=flags)


def _report(
    err: BaseException, argv: Sequence[str], *, code: int, with_type: bool = False, flags: dict[str, str] | None = None
) -> int:
    """Print ``err`` as one ``error: ...`` line and return ``code``; with ``--debug`` re-raise it."""
    if "--debug" in argv:
        raise err
    # One line, whatever the message: faiss and safetensors messages span several.
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    text = cli_wording(text, flags or {})
    if with_type:
        text = f"{type(err).__name__}: {text} (run with --debug for the traceback)"
    print(f"error: {text}", file=sys.stderr)
    return code


def _peek_command_and_config(
    argv: Sequence[str], registry: dict[str, argparse.ArgumentParser]
) -> tuple[str | None, str | None]:
    command = next((a for a in argv if a in registry), None)
    config = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            config = argv[i + 1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
    return command, config


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
