"""``predict``: batch diagnosis of a folder of images, a DICOM directory or a case file.

Writes ``predictions.jsonl`` (resumable), ``predictions.csv``, the evidence viewer
``evidence.html`` and ``predict_run.json`` (settings, counts, provenance) into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from llama_index_lvlm_retriever.aggregation import DEFAULT_TEMPERATURE, AggregationMethod
from llama_index_lvlm_retriever.cli._common import (
    CLIError,
    add_config_option,
    add_retrieval_options,
    check_retrieval_options,
    resolved_config,
)
from llama_index_lvlm_retriever.cli._options import add_command_parser
from llama_index_lvlm_retriever.cli._threshold import (
    add_threshold_file_option,
    apply_threshold_file,
)

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.data.records import Case

logger = logging.getLogger(__name__)

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Add the ``predict`` subcommand; returns name -> parser."""
    parser = add_command_parser(
        subparsers,
        "predict",
        help="diagnose every image of a folder, DICOM directory or case file (batched, resumable)",
        description="Retrieve KB pairs for every image, read each image with each pair, fuse the answers and "
        "write predictions.jsonl, predictions.csv, the evidence viewer (evidence.html) and predict_run.json "
        "(settings, counts, provenance) to --out. A rerun with the same --out after a crash continues where "
        "it stopped.",
    )
    inputs = parser.add_argument_group("input (exactly one of --images, --dicom-dir, --cases)")
    inputs.add_argument("--kb", required=True, help="KB directory written by build-kb")
    inputs.add_argument("--images", default=None, metavar="FOLDER", help="folder of query images (searched recursively)")
    inputs.add_argument("--dicom-dir", default=None, metavar="DIR", help="DICOM directory (files by .dcm suffix or DICM marker)")
    inputs.add_argument("--cases", default=None, metavar="FILE", help="JSONL of cases (image_path, optional question and answers)")
    inputs.add_argument("--question", default="", help="question for every image; empty = the task's default; cases with their own keep it")
    inputs.add_argument("--task", default=None, help="built-in task name or task JSON file; unset = the task saved in the reader folder")
    models = parser.add_argument_group("models")
    models.add_argument("--reader", required=True, help="LVLM reader: hub id or local folder")
    models.add_argument("--embed-model", default=None, help="override the encoder recorded in the KB manifest")
    models.add_argument("--heads", default=None, metavar="DIR", help="folder written by train-retriever (image_head/ + text_head/)")
    models.add_argument("--image-head", default=None, help="trained image-head directory; unset = identity (standard RAG)")
    models.add_argument("--text-head", default=None, help="trained text-head directory; unset = identity (standard RAG)")
    models.add_argument("--reader-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="reader weight dtype")
    models.add_argument("--reader-batch-size", type=int, default=8, help="(query, neighbour) prompts per reader forward pass")
    models.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, auto")
    retrieval = parser.add_argument_group("retrieval and fusion")
    add_retrieval_options(retrieval)
    retrieval.add_argument("--aggregation", default="weighted", choices=list(get_args(AggregationMethod)), help="how per-neighbour answers are fused")
    retrieval.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="softmax temperature over retrieval scores")
    retrieval.add_argument(
        "--min-support", type=float, default=1.0,
        help="abstain when the share of neighbours whose own prediction is the answer is below this",
    )
    add_threshold_file_option(retrieval)
    output = parser.add_argument_group("output and runtime")
    output.add_argument("--out", required=True, help="output folder (rerun with the same folder to resume)")
    output.add_argument("--batch-size", type=int, default=16, help="cases per retrieval / reader call (and per saved batch)")
    output.add_argument("--viewer-images", default="auto", choices=["auto", "embed", "copy"], help="evidence viewer images: embedded, copied beside it, or auto (embed up to 200 cases)")
    output.add_argument("--no-viewer", action="store_true", help="do not write evidence.html")
    output.add_argument("--overwrite", action="store_true", help="discard rows of an earlier run in --out instead of resuming")
    output.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_option(parser)
    parser.set_defaults(handler=_predict)
    return {"predict": parser}


