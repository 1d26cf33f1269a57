"""The row of one predicted case: per-neighbour distributions fused as ``LVLMRerank`` fuses them.

Private module of :mod:`~llama_index_lvlm_retriever.evaluation.predict`, which re-exports the
row keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llama_index.core.schema import MetadataMode, NodeWithScore

from llama_index_lvlm_retriever.aggregation import (
    aggregate,
    answer_support,
    consistency,
    label_set_probability,
    neighbour_prediction,
    predict_label,
    predict_label_set,
)
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.retriever import META_KB_ID, META_LABEL, node_head

# Row keys besides the answer keys (the names live in metadata_keys, one vocabulary for every output).
ROW_CASE_ID = keys.CASE_ID
ROW_IMAGE_PATH = keys.IMAGE_PATH
ROW_QUESTION = keys.QUESTION
ROW_GOLD = keys.GOLD
"""Gold label names (a list), ``None`` for an unlabelled case."""
ROW_CORRECT = keys.CORRECT
"""Whether the answer equals the gold label (set); ``None`` without gold or without an answer."""
ROW_ERROR = keys.ERROR
"""Why a case has no answer (unreadable image, nothing retrieved); ``None`` otherwise."""
NEIGHBOUR_IMAGE_PATH = keys.NEIGHBOUR_IMAGE_PATH
NEIGHBOUR_TEXT = keys.NEIGHBOUR_TEXT
NEIGHBOUR_KB_LABEL = keys.NEIGHBOUR_KB_LABEL
_DIGITS = 6  # rounding of probabilities and scores in the rows: far below any decision threshold


def kb_item(node: NodeWithScore) -> KBItem:
    metadata = node.node.metadata
    label = metadata.get(META_LABEL)
    return KBItem(
        id=_kb_id(node),
        image_path=str(getattr(node.node, "image_path", None) or ""),
        text=node.node.get_content(metadata_mode=MetadataMode.NONE),
        label=None if label is None else str(label),
    )


def _kb_id(node: NodeWithScore) -> str:
    return str(node.node.metadata.get(META_KB_ID, node.node.node_id))


def case_row(
    case: Case,
    nodes: Sequence[NodeWithScore],
    probs: np.ndarray,
    labels: tuple[str, ...],
    multi_label: bool,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Aggregate one case's ``(k, L)`` distributions as ``LVLMRerank`` does."""
    raw = [n.score for n in nodes]
    scores = None if any(s is None for s in raw) else np.asarray(raw, dtype=np.float64)  # (k,)
    method, temperature = settings["method"], float(settings["temperature"])
    distribution = aggregate(probs, scores, method, temperature, multi_label)  # (L,)
    stats = consistency(probs, multi_label)
    answer: str | list[str]
    if multi_label:
        index: int | tuple[int, ...] = predict_label_set(distribution)
        answer = [labels[i] for i in index]
        probability = label_set_probability(distribution, index)
    else:
        index = predict_label(distribution)
        answer = labels[index]
        probability = float(distribution[index])
    support, weighted = answer_support(probs, index, scores, temperature, multi_label)
    neighbours = []
    for node, p in zip(nodes, probs):
        prediction, confidence = neighbour_prediction(p, labels, multi_label)
        item = kb_item(node)
        neighbours.append(
            {
                keys.NEIGHBOUR_KB_ID: item.id,
                keys.NEIGHBOUR_HEAD: node_head(node.node),
                keys.NEIGHBOUR_RETRIEVAL_SCORE: None if node.score is None else round(float(node.score), _DIGITS),
                keys.NEIGHBOUR_PREDICTION: prediction,
                keys.NEIGHBOUR_PROBABILITY: round(confidence, _DIGITS),
                NEIGHBOUR_IMAGE_PATH: item.image_path or None,
                NEIGHBOUR_TEXT: item.text,
                NEIGHBOUR_KB_LABEL: item.label,
            }
        )
    return {
        **_case_fields(case),
        keys.ANSWER: answer,
        keys.PROBABILITY: round(probability, _DIGITS),
        keys.DISTRIBUTION: {label: round(float(x), _DIGITS) for label, x in zip(labels, distribution)},
        keys.SUPPORT: round(support, _DIGITS),
        keys.WEIGHTED_SUPPORT: round(weighted, _DIGITS),
        keys.CONSISTENT: bool(stats.consistent),
        keys.AGREEMENT: round(float(stats.agreement), _DIGITS),
        keys.VOTE_ENTROPY: round(float(stats.vote_entropy), _DIGITS),
        keys.N_DISTINCT: int(stats.n_distinct),
        keys.ABSTAIN: bool(support < float(settings["min_support"]) - 1e-12),  # 1e-12: float round-off of k-fractions
        ROW_CORRECT: _correct(answer, case.labels),
        ROW_ERROR: None,
        keys.NEIGHBOURS: neighbours,
    }


def error_row(case: Case, error: str) -> dict[str, Any]:
    empty: dict[str, Any] = {key: None for key in (keys.ANSWER, keys.PROBABILITY, keys.DISTRIBUTION, keys.SUPPORT,
                                                    keys.WEIGHTED_SUPPORT, keys.CONSISTENT, keys.AGREEMENT,
                                                    keys.VOTE_ENTROPY, keys.N_DISTINCT)}
    return {**_case_fields(case), **empty, keys.ABSTAIN: True, ROW_CORRECT: None, ROW_ERROR: error,
            keys.NEIGHBOURS: []}


def _case_fields(case: Case) -> dict[str, Any]:
    return {ROW_CASE_ID: case.id, ROW_IMAGE_PATH: case.image_path, ROW_QUESTION: case.question,
            ROW_GOLD: list(case.labels) if case.labels else None}


def _correct(answer: str | list[str], gold: Sequence[str]) -> bool | None:
    if not gold:
        return None
    if isinstance(answer, list):
        return sorted(answer) == sorted(gold)
    return len(gold) == 1 and answer == gold[0]




