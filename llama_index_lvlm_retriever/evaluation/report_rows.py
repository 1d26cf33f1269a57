"""Evidence-viewer rows from an evaluation report: one system's cases with gold labels.

:func:`~llama_index_lvlm_retriever.evaluation.evidence_viewer.write_evidence_viewer` takes rows
shaped like ``predict``'s; this maps a :class:`ConsistencyReport`'s per-case results onto them, so
``evaluate`` writes the same viewer, filterable by correctness.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llama_index_lvlm_retriever.aggregation import neighbour_prediction
from llama_index_lvlm_retriever.data.records import Case, KBItem
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
)
from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport
from llama_index_lvlm_retriever.outputs import metadata_keys as keys

__all__ = ["report_viewer_rows"]

logger = logging.getLogger(__name__)


def report_viewer_rows(
    report: ConsistencyReport,
    system: str,
    cases: Sequence[Case],
    lookup: Callable[[str], KBItem] | None = None,
    *,
    min_support: float | None = None,
) -> list[dict[str, Any]]:
    """The viewer rows of one system of an evaluation report, in the order of ``cases``.

    Args:
        report: The evaluation report.
        system: One of ``report.systems``.
        cases: The evaluated cases (for the query image and question).
        lookup: Knowledge-base id -> item (e.g. ``knowledge_base.get``), for each neighbour's
            image and caption; ``None`` or an unknown id shows the neighbour without them.
        min_support: Mark cases with answer support below this as abstaining; ``None`` leaves the
            abstain flag unset (an evaluation answers every case).

    Returns:
        One dict per case with the keys ``write_evidence_viewer`` reads, ``correct`` set.

    Raises:
        KeyError: ``system`` is not in the report, or a case has no result in it.
    """
    if system not in report.rows:
        raise KeyError(f"system {system!r} is not in the report; it has {list(report.systems)}")
    results = {result.case_id: result for result in report.rows[system]}
    rows = []
    for case in cases:
        if case.id not in results:
            raise KeyError(f"case {case.id!r} has no result for system {system!r} in the report")
        result = results[case.id]
        neighbours = []
        heads = result.neighbour_heads or (None,) * len(result.neighbour_ids)
        scores = result.retrieval_scores or (None,) * len(result.neighbour_ids)
        for kb_id, head, score, dist, kb_label in zip(
            result.neighbour_ids, heads, scores, result.neighbour_distributions,
            result.neighbour_labels or (None,) * len(result.neighbour_ids),
        ):
            prediction, confidence = neighbour_prediction(np.asarray(dist), report.labels, report.multi_label)
            item = _find(lookup, kb_id)
            neighbours.append({
                keys.NEIGHBOUR_KB_ID: kb_id,
                keys.NEIGHBOUR_HEAD: head,
                keys.NEIGHBOUR_RETRIEVAL_SCORE: score,
                keys.NEIGHBOUR_PREDICTION: prediction,
                keys.NEIGHBOUR_PROBABILITY: confidence,
                NEIGHBOUR_IMAGE_PATH: (item.image_path or None) if item else None,
                NEIGHBOUR_TEXT: item.text if item else "",
                NEIGHBOUR_KB_LABEL: kb_label,
            })
        answer: str | list[str] = list(result.prediction) if report.multi_label else result.prediction[0]
        rows.append({
            ROW_CASE_ID: case.id,
            ROW_IMAGE_PATH: case.image_path,
            ROW_QUESTION: case.question,
            ROW_GOLD: list(result.gold),
            keys.ANSWER: answer,
            keys.PROBABILITY: result.probability,
            keys.DISTRIBUTION: dict(zip(report.labels, result.distribution)),
            keys.SUPPORT: result.support,
            keys.WEIGHTED_SUPPORT: result.weighted_support,
            keys.CONSISTENT: result.consistent,
            keys.ABSTAIN: None if min_support is None else bool(result.support < min_support - 1e-12),
            ROW_CORRECT: bool(result.correct),
            ROW_ERROR: None,
            keys.NEIGHBOURS: neighbours,
        })
    return rows


def _find(lookup: Callable[[str], KBItem] | None, kb_id: str) -> KBItem | None:
    if lookup is None:
        return None
    try:
        return lookup(kb_id)
    except KeyError:
        logger.debug("neighbour %r is not in the knowledge base; the viewer shows it without image", kb_id)
        return None
