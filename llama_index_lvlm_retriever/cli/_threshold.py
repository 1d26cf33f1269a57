"""``--threshold-file``: use the ``min_support`` that ``evaluate --target-risk`` chose and saved."""

from __future__ import annotations

import argparse
import logging

from llama_index_lvlm_retriever.cli._common import CLIError

__all__ = ["add_threshold_file_option", "apply_threshold_file"]

logger = logging.getLogger(__name__)


def add_threshold_file_option(group: argparse._ArgumentGroup) -> None:
    """Add ``--threshold-file FILE`` (it overrides ``--min-support``)."""
    group.add_argument(
        "--threshold-file",
        default=None,
        metavar="FILE",
        help="threshold JSON written by evaluate --target-risk (threshold_<system>.json); its min_support "
        "replaces --min-support (default: unset)",
    )


def apply_threshold_file(args: argparse.Namespace) -> dict | None:
    """Set ``args.min_support`` from ``--threshold-file`` when given; returns the file's record.

    Raises:
        CLIError: The file is missing or is not a threshold file (exit code 2, naming the flag).
    """
    if not args.threshold_file:
        return None
    from llama_index_lvlm_retriever.evaluation.risk_control import load_threshold_file

    try:
        record = load_threshold_file(args.threshold_file)
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(f"--threshold-file: {error}") from error
    args.min_support = float(record["min_support"])
    logger.info(
        "min_support %.2f from %s (target risk %s, bound %s)",
        args.min_support, args.threshold_file, record.get("target_risk"), record.get("bound"),
    )
    return record
