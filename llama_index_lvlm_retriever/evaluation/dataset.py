"""evaluate_dataset: run retrievers and the reader over labelled cases -> ConsistencyReport.

For every system (a retriever) and case: retrieve the top-``k`` knowledge-base pairs, never the
case's own image (``exclude_ids={case.id}`` and ``exclude_self=True``), let the reader score every
label given each pair alone, and hand the per-neighbour distributions to
:func:`~llama_index_lvlm_retriever.evaluation.predictions.evaluate_predictions`, which aggregates them
with the code ``LVLMRerank`` uses and computes the metrics. A closed-book row (the reader without
retrieval) is added by default.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from tqdm.auto import tqdm

from llama_index_lvlm_retriever.aggregation import DEFAULT_TEMPERATURE, AggregationMethod
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.evaluation.predictions import evaluate_predictions
from llama_index_lvlm_retriever.evaluation.protocols import (
    BatchRetriever,
    ReaderLike,
    TaskLike,
    log_probs_array,
)
from llama_index_lvlm_retriever.evaluation.records import CasePrediction
from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport
from llama_index_lvlm_retriever.retriever import (
    META_KB_ID,
    META_KB_METADATA,
    META_LABEL,
    META_SOURCE,
    node_head,
)

__all__ = ["CLOSED_BOOK", "evaluate_dataset"]

logger = logging.getLogger(__name__)

CLOSED_BOOK = "closed-book"
"""Default name of the no-retrieval system."""
# Where plain LlamaIndex retrievers without ImageNodes may keep the image path.
IMAGE_PATH_KEY = "image_path"


def evaluate_dataset(
    cases: Sequence[Case],
    systems: Mapping[str, BatchRetriever | BaseRetriever],
    reader: ReaderLike,
    task: TaskLike | None = None,
    *,
    k: int | None = None,
    closed_book: bool = True,
    closed_book_name: str = CLOSED_BOOK,
    method: AggregationMethod = "weighted",
    temperature: float = DEFAULT_TEMPERATURE,
    baseline: str | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    batch_size: int = 16,
    show_progress: bool = False,
    exclude_self: bool = True,
) -> ConsistencyReport:
    """Evaluate retrieval systems with a reader on labelled cases.

    Args:
        cases: Labelled cases (gold label names in ``case.labels``).
        systems: System name -> retriever. An ``LVLMAwareRetriever`` (anything with
            ``retrieve_batch``) is queried in batches; any other LlamaIndex ``BaseRetriever`` is
            queried per case with ``QueryBundle(case.question, image_path=case.image_path)``. Nodes
            without an image path become text-only candidates. E.g.
            ``{"standard RAG": untrained, "LVLM-aware": trained}``.
        reader: Scores every label given a case and one candidate pair (``reader.score``) or no
            candidate (``reader.score_closed_book``).
        task: The task; default ``reader.task``. Its labels must equal the reader's.
        k: Neighbours read per case: the top ``k`` of what the retriever returns; ``None`` reads all
            of them (for an ``LVLMAwareRetriever``: ``k_image + k_text``, the paper's 2 + 2, fewer when
            both heads return a pair).
        closed_book: Add the reader-without-retrieval row.
        closed_book_name: Name of that row.
        method: Aggregation of the per-neighbour distributions (as in ``LVLMRerank``).
        temperature: Softmax temperature over retrieval scores for ``"weighted"``.
        baseline: System the others are compared with (defines the consistency subsets of the
            comparison); default the first entry of ``systems``.
        n_bootstrap: Bootstrap resamples for every interval.
        confidence: Interval coverage.
        seed: Resampling seed.
        batch_size: Cases per retrieval / reader call.
        show_progress: Show tqdm progress bars.
        exclude_self: Drop knowledge-base pairs that are the case itself (same id, same image
            path, or, for an ``LVLMAwareRetriever``, the same decoded pixels), so a test case that
            also sits in the KB cannot read its own label. Turn off only to measure that leakage.

    Returns:
        The :class:`~llama_index_lvlm_retriever.evaluation.report.ConsistencyReport`.

    Raises:
        ValueError: No cases, unlabelled cases or labels outside the task, duplicate case ids, a
            reader for another task, a retriever returning nothing for a case, log-probabilities
            of the wrong shape, or bad settings.
        TypeError: A system is not a retriever.

    Example:
        .. code-block:: python

            report = evaluate_dataset(
                test_cases,
                {"standard RAG": LVLMAwareRetriever(kb), "LVLM-aware": LVLMAwareRetriever(kb, heads...)},
                reader,
                k=4,
            )
            write_report(report, "eval/")
    """
    task = reader.task if task is None else task
    labels = [str(label) for label in task.labels]
    if [str(label) for label in reader.task.labels] != labels:
        raise ValueError(
            f"the reader scores labels {list(reader.task.labels)} but the task has {labels}; "
            "build the reader for this task"
        )
    _check_inputs(cases, systems, labels, bool(task.multi_label), k, batch_size, closed_book, closed_book_name)
    predictions: dict[str, list[CasePrediction]] = {}
    if closed_book:
        predictions[closed_book_name] = _closed_book(cases, reader, len(labels), batch_size, show_progress)
    for name, retriever in systems.items():
        neighbours = _retrieve(name, retriever, cases, k, batch_size, show_progress, exclude_self)
        predictions[name] = _read(name, cases, neighbours, reader, len(labels), batch_size, show_progress)
    return evaluate_predictions(
        predictions,
        task,
        method=method,
        temperature=temperature,
        baseline=next(iter(systems)) if baseline is None and systems else baseline,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        settings={"k": k, "closed_book": closed_book_name if closed_book else None},
    )


def _check_inputs(
    cases: Sequence[Case],
    systems: Mapping[str, Any],
    labels: list[str],
    multi_label: bool,
    k: int | None,
    batch_size: int,
    closed_book: bool,
    closed_book_name: str,
) -> None:
    if not cases:
        raise ValueError("no cases to evaluate; pass a non-empty list of labelled cases")
    if not systems and not closed_book:
        raise ValueError("nothing to evaluate: no systems and closed_book=False")
    if (k is not None and k < 1) or batch_size < 1:
        raise ValueError(f"k and batch_size must be >= 1, got k={k}, batch_size={batch_size}")
    if closed_book and closed_book_name in systems:
        raise ValueError(
            f"system name {closed_book_name!r} clashes with the closed-book row; rename it or set closed_book_name="
        )
    repeated = sorted(case_id for case_id, n in Counter(c.id for c in cases).items() if n > 1)
    if repeated:
        raise ValueError(f"duplicate case ids {repeated[:5]}; case ids must be unique")
    for case in cases:  # checked before any model runs, so a bad label fails fast
        unknown = [label for label in case.labels if label not in labels]
        if unknown:
            raise ValueError(
                f"case {case.id!r} has gold label(s) {unknown} outside the task's labels {labels}; "
                "fix the case labels or evaluate with the matching task"
            )
        if not case.labels and not multi_label:
            raise ValueError(f"case {case.id!r} has no gold label; evaluation needs labelled cases")
        if len(case.labels) > 1 and not multi_label:
            raise ValueError(
                f"case {case.id!r} has {len(case.labels)} gold labels {list(case.labels)}; a single-label "
                "task needs exactly one per case"
            )
    for name, retriever in systems.items():
        if not isinstance(retriever, (BatchRetriever, BaseRetriever)):
            raise TypeError(
                f"system {name!r} is a {type(retriever).__name__}; pass an LVLMAwareRetriever or a "
                "LlamaIndex BaseRetriever"
            )


def _batches(n: int, batch_size: int, show_progress: bool, desc: str) -> Any:
    starts = range(0, n, batch_size)
    return tqdm(starts, desc=desc, disable=not show_progress, total=len(starts))


def _retrieve(
    name: str,
    retriever: BatchRetriever | BaseRetriever,
    cases: Sequence[Case],
    k: int | None,
    batch_size: int,
    show_progress: bool,
    exclude_self: bool = True,
) -> list[list[NodeWithScore]]:
    """Top-``k`` neighbours per case, the case's own image excluded (unless ``exclude_self`` is off).

    The retrieval question is the case's own (``""`` leaves the query image-only), as a query
    engine would receive it; the task's default question is the reader's business.
    """
    questions = [case.question for case in cases]
    out: list[list[NodeWithScore]] = []
    if isinstance(retriever, BatchRetriever):
        for start in _batches(len(cases), batch_size, show_progress, f"retrieve ({name})"):
            batch = cases[start : start + batch_size]
            out += retriever.retrieve_batch(
                [case.image_path for case in batch],
                questions[start : start + batch_size],
                exclude_ids=[{case.id} if exclude_self else set() for case in batch],
                exclude_self=exclude_self,
            )
    else:
        # Plain retrievers cannot exclude by content; the id and path filter below still applies.
        for case, question in zip(cases, questions):
            out.append(retriever.retrieve(QueryBundle(query_str=question, image_path=case.image_path)))
    if len(out) != len(cases):
        raise ValueError(f"system {name!r} returned {len(out)} result lists for {len(cases)} cases")
    kept = []
    for case, nodes in zip(cases, out):
        own = [n for n in nodes if exclude_self and (_kb_id(n) == case.id or _image_path(n) == case.image_path)]
        if own:
            logger.warning("system %r returned the query image of case %r; dropped it", name, case.id)
        top = [n for n in nodes if not any(n is o for o in own)][:k]
        if not top:
            raise ValueError(
                f"system {name!r} retrieved no neighbour for case {case.id!r} (after excluding the case's "
                "own image); check the knowledge base holds other pairs"
            )
        kept.append(top)
    return kept


def _read(
    name: str,
    cases: Sequence[Case],
    neighbours: list[list[NodeWithScore]],
    reader: ReaderLike,
    n_labels: int,
    batch_size: int,
    show_progress: bool,
) -> list[CasePrediction]:
    """Reader distributions per neighbour; cases are grouped by neighbour count for batching."""
    candidates = [[_kb_item(n, name) for n in nodes] for nodes in neighbours]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, items in enumerate(candidates):
        groups[len(items)].append(i)
    distributions: dict[int, np.ndarray] = {}
    for kk, indices in sorted(groups.items()):
        for start in _batches(len(indices), batch_size, show_progress, f"read ({name}, k={kk})"):
            batch = indices[start : start + batch_size]
            scores = reader.score([cases[i] for i in batch], [candidates[i] for i in batch])
            log_probs = _check_log_probs(log_probs_array(scores), (len(batch), kk, n_labels), name)
            for i, row in zip(batch, np.exp(log_probs)):  # (kk, L) per case
                distributions[i] = row
    out = []
    for i, case in enumerate(cases):
        raw = [n.score for n in neighbours[i]]
        out.append(
            CasePrediction(
                case_id=case.id,
                gold=tuple(case.labels),
                distributions=distributions[i],
                retrieval_scores=None if any(s is None for s in raw) else np.array(raw, dtype=np.float64),
                neighbour_ids=tuple(item.id for item in candidates[i]),
                neighbour_labels=tuple(item.label for item in candidates[i]),
                neighbour_heads=tuple(node_head(n.node) for n in neighbours[i]),
            )
        )
    return out


def _closed_book(
    cases: Sequence[Case], reader: ReaderLike, n_labels: int, batch_size: int, show_progress: bool
) -> list[CasePrediction]:
    out = []
    for start in _batches(len(cases), batch_size, show_progress, "read (closed-book)"):
        batch = cases[start : start + batch_size]
        log_probs = _check_log_probs(
            log_probs_array(reader.score_closed_book(batch)), (len(batch), 1, n_labels), CLOSED_BOOK
        )
        out += [CasePrediction(case.id, tuple(case.labels), np.exp(lp)) for case, lp in zip(batch, log_probs)]
    return out


def _check_log_probs(log_probs: np.ndarray, shape: tuple[int, int, int], name: str) -> np.ndarray:
    if log_probs.shape != shape:
        raise ValueError(
            f"the reader returned log-probabilities of shape {log_probs.shape} for {name!r}; expected "
            f"(n_cases, k, n_labels) = {shape}"
        )
    if np.any(log_probs > 1e-6) or np.any(np.isnan(log_probs)):
        raise ValueError(f"the reader returned values that are not log-probabilities (> 0 or NaN) for {name!r}")
    return np.minimum(log_probs, 0.0)  # clip round-off above log(1) = 0


def _kb_id(node: NodeWithScore) -> str:
    return str(node.node.metadata.get(META_KB_ID, node.node.node_id))


def _image_path(node: NodeWithScore) -> str | None:
    path = getattr(node.node, "image_path", None) or node.node.metadata.get(IMAGE_PATH_KEY)
    return None if path is None else str(path)


def _kb_item(node: NodeWithScore, system: str) -> KBItem:
    """The knowledge-base pair behind a retrieved node, as the reader's candidate.

    A node without an image path becomes a text-only candidate (``image_path=""``), which readers
    show as background text without a retrieved image.
    """
    image_path = _image_path(node) or ""
    if not image_path:
        logger.debug("system %r: node %r has no image path; the reader gets its text only", system, node.node.node_id)
    metadata = node.node.metadata
    label = metadata.get(META_LABEL)
    return KBItem(
        id=_kb_id(node),
        image_path=image_path,
        text=node.node.get_content(metadata_mode=MetadataMode.NONE),
        source=str(metadata.get(META_SOURCE, "")),
        label=None if label is None else str(label),
        metadata=dict(metadata.get(META_KB_METADATA, {})),
    )
