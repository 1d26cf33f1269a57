"""``diagnose``: answer a diagnostic question about one image with retrieval + LVLM reading."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, get_args

from llama_index_lvlm_retriever.aggregation import (
    DEFAULT_TEMPERATURE,
    AggregationMethod,
    RerankMethod,
)
from llama_index_lvlm_retriever.cli._common import (
    CLIError,
    add_config_option,
    add_retrieval_options,
    check_retrieval_options,
)
from llama_index_lvlm_retriever.cli._options import add_command_parser
from llama_index_lvlm_retriever.cli._threshold import (
    add_threshold_file_option,
    apply_threshold_file,
)
from llama_index_lvlm_retriever.cli.kb import format_table, node_summary
from llama_index_lvlm_retriever.outputs import metadata_keys as keys

logger = logging.getLogger(__name__)

__all__ = ["DIAGNOSE_RESPONSE", "diagnosis_record", "register"]


def register(subparsers: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Add the ``diagnose`` subcommand; returns name -> parser."""
    parser = add_command_parser(
        subparsers,
        "diagnose",
        help="answer a diagnostic question about an image (retrieve, read each neighbour, fuse)",
        description="Retrieve KB pairs for the image, read the image with each pair using the LVLM reader, "
        "fuse the per-neighbour answers and print the answer, its probability, the neighbours' "
        "consistency and the evidence; --viewer FILE also writes the evidence viewer (HTML).",
    )
    inputs = parser.add_argument_group("input")
    inputs.add_argument("--kb", required=True, help="KB directory written by build-kb")
    inputs.add_argument("--image", required=True, help="query image (PNG/JPEG/DICOM)")
    inputs.add_argument(
        "--question", default="",
        help="question for the reader ('' = the task's default); retrieval uses it only with --question-weight > 0",
    )
    inputs.add_argument("--task", default=None, help="built-in task name (e.g. retinamnist) or a TaskSpec JSON file (default: the one saved in a reader folder)")
    models = parser.add_argument_group("models")
    models.add_argument("--reader", required=True, help="LVLM reader: hub id (e.g. Qwen/Qwen2-VL-2B-Instruct) or local folder")
    models.add_argument("--embed-model", default=None, help="override the encoder recorded in the KB manifest")
    models.add_argument("--heads", default=None, metavar="DIR", help="folder written by train-retriever (image_head/ + text_head/); replaces --image-head/--text-head")
    models.add_argument("--image-head", default=None, help="trained image-head directory (default: identity = standard RAG)")
    models.add_argument("--text-head", default=None, help="trained text-head directory (default: identity = standard RAG)")
    models.add_argument("--reader-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="reader weight dtype (auto = the checkpoint's)")
    models.add_argument("--reader-batch-size", type=int, default=8, help="(query, neighbour) prompts per reader forward pass")
    models.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, auto")
    retrieval = parser.add_argument_group("retrieval and fusion")
    add_retrieval_options(retrieval)
    retrieval.add_argument("--question-weight", type=float, default=0.0, help="weight of the question's text embedding in the query vector")
    retrieval.add_argument("--aggregation", default="weighted", choices=list(get_args(AggregationMethod)), help="how per-neighbour answers are fused")
    retrieval.add_argument("--rerank", default="posterior", choices=list(get_args(RerankMethod)), help="score the evidence is ordered by")
    retrieval.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="softmax temperature over retrieval scores")
    retrieval.add_argument(
        "--min-support",
        type=float,
        default=1.0,
        help="recommend abstaining when the share of neighbours whose own prediction is the answer shown is below this",
    )
    add_threshold_file_option(retrieval)
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print a JSON object (a predictions.jsonl row plus 'response'; schema: diagnose.schema.json) instead of text")
    output.add_argument("--viewer", default=None, metavar="FILE", help="also write the evidence viewer (a self-contained HTML page) to FILE")
    output.add_argument(
        "--viewer-images", default="auto", choices=["auto", "embed", "copy"],
        help="evidence viewer images: embedded, copied beside it, or auto (embed up to 200 cases)",
    )
    add_config_option(parser)
    parser.set_defaults(handler=_diagnose)
    return {"diagnose": parser}


def _diagnose(args: argparse.Namespace) -> int:
    from llama_index.core.schema import QueryBundle

    from llama_index_lvlm_retriever.cli._loading import (
        heads_dir_paths,
        load_encoder,
        load_reader,
        load_task,
    )
    from llama_index_lvlm_retriever.heads import load_head
    from llama_index_lvlm_retriever.kb import KnowledgeBase
    from llama_index_lvlm_retriever.query_engine import LVLMDiagnosisQueryEngine

    check_retrieval_options(args)
    apply_threshold_file(args)
    if not 0.0 < args.min_support <= 1.0:
        raise CLIError(f"--min-support must be in (0, 1], got {args.min_support}")
    if not Path(args.image).is_file():
        raise CLIError(f"--image {args.image}: file not found")
    image_head, text_head = args.image_head, args.text_head
    if args.heads is not None:
        if image_head or text_head:
            raise CLIError(f"--heads {args.heads} already names both heads; drop --image-head/--text-head, or drop --heads")
        image_head, text_head = heads_dir_paths(args.heads)
    task = load_task(args.task)
    reader = load_reader(args.reader, task, device=args.device, dtype=args.reader_dtype, batch_size=args.reader_batch_size)
    kb = KnowledgeBase.from_persist_dir(args.kb, load_encoder(args.kb, embed_model=args.embed_model, device=args.device))
    engine = LVLMDiagnosisQueryEngine.from_defaults(
        knowledge_base=kb,
        reader=reader,
        image_head=load_head(image_head) if image_head else None,
        text_head=load_head(text_head) if text_head else None,
        k_image=args.k_image,
        k_text=args.k_text,
        head_fusion=args.head_fusion,
        allow_other_kb=args.allow_other_kb,
        question_weight=args.question_weight,
        aggregation=args.aggregation,
        rerank_method=args.rerank,
        temperature=args.temperature,
        min_support=args.min_support,
        exclude_self=args.exclude_self,
    )
    response = engine.query(QueryBundle(query_str=args.question, image_path=args.image))
    result = diagnosis_record(args, response, engine.rerank)
    viewer = None
    if args.viewer:
        provenance = _provenance(args, engine, kb, reader, image_head, text_head)
        viewer = _write_viewer(args, result, reader.task, provenance)
    if args.json:
        print(json.dumps({**result, **({"viewer": str(viewer)} if viewer else {})}, indent=2))
        return 0
    print(f"{keys.ANSWER}: {response.response}")  # the answer in words; --json has the label alone
    print(
        f"{keys.PROBABILITY}: {result[keys.PROBABILITY]:.4f}  {keys.SUPPORT}: {result[keys.SUPPORT]:.2f} of neighbours "
        f"({keys.WEIGHTED_SUPPORT} {result[keys.WEIGHTED_SUPPORT]:.2f} of the retrieval weight)  "
        f"{keys.ABSTAIN}: {result[keys.ABSTAIN]} (min support {args.min_support:.2f})"
    )
    print(
        f"{keys.CONSISTENT} (all neighbours agree): {result[keys.CONSISTENT]}  {keys.AGREEMENT} (majority share): "
        f"{result[keys.AGREEMENT]:.2f}  {keys.VOTE_ENTROPY}: {result[keys.VOTE_ENTROPY]:.3f}  "
        f"{keys.N_DISTINCT}: {result[keys.N_DISTINCT]}"
    )
    print("evidence:")
    print(format_table(result[keys.NEIGHBOURS], [
        "rank", keys.NEIGHBOUR_KB_ID, keys.NEIGHBOUR_KB_LABEL, keys.NEIGHBOUR_HEAD, keys.NEIGHBOUR_RETRIEVAL_SCORE,
        keys.NEIGHBOUR_RERANK_SCORE, keys.NEIGHBOUR_PREDICTION, keys.NEIGHBOUR_PROBABILITY, keys.NEIGHBOUR_TEXT,
    ]))
    if viewer:
        print(f"evidence viewer -> {viewer}")
    return 0


DIAGNOSE_RESPONSE = "response"
"""``diagnose --json`` key of the answer in words (the query engine's ``Response.response``)."""


def diagnosis_record(args: argparse.Namespace, response: Any, rerank: Any) -> dict[str, Any]:
    """The ``diagnose --json`` object: a ``predictions.jsonl`` row (same keys) plus ``response``.

    ``neighbours`` is in the order the evidence is ranked after reading (``rerank_score``), each
    entry with the neighbour keys of ``predict`` plus ``rerank_score``, ``cosine`` and ``source``.
    """
    from llama_index_lvlm_retriever.evaluation.predict import (
        ROW_CASE_ID,
        ROW_IMAGE_PATH,
        ROW_QUESTION,
    )

    neighbours = []
    for n in response.source_nodes:
        entry = node_summary(n, score_key=keys.NEIGHBOUR_RERANK_SCORE)
        retrieval_score = n.node.metadata[rerank.retrieval_score_key]
        entry[keys.NEIGHBOUR_RETRIEVAL_SCORE] = None if retrieval_score is None else round(float(retrieval_score), 6)
        entry[keys.NEIGHBOUR_PREDICTION] = n.node.metadata[rerank.label_key]
        entry[keys.NEIGHBOUR_PROBABILITY] = round(float(n.node.metadata[rerank.confidence_key]), 6)
        neighbours.append(entry)
    meta = response.metadata
    return {
        ROW_CASE_ID: Path(args.image).name,
        ROW_IMAGE_PATH: str(Path(args.image).resolve()),
        ROW_QUESTION: args.question,
        **{key: meta[key] for key in keys.RESPONSE_KEYS if key != keys.NEIGHBOURS},
        DIAGNOSE_RESPONSE: response.response,
        keys.NEIGHBOURS: neighbours,
    }


def _provenance(
    args: argparse.Namespace, engine: Any, kb: Any, reader: Any, image_head: str | None, text_head: str | None
) -> dict[str, Any]:
    """The provenance block of this run (knowledge base, encoder, reader, heads) for the viewer's header."""
    from llama_index_lvlm_retriever.outputs.provenance import (
        collect_provenance,
        describe_head,
        describe_knowledge_base,
        describe_model,
    )

    retriever = engine.retriever
    return collect_provenance(
        models={
            "knowledge_base": describe_knowledge_base(kb, args.kb),
            "encoder": describe_model(kb.embed_model),
            "reader": describe_model(reader),
            "image_head": describe_head(getattr(retriever, "image_head", None), image_head),
            "text_head": describe_head(getattr(retriever, "text_head", None), text_head),
        },
    )


def _write_viewer(args: argparse.Namespace, result: dict[str, Any], task: Any, provenance: dict[str, Any]) -> Path:
    """The evidence viewer of this one case: the row layout ``predict`` writes, without gold.

    The header names the models and knowledge base (``provenance``) and the labels by their
    display names (the task's verbalizers).
    """
    from llama_index_lvlm_retriever.evaluation.evidence_viewer import write_evidence_viewer
    from llama_index_lvlm_retriever.evaluation.predict import ROW_CORRECT, ROW_ERROR, ROW_GOLD
    from llama_index_lvlm_retriever.evaluation.viewer_header import (
        label_display_names,
        viewer_header,
    )

    # diagnose --json is already a predictions.jsonl row; an unlabelled one.
    row = {**result, ROW_GOLD: None, ROW_CORRECT: None, ROW_ERROR: None}
    return write_evidence_viewer(
        [row], args.viewer, title=f"Evidence: {Path(args.image).name}", labels=task.labels, images=args.viewer_images,
        label_names=label_display_names(task.labels, getattr(task, "verbalizers", None)),
        provenance=viewer_header(provenance, task=task.name),
    )