def _predict(args: argparse.Namespace) -> int:
    from llama_index_lvlm_retriever.cli._loading import (
        heads_dir_paths,
        load_cases,
        load_encoder,
        load_reader,
        load_retriever,
        load_task,
    )
    from llama_index_lvlm_retriever.data.folders import cases_from_folder
    from llama_index_lvlm_retriever.evaluation.predict import (
        EVIDENCE_HTML,
        PREDICTIONS_CSV,
        PREDICTIONS_JSONL,
        ROW_ERROR,
        RUN_FILE,
        predict,
    )
    from llama_index_lvlm_retriever.outputs import metadata_keys as keys
    from llama_index_lvlm_retriever.outputs.provenance import collect_provenance

    check_retrieval_options(args)
    option, source = _input_option(args)
    apply_threshold_file(args)
    if not 0.0 < args.min_support <= 1.0:
        raise CLIError(f"--min-support must be in (0, 1], got {args.min_support}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.heads and (args.image_head or args.text_head):
        raise CLIError("--heads names both heads; pass either --heads DIR or --image-head/--text-head, not both")
    image_head, text_head = heads_dir_paths(args.heads) if args.heads else (args.image_head, args.text_head)
    provenance = collect_provenance(
        inputs={"kb": args.kb, option.lstrip("-").replace("-", "_"): source, "image_head": image_head,
                "text_head": text_head, **({"reader": args.reader} if Path(args.reader).is_dir() else {})},
        options=resolved_config(args),
    )
    if option == "--cases":
        cases = load_cases(source)
        if args.question:
            cases = [c if c.question else _with_question(c, args.question) for c in cases]
    else:
        try:
            cases = cases_from_folder(source, "dicom" if option == "--dicom-dir" else "images", question=args.question)
        except (FileNotFoundError, ValueError) as err:
            raise CLIError(f"{option} {source}: {err}") from err
    task = load_task(args.task)
    reader = load_reader(args.reader, task, device=args.device, dtype=args.reader_dtype, batch_size=args.reader_batch_size)
    encoder = load_encoder(args.kb, embed_model=args.embed_model, device=args.device)
    retriever = load_retriever(
        args.kb, encoder, image_head=image_head, text_head=text_head, k_image=args.k_image, k_text=args.k_text,
        head_fusion=args.head_fusion, allow_other_kb=args.allow_other_kb,
    )
    rows = predict(
        cases,
        retriever,
        reader,
        task=task,
        out_dir=args.out,
        method=args.aggregation,
        temperature=args.temperature,
        min_support=args.min_support,
        exclude_self=args.exclude_self,
        batch_size=args.batch_size,
        resume=not args.overwrite,
        viewer=not args.no_viewer,
        viewer_images=args.viewer_images,
        provenance=provenance,
        show_progress=not args.no_progress,
    )
    out = Path(args.out)
    errors = sum(row[ROW_ERROR] is not None for row in rows)
    abstained = sum(bool(row[keys.ABSTAIN]) for row in rows) - errors  # an error row also abstains
    print(
        f"{len(rows)} cases: {len(rows) - errors - abstained} answered, {abstained} abstain "
        f"(support < {args.min_support:g}), {errors} errors (no readable image or no neighbour)"
    )
    print(f"predictions -> {out / PREDICTIONS_JSONL}, {out / PREDICTIONS_CSV}")
    if not args.no_viewer:
        print(f"evidence viewer -> {out / EVIDENCE_HTML}")
    print(f"run record -> {out / RUN_FILE}")
    return 0


def _input_option(args: argparse.Namespace) -> tuple[str, str]:
    given = [(option, value) for option, value in (("--images", args.images), ("--dicom-dir", args.dicom_dir), ("--cases", args.cases)) if value]
    if len(given) != 1:
        named = ", ".join(option for option, _ in given) or "none"
        raise CLIError(f"pass exactly one of --images FOLDER, --dicom-dir DIR, --cases FILE (got {named})")
    return given[0]


def _with_question(case: Case, question: str) -> Case:
    return replace(case, question=question)
