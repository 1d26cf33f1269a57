"""predict: batch diagnosis of unlabelled (or labelled) images, resumable, with an evidence viewer.

For every case: retrieve the neighbours (``LVLMAwareRetriever.retrieve_batch``, one batch of cases
at a time), let the reader score every label given each neighbour alone (one batched
``reader.score`` per batch), and fuse the per-neighbour distributions with the arithmetic
``LVLMRerank`` uses (:mod:`~llama_index_lvlm_retriever.aggregation`): the answer, its probability,
its support among the neighbours (``support``), consistency, and ``abstain`` when the
support is below ``min_support`` (as ``LVLMDiagnosisQueryEngine`` does).

With ``out_dir`` the rows are appended to ``predictions.jsonl`` after every batch (fsynced), so a
killed run resumes where it stopped: a rerun with the same models and settings scores only the
cases without a row. At the end it writes ``predictions.csv``, the evidence viewer
(``evidence.html``) and ``predict_run.json`` (settings, counts and the provenance block).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle
from tqdm.auto import tqdm

from llama_index_lvlm_retriever.aggregation import DEFAULT_TEMPERATURE, AggregationMethod
from llama_index_lvlm_retriever.data.images import ImageLoadError, load_image
from llama_index_lvlm_retriever.data.records import Case
from llama_index_lvlm_retriever.evaluation._prediction_csv import write_predictions_csv
from llama_index_lvlm_retriever.evaluation._prediction_log import PREDICTIONS_JSONL, PredictionLog
from llama_index_lvlm_retriever.evaluation._prediction_rows import (
    NEIGHBOUR_IMAGE_PATH,
    NEIGHBOUR_KB_LABEL,
    NEIGHBOUR_TEXT,
    ROW_CASE_ID,
    ROW_CORRECT,
    ROW_ERROR,
    ROW_GOLD,
    ROW_IMAGE_PATH,
    ROW_QUESTION,
    case_row,
    error_row,
    kb_item,
)
from llama_index_lvlm_retriever.evaluation.evidence_viewer import (
    ViewerImages,
    write_evidence_viewer,
)
from llama_index_lvlm_retriever.evaluation.protocols import (
    BatchRetriever,
    ReaderLike,
    TaskLike,
    log_probs_array,
)
from llama_index_lvlm_retriever.evaluation.viewer_header import label_display_names, viewer_header
from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.outputs.provenance import (
    PROVENANCE_KEY,
    collect_provenance,
    describe_head,
    describe_knowledge_base,
    describe_model,
    utc_now,
)
from llama_index_lvlm_retriever.storage.files import atomic_write_json

__all__ = [
    "EVIDENCE_HTML",
    "NEIGHBOUR_IMAGE_PATH",
    "NEIGHBOUR_KB_LABEL",
    "NEIGHBOUR_TEXT",
    "PREDICTIONS_CSV",
    "PREDICTIONS_JSONL",
    "ROW_CASE_ID",
    "ROW_CORRECT",
    "ROW_ERROR",
    "ROW_GOLD",
    "ROW_IMAGE_PATH",
    "ROW_QUESTION",
    "RUN_FILE",
    "predict",
]

logger = logging.getLogger(__name__)

PREDICTIONS_CSV = "predictions.csv"
"""One line per case, the neighbours flattened into numbered columns."""
EVIDENCE_HTML = "evidence.html"
"""The self-contained evidence viewer."""
RUN_FILE = "predict_run.json"
"""Settings, counts and provenance of the run."""

# Identifies a finished row when resuming: the same case, image and question.
_ROW_IDENTITY = (ROW_CASE_ID, ROW_IMAGE_PATH, ROW_QUESTION)


def predict(
    cases: Sequence[Case],
    retriever: BatchRetriever | BaseRetriever,
    reader: ReaderLike,
    *,
    task: TaskLike | None = None,
    out_dir: str | Path | None = None,
    k: int | None = None,
    method: AggregationMethod = "weighted",
    temperature: float = DEFAULT_TEMPERATURE,
    min_support: float = 1.0,
    exclude_self: bool = False,
    batch_size: int = 16,
    resume: bool = True,
    viewer: bool = True,
    viewer_images: ViewerImages = "auto",
    provenance: Mapping[str, Any] | None = None,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """Answer every case with retrieval + reading; optionally write the rows, CSV and viewer.

    Args:
        cases: Query cases; gold labels are optional (``correct`` is filled where present).
        retriever: An ``LVLMAwareRetriever`` (queried in batches) or any LlamaIndex retriever
            (queried per case with ``QueryBundle(question, image_path=...)``).
        reader: Scores every label given a case and one neighbour (``reader.score``, batched).
        task: The task; default ``reader.task`` (the labels must match the reader's).
        out_dir: Folder for ``predictions.jsonl`` (resumable), ``predictions.csv``,
            ``evidence.html`` and ``predict_run.json``; ``None`` writes nothing.
        k: Neighbours read per case: the top ``k`` the retriever returns (``None``: all of them,
            ``k_image + k_text`` for an ``LVLMAwareRetriever``).
        method: Aggregation of the per-neighbour distributions (as in ``LVLMRerank``).
        temperature: Softmax temperature over retrieval scores (``"weighted"``).
        min_support: ``abstain`` is ``True`` when the share of neighbours whose own prediction is
            the answer is below this, in ``(0, 1]`` (1.0: abstain unless all agree).
        exclude_self: Skip knowledge-base pairs whose image is the query image (and whose id is
            the case id); for queries that may be in the knowledge base.
        batch_size: Cases per retrieval / reader call (and per fsynced append).
        resume: Reuse the finished rows in ``out_dir`` of a run with the same models and settings.
        viewer: Write ``evidence.html``.
        viewer_images: How the viewer holds images: ``"embed"`` (data URIs, one file),
            ``"copy"`` (thumbnails in ``evidence_files/`` beside it), ``"auto"`` (embed up to
            200 cases).
        provenance: A block from :func:`~llama_index_lvlm_retriever.outputs.provenance.collect_provenance`
            (the CLI adds its command and inputs); the models are filled in here. Default: a new one.
        show_progress: Show a progress bar over cases.

    Returns:
        One dict per case, in case order (keys of :mod:`~llama_index_lvlm_retriever.outputs.metadata_keys`,
        schema ``predictions.schema.json``): ``case_id``, ``image_path``, ``question``, ``gold``,
        ``answer`` (a list for multi-label tasks), ``probability``, ``distribution``, ``support``,
        ``weighted_support``, ``consistent``, ``agreement``, ``vote_entropy``, ``n_distinct``,
        ``abstain``, ``correct``, ``error`` and ``neighbours`` (per neighbour: ``kb_id``, ``head``,
        ``retrieval_score``, ``prediction`` (the reader's answer given it alone), ``probability``,
        ``image_path``, ``text``, ``kb_label``).

    Raises:
        ValueError: No cases, duplicate case ids, a reader for another task, bad settings, an
            ``out_dir`` holding predictions of other models or settings, or reader output of the
            wrong shape.
        TypeError: ``retriever`` is not a retriever.

    Example:
        .. code-block:: python

            from llama_index_lvlm_retriever.data.folders import cases_from_folder
            rows = predict(cases_from_folder("new_studies/"), retriever, reader, out_dir="preds/",
                           min_support=0.75, show_progress=True)
            [(r["case_id"], r["answer"], r["abstain"]) for r in rows]
    """
    task = reader.task if task is None else task
    labels = tuple(str(label) for label in task.labels)
    multi_label = bool(task.multi_label)
    _check_inputs(cases, retriever, reader, labels, k, batch_size, min_support, temperature)
    started = utc_now()
    models = _describe_models(retriever, reader)
    settings = {
        "k": k, "method": method, "temperature": temperature, "min_support": min_support,
        "exclude_self": exclude_self, "labels": list(labels), "multi_label": multi_label,
        "task": str(getattr(task, "name", "")),
    }
    log = None
    if out_dir is not None:
        plan = {"settings": settings, "models": models}
        fingerprint = hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]
        log = PredictionLog(Path(out_dir), fingerprint, plan, [c.id for c in cases], resume=resume)
    by_id = {case.id: case for case in cases}
    done = {} if log is None else {cid: row for cid, row in log.done.items() if _same_case(row, by_id[cid])}
    todo = [case for case in cases if case.id not in done]
    bar = tqdm(total=len(cases), initial=len(cases) - len(todo), desc="predict", unit="case", disable=not show_progress)
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            rows = _predict_batch(batch, retriever, reader, labels, multi_label, settings)
            if log is not None:
                log.append(rows)
            done.update((row[ROW_CASE_ID], row) for row in rows)
            bar.update(len(batch))
    finally:
        bar.close()
    ordered = [done[case.id] for case in cases]
    if out_dir is not None and log is not None:
        _write_outputs(
            Path(out_dir), ordered, log, settings, models, provenance, started, viewer, viewer_images, labels,
            label_display_names(labels, getattr(task, "verbalizers", None)),
        )
    return ordered


def _check_inputs(
    cases: Sequence[Case],
    retriever: Any,
    reader: ReaderLike,
    labels: tuple[str, ...],
    k: int | None,
    batch_size: int,
    min_support: float,
    temperature: float,
) -> None:
    if not cases:
        raise ValueError("no cases to predict; pass a non-empty list of cases")
    if [str(label) for label in reader.task.labels] != list(labels):
        raise ValueError(
            f"the reader scores labels {list(reader.task.labels)} but the task has {list(labels)}; "
            "build the reader for this task"
        )
    if (k is not None and k < 1) or batch_size < 1:
        raise ValueError(f"k and batch_size must be >= 1, got k={k}, batch_size={batch_size}")
    if not 0.0 < min_support <= 1.0:
        raise ValueError(f"min_support must be in (0, 1], got {min_support}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise ValueError(f"duplicate case id {case.id!r}; case ids must be unique")
        seen.add(case.id)
    if not isinstance(retriever, (BatchRetriever, BaseRetriever)):
        raise TypeError(f"retriever is a {type(retriever).__name__}; pass an LVLMAwareRetriever or a LlamaIndex BaseRetriever")


def _describe_models(retriever: Any, reader: Any) -> dict[str, Any]:
    """Identities of the KB, encoder, heads, retrieval settings and reader (duck-typed)."""
    kb = getattr(retriever, "knowledge_base", None)
    config = getattr(retriever, "config", None)
    dump = getattr(config, "model_dump", None)
    retrieval = {key: value for key, value in (dump() if callable(dump) else {}).items() if key != "show_progress"}
    out: dict[str, Any] = {
        "retriever": {"class_name": type(retriever).__name__, **retrieval},
        "knowledge_base": describe_knowledge_base(kb),
        "encoder": describe_model(getattr(kb, "embed_model", None)),
        "reader": describe_model(reader),
    }
    if hasattr(retriever, "image_head") or hasattr(retriever, "text_head"):
        out["image_head"] = describe_head(getattr(retriever, "image_head", None))
        out["text_head"] = describe_head(getattr(retriever, "text_head", None))
    events = getattr(retriever, "head_kb_events", None)
    if events:  # heads used on a KB other than their training one (warned at construction)
        out["head_kb_events"] = dict(events)
    return out


def _same_case(row: Mapping[str, Any], case: Case) -> bool:
    """A finished row counts for ``case`` only if it was computed for the same image and question."""
    return all(row.get(key) == value for key, value in zip(_ROW_IDENTITY, (case.id, case.image_path, case.question)))


def _predict_batch(
    batch: Sequence[Case],
    retriever: Any,
    reader: ReaderLike,
    labels: tuple[str, ...],
    multi_label: bool,
    settings: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Rows of one batch of cases, in batch order."""
    errors: dict[str, str] = {}
    for case in batch:
        try:
            load_image(case.image_path, name=f"case {case.id!r}")
        except (ImageLoadError, OSError) as err:
            logger.warning("case %r: %s; no answer", case.id, err)
            errors[case.id] = f"unreadable image: {err}"
    readable = [case for case in batch if case.id not in errors]
    neighbours = dict(zip((c.id for c in readable), _retrieve(retriever, readable, settings)))
    for case in readable:
        if not neighbours[case.id]:
            errors[case.id] = "no neighbour retrieved (after excluding the query itself)"
    groups: dict[int, list[Case]] = defaultdict(list)
    for case in readable:
        if case.id not in errors:
            groups[len(neighbours[case.id])].append(case)
    probs: dict[str, np.ndarray] = {}
    for kk, group in sorted(groups.items()):
        candidates = [[kb_item(n) for n in neighbours[case.id]] for case in group]
        log_probs = log_probs_array(reader.score(group, candidates))
        if log_probs.shape != (len(group), kk, len(labels)):
            raise ValueError(
                f"the reader returned log-probabilities of shape {log_probs.shape}; expected "
                f"(n_cases, k, n_labels) = {(len(group), kk, len(labels))}"
            )
        for case, row in zip(group, np.exp(np.minimum(log_probs, 0.0))):  # (kk, L) per case
            probs[case.id] = row
    out = []
    for case in batch:
        if case.id in errors:
            out.append(error_row(case, errors[case.id]))
        else:
            out.append(case_row(case, neighbours[case.id], probs[case.id], labels, multi_label, settings))
    return out


def _retrieve(retriever: Any, cases: Sequence[Case], settings: Mapping[str, Any]) -> list[list[NodeWithScore]]:
    if not cases:
        return []
    exclude_self = bool(settings["exclude_self"])
    if isinstance(retriever, BatchRetriever):
        results = retriever.retrieve_batch(
            [case.image_path for case in cases],
            [case.question for case in cases],
            exclude_ids=[{case.id} if exclude_self else set() for case in cases],
            exclude_self=exclude_self,
        )
    else:
        results = [retriever.retrieve(QueryBundle(query_str=c.question, image_path=c.image_path)) for c in cases]
    k = settings["k"]
    return [list(nodes)[:k] for nodes in results]


def _write_outputs(
    out_dir: Path,
    rows: list[dict[str, Any]],
    log: PredictionLog,
    settings: Mapping[str, Any],
    models: Mapping[str, Any],
    provenance: Mapping[str, Any] | None,
    started: str,
    viewer: bool,
    viewer_images: ViewerImages,
    labels: tuple[str, ...],
    label_names: Mapping[str, str],
) -> None:
    log.rewrite(rows)  # case order, stale rows of removed cases dropped
    write_predictions_csv(rows, out_dir / PREDICTIONS_CSV)
    block = dict(provenance) if provenance is not None else collect_provenance(started_at=started)
    block["models"] = {**dict(block.get("models") or {}), **models}
    block["ended_at"] = utc_now()
    if viewer:
        write_evidence_viewer(
            rows, out_dir / EVIDENCE_HTML, labels=labels, images=viewer_images, label_names=label_names,
            provenance=viewer_header(block, task=str(settings.get("task") or "") or None),
        )
    answered = [row for row in rows if row[ROW_ERROR] is None]
    scored = [row for row in answered if row[ROW_CORRECT] is not None]
    summary = {
        "n_cases": len(rows),
        "n_errors": len(rows) - len(answered),
        "n_abstain": sum(bool(row[keys.ABSTAIN]) for row in rows),
        "n_inconsistent": sum(not row[keys.CONSISTENT] for row in answered),
        "n_with_gold": len(scored),
        "accuracy": (sum(bool(row[ROW_CORRECT]) for row in scored) / len(scored)) if scored else None,
    }
    atomic_write_json(out_dir / RUN_FILE, {"settings": dict(settings), "summary": summary, PROVENANCE_KEY: block})
