"""``evaluate``: compare standard RAG, trained retrievers and closed-book reading on labelled cases."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any, get_args

from llama_index_lvlm_retriever.aggregation import DEFAULT_TEMPERATURE, AggregationMethod
from llama_index_lvlm_retriever.cli._common import (
    CLIError,
    add_config_option,
    add_retrieval_options,
    check_retrieval_options,
    resolved_config,
    write_json_atomic,
)
from llama_index_lvlm_retriever.cli._loading import (
    heads_dir_paths,
    load_cases,
    load_encoder,
    load_reader,
    load_retriever,
    load_task,
)
from llama_index_lvlm_retriever.cli._options import add_command_parser, add_deprecated_alias

logger = logging.getLogger(__name__)

EVAL_CONFIG_FILE = "evaluate_config.json"
"""Written next to the report: the options the evaluation ran with."""
STANDARD_RAG = "standard RAG"
"""Name of the identity-heads system (the baseline of the paired comparisons)."""


def register(subparsers: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Add the ``evaluate`` subcommand; returns name -> parser."""
    parser = add_command_parser(
        subparsers,
        "evaluate",
        help="evaluate retrieval systems with a reader on labelled cases",
        description="Read every case with standard RAG (identity heads), each trained heads folder "
        "(--system NAME=DIR) and closed-book; write report.json, report.md and plots to --out and "
        "print the Markdown tables.",
    )
    data = parser.add_argument_group("input")
    data.add_argument("--kb", required=True, help="KB directory written by build-kb")
    data.add_argument("--cases", required=True, help="labelled test cases (JSONL of image_path + answers)")
    data.add_argument("--task", default=None, help="built-in task name or task JSON file (default: the one saved in a reader folder)")
    systems = parser.add_argument_group("systems")
    systems.add_argument(
        "--system",
        action="append",
        default=[],
        metavar="NAME=HEADS_DIR",
        help="a trained retriever: NAME=folder written by train-retriever (repeatable)",
    )
    systems.add_argument("--no-standard", action="store_true", help=f"leave out the {STANDARD_RAG!r} (identity heads) system")
    systems.add_argument("--no-closed-book", action="store_true", help="leave out the reader-without-retrieval system")
    systems.add_argument("--baseline", default=None, help=f"system the others are compared with (default: {STANDARD_RAG!r}, else the first)")
    reading = parser.add_argument_group("reader and aggregation")
    reading.add_argument("--reader", required=True, help="LVLM: hub id (e.g. Qwen/Qwen2-VL-2B-Instruct) or local folder")
    add_retrieval_options(reading, exclude_self=True)  # test cases may sit in the KB: never read their own pair
    aggregation = reading.add_argument("--aggregation", default="weighted", choices=list(get_args(AggregationMethod)), help="how per-neighbour answers are fused")
    add_deprecated_alias(reading, "--method", aggregation)
    reading.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="softmax temperature over retrieval scores (weighted)")
    reading.add_argument("--batch-size", type=int, default=16, help="cases per retrieval / reader call")
    reading.add_argument("--reader-batch-size", type=int, default=8, help="sequences per reader forward pass")
    stats = parser.add_argument_group("statistics")
    stats.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per interval")
    stats.add_argument("--confidence", type=float, default=0.95, help="interval coverage")
    stats.add_argument("--seed", type=int, default=0, help="resampling seed")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="cpu", help="torch device of encoder and reader")
    reader_dtype = runtime.add_argument("--reader-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="reader weight dtype (auto = the checkpoint's)")
    add_deprecated_alias(runtime, "--dtype", reader_dtype)
    runtime.add_argument("--no-progress", action="store_true", help="hide progress bars")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default="eval", help="folder for report.json, report.md, plots, the evidence viewers and the resolved config")
    output.add_argument(
        "--viewer-images", default="auto", choices=["auto", "embed", "copy"],
        help="evidence viewer images: embedded, copied beside it, or auto (embed up to 200 cases)",
    )
    output.add_argument("--no-viewer", action="store_true", help="do not write the evidence viewers (evidence_<system>.html)")
    add_config_option(parser)
    parser.set_defaults(handler=_evaluate)
    return {"evaluate": parser}


def parse_systems(specs: list[str]) -> dict[str, tuple[Path, Path]]:
    """``["NAME=DIR", ...]`` -> ``{name: (image_head_dir, text_head_dir)}``.

    Raises:
        CLIError: A spec without ``=``, an empty name, a repeated name, or a folder without heads.
    """
    systems: dict[str, tuple[Path, Path]] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        name = name.strip()
        if not sep or not name or not folder:
            raise CLIError(f"--system {spec!r}: expected NAME=HEADS_DIR, e.g. --system 'LVLM-aware=runs/heads'")
        if name in systems or name == STANDARD_RAG:
            raise CLIError(f"--system {spec!r}: the name {name!r} is used twice; give each system its own name")
        systems[name] = heads_dir_paths(folder, option="--system")
    return systems


def _evaluate(args: argparse.Namespace) -> int:
    from llama_index_lvlm_retriever.evaluation.dataset import evaluate_dataset
    from llama_index_lvlm_retriever.evaluation.report import write_report
    from llama_index_lvlm_retriever.provenance import (
        collect_provenance,
        describe_head,
        describe_knowledge_base,
        describe_model,
        utc_now,
    )

    started = utc_now()
    check_retrieval_options(args)
    trained = parse_systems(args.system)
    if args.no_standard and not trained:
        raise CLIError("--no-standard leaves no retrieval system; add --system NAME=HEADS_DIR")
    task = load_task(args.task)
    cases = load_cases(args.cases)
    reader = load_reader(args.reader, task, device=args.device, dtype=args.reader_dtype, batch_size=args.reader_batch_size)
    encoder = load_encoder(args.kb, device=args.device)
    # Every neighbour the two heads return is read (k_image + k_text, fewer when both heads find a pair).
    heads: dict[str, tuple[Path | None, Path | None]] = {} if args.no_standard else {STANDARD_RAG: (None, None)}
    heads.update(trained)
    systems = {
        name: load_retriever(
            args.kb, encoder, image_head=image, text_head=text, k_image=args.k_image, k_text=args.k_text,
            head_fusion=args.head_fusion, allow_other_kb=args.allow_other_kb,
        )
        for name, (image, text) in heads.items()
    }
    report = evaluate_dataset(
        cases,
        systems,
        reader,
        task,
        k=None,
        closed_book=not args.no_closed_book,
        method=args.aggregation,
        exclude_self=args.exclude_self,
        temperature=args.temperature,
        baseline=args.baseline,
        n_bootstrap=args.bootstrap,
        confidence=args.confidence,
        seed=args.seed,
        batch_size=args.batch_size,
        show_progress=not args.no_progress,
    )
    # Every system shares the KB, encoder and reader; only the heads differ.
    first = next(iter(systems.values()))
    provenance = collect_provenance(
        models={
            "knowledge_base": describe_knowledge_base(first.knowledge_base, args.kb),
            "encoder": describe_model(encoder),
            "reader": describe_model(reader),
            "systems": {
                name: {"image_head": describe_head(r.image_head, heads[name][0]), "text_head": describe_head(r.text_head, heads[name][1]),
                       **({"head_kb_events": r.head_kb_events} if r.head_kb_events else {})}
                for name, r in systems.items()
            },
        },
        inputs={
            "kb": args.kb, "cases": args.cases,
            **{key: value for key, value in (("reader", args.reader), ("task", args.task)) if value and Path(value).exists()},
            **{f"heads:{name}": str(Path(image).parent) for name, (image, _) in trained.items()},
        },
        options=resolved_config(args),
        started_at=started,
        ended_at=utc_now(),
    )
    paths = write_report(report, args.out, provenance)
    write_json_atomic(Path(args.out) / EVAL_CONFIG_FILE, {**absolute_paths(resolved_config(args)), "provenance": provenance})
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"report -> {paths['json']}")
    if not args.no_viewer:
        from llama_index_lvlm_retriever.evaluation.evidence_viewer import write_evidence_viewer
        from llama_index_lvlm_retriever.evaluation.report_rows import report_viewer_rows

        for name, retriever in systems.items():
            rows = report_viewer_rows(report, name, cases, retriever.knowledge_base.get)
            viewer = write_evidence_viewer(
                rows, Path(args.out) / viewer_file_name(name), title=f"Evidence viewer: {name}",
                labels=report.labels, images=args.viewer_images,
            )
            print(f"evidence viewer ({name}) -> {viewer}")
    return 0


def viewer_file_name(system: str) -> str:
    """``evidence_<system>.html`` with the system name reduced to a safe file name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", system).strip("_") or "system"
    return f"evidence_{slug}.html"


def absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved options with every path option absolute, so the record is valid from any folder.

    ``reader`` and ``task`` are made absolute only when they name an existing folder or file (else
    they are a hub id or built-in task name); ``system`` entries become ``NAME=/abs/folder``.
    """
    out = dict(config)
    for key in ("kb", "cases", "out"):
        if out.get(key):
            out[key] = str(Path(out[key]).expanduser().resolve())
    for key in ("reader", "task"):
        if out.get(key) and Path(out[key]).expanduser().exists():
            out[key] = str(Path(out[key]).expanduser().resolve())
    systems = []
    for spec in out.get("system") or []:
        name, _, folder = spec.partition("=")
        systems.append(f"{name}={Path(folder).expanduser().resolve()}")
    out["system"] = systems
    return out
