"""``diagnose-kb``: does a knowledge base leave room for LVLM-aware retriever training?"""

from __future__ import annotations

import argparse
import json

from llama_index_lvlm_retriever.cli._common import CLIError, add_config_option
from llama_index_lvlm_retriever.cli._options import add_command_parser

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Add the ``diagnose-kb`` subcommand; returns name -> parser."""
    parser = add_command_parser(
        subparsers,
        "diagnose-kb",
        help="linear probe vs frozen top-k label precision of a labelled KB (room for stage 2?)",
        description="Read a persisted KB's frozen vectors and its items' labels; print the cross-validated "
        "linear-probe accuracy on the image vectors (is the label in them?) and the leave-one-out top-k "
        "label precision of frozen retrieval (does similarity use it?). Query-side training can only "
        "re-weight what the frozen vectors hold: run this before spending GPU hours on stage 2.",
    )
    parser.add_argument("--kb", required=True, help="KB directory written by build-kb (items need a 'label')")
    parser.add_argument("--k", type=int, default=4, help="neighbours per item in the precision")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of the linear probe")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds")
    parser.add_argument("--embed-model", default=None, help="override the encoder recorded in the KB manifest")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    add_config_option(parser)
    parser.set_defaults(handler=_diagnose_kb)
    return {"diagnose-kb": parser}


def _diagnose_kb(args: argparse.Namespace) -> int:
    from llama_index_lvlm_retriever.cli._loading import load_encoder
    from llama_index_lvlm_retriever.evaluation.kb_diagnostics import diagnose_kb
    from llama_index_lvlm_retriever.kb import KnowledgeBase

    if args.k < 1 or args.folds < 2:
        raise CLIError(f"--k must be >= 1 and --folds >= 2, got --k {args.k} --folds {args.folds}")
    kb = KnowledgeBase.from_persist_dir(args.kb, load_encoder(args.kb, embed_model=args.embed_model))
    report = diagnose_kb(kb, k=args.k, folds=args.folds, seed=args.seed)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0
