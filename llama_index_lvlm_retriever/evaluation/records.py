"""Per-case records of an evaluation: the reader's per-neighbour output in, one scored row out.

:class:`CasePrediction` is what a system produced for a case (one reader distribution per
retrieved neighbour); :func:`score_case` turns it into a :class:`CaseResult` with the aggregated
answer and the consistency statistics, using :mod:`llama_index_lvlm_retriever.aggregation`, the
same code ``LVLMRerank`` runs at inference time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llama_index_lvlm_retriever.aggregation import (
    DEFAULT_TEMPERATURE,
    AggregationMethod,
    aggregate,
    answer_support,
    consistency,
    label_set_from_code,
    predict_label,
    predict_label_set,
)
from llama_index_lvlm_retriever.outputs import metadata_keys as keys

__all__ = ["CasePrediction", "CaseResult", "score_case"]

# Evaluation-row keys besides those of metadata_keys: per-neighbour columns (one entry per
# neighbour, named ``neighbour_<neighbour key>s``) and the per-case extras of an evaluation.
NEIGHBOUR_KB_IDS = f"neighbour_{keys.NEIGHBOUR_KB_ID}s"
NEIGHBOUR_KB_LABELS = f"neighbour_{keys.NEIGHBOUR_KB_LABEL}s"
NEIGHBOUR_RETRIEVAL_SCORES = f"neighbour_{keys.NEIGHBOUR_RETRIEVAL_SCORE}s"
NEIGHBOUR_PREDICTIONS = f"neighbour_{keys.NEIGHBOUR_PREDICTION}s"
NEIGHBOUR_HEADS = f"neighbour_{keys.NEIGHBOUR_HEAD}s"
NEIGHBOUR_DISTRIBUTIONS = "neighbour_distributions"
NEIGHBOUR_CORRECT = "neighbour_correct"
MAJORITY = "majority"
HEAD_CORRECT = "head_correct"
# Row keys of report.json files written before the vocabulary was unified -> today's keys.
_OLD_ROW_KEYS = {
    "prediction": keys.ANSWER,
    "neighbour_ids": NEIGHBOUR_KB_IDS,
    "neighbour_labels": NEIGHBOUR_KB_LABELS,
    "retrieval_scores": NEIGHBOUR_RETRIEVAL_SCORES,
}


@dataclass(frozen=True, eq=False)
class CasePrediction:
    """What one system produced for one case, before aggregation.

    Args:
        case_id: Id of the case (the same id across systems).
        gold: Gold label names (exactly one for single-label tasks).
        distributions: ``(k, n_labels)`` reader probabilities given each neighbour alone
            (multi-label: per-label yes-probabilities). ``k == 1`` for a closed-book system.
        retrieval_scores: ``(k,)`` retrieval scores of the neighbours, or ``None`` (uniform weights).
        neighbour_ids: Knowledge-base ids of the ``k`` neighbours (empty when there are none,
            e.g. closed-book).
        neighbour_labels: Knowledge-base labels of the neighbours (``None`` where unknown); empty
            when unknown for all.
        neighbour_heads: Which retriever head found each neighbour (``"image"``/``"text"``, ``None``
            where unknown); empty when unknown for all.

    Example:
        >>> import numpy as np
        >>> CasePrediction("c1", ("yes",), np.array([[0.2, 0.8], [0.6, 0.4]]), np.array([0.9, 0.8]),
        ...                ("kb1", "kb2"), ("yes", "no")).distributions.shape
        (2, 2)
    """

    case_id: str
    gold: tuple[str, ...]
    distributions: np.ndarray
    retrieval_scores: np.ndarray | None = None
    neighbour_ids: tuple[str, ...] = ()
    neighbour_labels: tuple[str | None, ...] = ()
    neighbour_heads: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class CaseResult:
    """One scored row: a case under one system.

    Label values are names. ``prediction``, ``majority`` and each ``neighbour_predictions`` entry
    are tuples of names: one name for single-label tasks, the predicted set (possibly empty) for
    multi-label tasks.

    Args:
        case_id: Id of the case.
        gold: Gold label names.
        prediction: The aggregated answer.
        correct: ``prediction`` equals the gold label (multi-label: the gold set exactly).
        probability: Aggregated probability of ``prediction`` (multi-label: of exactly that set,
            labels taken as independent).
        distribution: Aggregated ``(n_labels,)`` probabilities.
        neighbour_ids: Knowledge-base ids of the neighbours (may be empty).
        neighbour_labels: Knowledge-base labels of the neighbours (may be empty).
        retrieval_scores: Retrieval scores of the neighbours, or ``None``.
        neighbour_distributions: ``(k, n_labels)`` reader probabilities per neighbour.
        neighbour_predictions: The reader's answer given each neighbour alone.
        neighbour_correct: Whether each of those answers is correct.
        consistent: All neighbours led to the same answer.
        agreement: Share of neighbours voting for the majority answer.
        vote_entropy: Normalised vote entropy in ``[0, 1]``.
        n_distinct: Number of distinct answers among the neighbours.
        majority: The majority answer (ties broken by summed probability).
        neighbour_heads: The retriever head that found each neighbour (may be empty).
        support: Share of neighbours whose own answer is ``prediction`` (the answer shown; unlike
            ``agreement``, which backs the majority answer).
        weighted_support: The same share weighted by the retrieval weights.
        head_correct: Per head (``"image"``, ``"text"``): whether the answer aggregated from that
            head's neighbours alone is correct, the paper's "acc img" / "acc text"; a head
            with no neighbour for the case is absent.
    """

    case_id: str
    gold: tuple[str, ...]
    prediction: tuple[str, ...]
    correct: bool
    probability: float
    distribution: tuple[float, ...]
    neighbour_ids: tuple[str, ...]
    neighbour_labels: tuple[str | None, ...]
    retrieval_scores: tuple[float, ...] | None
    neighbour_distributions: tuple[tuple[float, ...], ...]
    neighbour_predictions: tuple[tuple[str, ...], ...]
    neighbour_correct: tuple[bool, ...]
    consistent: bool
    agreement: float
    vote_entropy: float
    n_distinct: int
    majority: tuple[str, ...]
    neighbour_heads: tuple[str | None, ...] = ()
    support: float = 1.0
    weighted_support: float = 1.0
    head_correct: dict[str, bool] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Number of neighbours (reader passes) behind this row."""
        return len(self.neighbour_distributions)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists), in the output vocabulary of ``metadata_keys``.

        The case-level keys are those of a ``predictions.jsonl`` row (``answer``, ``probability``,
        ``support``, ...; ``answer`` is always a list here and ``distribution`` a list in the
        report's label order); the neighbours are columns ``neighbour_<key>s`` (``neighbour_kb_ids``,
        ``neighbour_kb_labels``, ``neighbour_predictions``, ...), one entry per neighbour.
        """
        return {
            keys.CASE_ID: self.case_id,
            keys.GOLD: list(self.gold),
            keys.ANSWER: list(self.prediction),
            keys.CORRECT: self.correct,
            keys.PROBABILITY: self.probability,
            keys.DISTRIBUTION: list(self.distribution),
            NEIGHBOUR_KB_IDS: list(self.neighbour_ids),
            NEIGHBOUR_KB_LABELS: list(self.neighbour_labels),
            NEIGHBOUR_RETRIEVAL_SCORES: None if self.retrieval_scores is None else list(self.retrieval_scores),
            NEIGHBOUR_DISTRIBUTIONS: [list(row) for row in self.neighbour_distributions],
            NEIGHBOUR_PREDICTIONS: [list(p) for p in self.neighbour_predictions],
            NEIGHBOUR_CORRECT: list(self.neighbour_correct),
            keys.CONSISTENT: self.consistent,
            keys.AGREEMENT: self.agreement,
            keys.VOTE_ENTROPY: self.vote_entropy,
            keys.N_DISTINCT: self.n_distinct,
            MAJORITY: list(self.majority),
            NEIGHBOUR_HEADS: list(self.neighbour_heads),
            keys.SUPPORT: self.support,
            keys.WEIGHTED_SUPPORT: self.weighted_support,
            HEAD_CORRECT: dict(self.head_correct),
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> CaseResult:
        """Inverse of :meth:`to_dict`; also reads rows written before the vocabulary was unified."""
        record = {_OLD_ROW_KEYS.get(key, key): value for key, value in record.items()}
        scores = record[NEIGHBOUR_RETRIEVAL_SCORES]
        return cls(
            case_id=str(record[keys.CASE_ID]),
            gold=tuple(record[keys.GOLD]),
            prediction=tuple(record[keys.ANSWER]),
            correct=bool(record[keys.CORRECT]),
            probability=float(record[keys.PROBABILITY]),
            distribution=tuple(float(x) for x in record[keys.DISTRIBUTION]),
            neighbour_ids=tuple(record[NEIGHBOUR_KB_IDS]),
            neighbour_labels=tuple(record[NEIGHBOUR_KB_LABELS]),
            retrieval_scores=None if scores is None else tuple(float(x) for x in scores),
            neighbour_distributions=tuple(
                tuple(float(x) for x in row) for row in record[NEIGHBOUR_DISTRIBUTIONS]
            ),
            neighbour_predictions=tuple(tuple(p) for p in record[NEIGHBOUR_PREDICTIONS]),
            neighbour_correct=tuple(bool(x) for x in record[NEIGHBOUR_CORRECT]),
            consistent=bool(record[keys.CONSISTENT]),
            agreement=float(record[keys.AGREEMENT]),
            vote_entropy=float(record[keys.VOTE_ENTROPY]),
            n_distinct=int(record[keys.N_DISTINCT]),
            majority=tuple(record[MAJORITY]),
            neighbour_heads=tuple(record.get(NEIGHBOUR_HEADS, ())),
            support=float(record.get(keys.SUPPORT, 1.0)),
            weighted_support=float(record.get(keys.WEIGHTED_SUPPORT, 1.0)),
            head_correct={str(h): bool(v) for h, v in (record.get(HEAD_CORRECT) or {}).items()},
        )


def score_case(
    prediction: CasePrediction,
    labels: Sequence[str],
    multi_label: bool,
    method: AggregationMethod = "weighted",
    temperature: float = DEFAULT_TEMPERATURE,
    system: str = "",
) -> CaseResult:
    """Aggregate one case's per-neighbour distributions and score the answer against the gold.

    Args:
        prediction: The system's per-neighbour output for the case.
        labels: The task's label names, in the order of the distributions' last axis.
        multi_label: Whether the distributions are per-label yes-probabilities.
        method: Aggregation method (see :func:`~llama_index_lvlm_retriever.aggregation.aggregate`).
        temperature: Softmax temperature over retrieval scores for ``"weighted"``.
        system: System name, used in error messages only.

    Returns:
        The scored :class:`CaseResult`.

    Raises:
        ValueError: The gold labels are not in ``labels`` (or not exactly one for a single-label
            task), the distributions do not have ``len(labels)`` columns, or the neighbour ids,
            labels or scores do not have one entry per neighbour.
    """
    where = f"case {prediction.case_id!r}" + (f" of system {system!r}" if system else "")
    _check_gold(prediction, labels, multi_label, where)
    p = np.asarray(prediction.distributions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(labels) or p.shape[0] == 0:
        raise ValueError(
            f"{where}: distributions must have shape (k >= 1, {len(labels)} labels), got {p.shape}"
        )
    k = p.shape[0]
    for name, values in (
        ("neighbour_ids", prediction.neighbour_ids),
        ("neighbour_labels", prediction.neighbour_labels),
        ("neighbour_heads", prediction.neighbour_heads),
    ):
        if values and len(values) != k:
            raise ValueError(
                f"{where}: {name} has {len(values)} entries for {k} neighbours; give one per neighbour or none"
            )
    scores = prediction.retrieval_scores
    try:
        aggregated = aggregate(p, scores, method, temperature, multi_label)
        stats = consistency(p, multi_label)
        head_correct = _head_correct(prediction, p, labels, multi_label, method, temperature)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error
    gold = tuple(prediction.gold)
    if multi_label:
        predicted = predict_label_set(aggregated)
        answer = tuple(labels[i] for i in predicted)
        chosen = np.isin(np.arange(len(labels)), predicted)  # (L,) labels in the predicted set
        probability = float(np.prod(np.where(chosen, aggregated, 1.0 - aggregated)))
        neighbour_answers = tuple(tuple(labels[i] for i in predict_label_set(row)) for row in p)
        majority = tuple(labels[i] for i in label_set_from_code(stats.majority_label))
        gold_set = set(gold)
        correct = set(answer) == gold_set
        neighbour_correct = tuple(set(a) == gold_set for a in neighbour_answers)
    else:
        index = predict_label(aggregated)
        answer = (labels[index],)
        probability = float(aggregated[index])
        neighbour_answers = tuple((labels[v],) for v in stats.votes)
        majority = (labels[stats.majority_label],)
        correct = answer == gold
        neighbour_correct = tuple(a == gold for a in neighbour_answers)
    answer_index: int | tuple[int, ...] = (
        tuple(labels.index(name) for name in answer) if multi_label else labels.index(answer[0])
    )
    support, weighted_support = answer_support(p, answer_index, scores, temperature, multi_label)
    return CaseResult(
        case_id=prediction.case_id,
        gold=gold,
        prediction=answer,
        correct=bool(correct),
        probability=probability,
        distribution=tuple(float(x) for x in aggregated),
        neighbour_ids=tuple(prediction.neighbour_ids),
        neighbour_labels=tuple(prediction.neighbour_labels),
        retrieval_scores=None if scores is None else tuple(float(x) for x in np.asarray(scores).ravel()),
        neighbour_distributions=tuple(tuple(float(x) for x in row) for row in p),
        neighbour_predictions=neighbour_answers,
        neighbour_correct=neighbour_correct,
        consistent=stats.consistent,
        agreement=float(stats.agreement),
        vote_entropy=float(stats.vote_entropy),
        n_distinct=int(stats.n_distinct),
        majority=majority,
        neighbour_heads=tuple(prediction.neighbour_heads),
        support=support,
        weighted_support=weighted_support,
        head_correct=head_correct,
    )


def _head_correct(
    prediction: CasePrediction,
    p: np.ndarray,
    labels: Sequence[str],
    multi_label: bool,
    method: AggregationMethod,
    temperature: float,
) -> dict[str, bool]:
    """Correctness of the answer aggregated from each head's neighbours alone (heads with none absent)."""
    out: dict[str, bool] = {}
    heads = prediction.neighbour_heads
    for head in sorted({h for h in heads if h is not None}):
        rows = [i for i, h in enumerate(heads) if h == head]  # this head's neighbours
        scores = None if prediction.retrieval_scores is None else np.asarray(prediction.retrieval_scores)[rows]
        distribution = aggregate(p[rows], scores, method, temperature, multi_label)  # (L,)
        if multi_label:
            out[head] = {labels[i] for i in predict_label_set(distribution)} == set(prediction.gold)
        else:
            out[head] = (labels[predict_label(distribution)],) == tuple(prediction.gold)
    return out


def _check_gold(prediction: CasePrediction, labels: Sequence[str], multi_label: bool, where: str) -> None:
    unknown = [g for g in prediction.gold if g not in labels]
    if unknown:
        raise ValueError(
            f"{where} has gold label(s) {unknown} outside the task's labels {list(labels)}; "
            "fix the case labels or evaluate with the matching task"
        )
    if not multi_label and len(prediction.gold) != 1:
        raise ValueError(
            f"{where} has {len(prediction.gold)} gold labels {list(prediction.gold)}; a single-label "
            "task needs exactly one per case"
        )
