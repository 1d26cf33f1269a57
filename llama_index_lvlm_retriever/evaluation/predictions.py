"""evaluate_predictions: per-neighbour reader outputs of several systems -> ConsistencyReport.

This is the retrieval-free half of the evaluation: it takes what each system's reader passes
produced for each case (:class:`~llama_index_lvlm_retriever.evaluation.records.CasePrediction`),
aggregates and scores every case, computes every metric with bootstrap intervals, and compares the
systems with a baseline. ``evaluate_dataset`` runs retrieval and the reader, then calls this.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, get_args

import numpy as np

from llama_index_lvlm_retriever.aggregation import (
    DEFAULT_TEMPERATURE,
    AggregationMethod,
    retrieval_weights,
)
from llama_index_lvlm_retriever.evaluation.bootstrap import bootstrap_estimates
from llama_index_lvlm_retriever.evaluation.comparison import PairedComparison, compare_rows
from llama_index_lvlm_retriever.evaluation.protocols import TaskLike
from llama_index_lvlm_retriever.evaluation.records import CasePrediction, CaseResult, score_case
from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport
from llama_index_lvlm_retriever.evaluation.system_metrics import system_curve, system_statistics

__all__ = ["evaluate_predictions"]

logger = logging.getLogger(__name__)


def evaluate_predictions(
    predictions: Mapping[str, Sequence[CasePrediction]],
    task: TaskLike,
    *,
    method: AggregationMethod = "weighted",
    temperature: float = DEFAULT_TEMPERATURE,
    baseline: str | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    settings: Mapping[str, Any] | None = None,
) -> ConsistencyReport:
    """Score, aggregate and compare several systems' per-neighbour predictions on the same cases.

    Args:
        predictions: System name -> one :class:`CasePrediction` per case. Every system must cover
            the same case ids; rows follow the first system's case order.
        task: The task (``labels`` and ``multi_label``), e.g. a ``TaskSpec``.
        method: Aggregation of the neighbours' distributions (the one ``LVLMRerank`` uses).
        temperature: Softmax temperature over retrieval scores for ``"weighted"``.
        baseline: System the others are compared with, and whose consistency defines the subsets
            of the comparison; default the first system.
        n_bootstrap: Bootstrap resamples over cases for every interval (0: no intervals).
        confidence: Interval coverage.
        seed: Resampling seed (equal seeds give equal reports).
        settings: Extra entries recorded in ``report.settings`` (e.g. ``k``).

    Returns:
        The :class:`ConsistencyReport`.

    Raises:
        ValueError: No systems, no cases, duplicate case ids, systems with different case sets or
            gold labels, gold labels outside the task's labels, malformed distributions, an unknown
            baseline or aggregation method, or bad bootstrap settings.

    Example:
        >>> import numpy as np
        >>> from types import SimpleNamespace
        >>> task = SimpleNamespace(labels=["no", "yes"], multi_label=False)
        >>> preds = {"rag": [CasePrediction("c1", ("yes",), np.array([[0.2, 0.8], [0.6, 0.4]]))]}
        >>> report = evaluate_predictions(preds, task, n_bootstrap=0)
        >>> report.estimate("rag", "accuracy").value, report.estimate("rag", "inconsistent_rate").value
        (1.0, 1.0)
    """
    labels = _check_labels(task)
    multi_label = bool(task.multi_label)
    _check_settings(predictions, method, temperature, baseline, n_bootstrap, confidence)
    systems = tuple(predictions)
    order = _check_case_sets(predictions)
    rows: dict[str, tuple[CaseResult, ...]] = {}
    for system in systems:
        by_id = {p.case_id: p for p in predictions[system]}
        rows[system] = tuple(
            score_case(by_id[case_id], labels, multi_label, method, temperature, system) for case_id in order
        )
    _check_same_gold(rows)
    estimates = {
        system: bootstrap_estimates(
            system_statistics(rows[system], labels),
            n=len(order),
            n_resamples=n_bootstrap,
            confidence=confidence,
            seed=seed,
        )
        for system in systems
    }
    baseline = systems[0] if baseline is None else baseline
    comparisons: list[PairedComparison] = []
    for system in systems:
        if system != baseline:
            comparisons += compare_rows(
                system, rows[system], baseline, rows[baseline], n_bootstrap, confidence, seed
            )
    logger.info("evaluated %d systems on %d cases", len(systems), len(order))
    return ConsistencyReport(
        labels=tuple(labels),
        multi_label=multi_label,
        systems=systems,
        rows=rows,
        estimates=estimates,
        curves={system: system_curve(rows[system]) for system in systems},
        comparisons=tuple(comparisons),
        baseline=baseline if len(systems) > 1 else None,
        settings={
            "method": method,
            "temperature": temperature,
            "n_bootstrap": n_bootstrap,
            "confidence": confidence,
            "seed": seed,
            **dict(settings or {}),
        },
    )


def _check_labels(task: TaskLike) -> list[str]:
    labels = [str(label) for label in task.labels]
    if not labels:
        raise ValueError("the task has no labels; evaluation needs a closed label set")
    duplicates = sorted(label for label, n in Counter(labels).items() if n > 1)
    if duplicates:
        raise ValueError(f"the task's labels repeat {duplicates}; label names must be unique")
    return labels


def _check_settings(
    predictions: Mapping[str, Sequence[CasePrediction]],
    method: str,
    temperature: float,
    baseline: str | None,
    n_bootstrap: int,
    confidence: float,
) -> None:
    if not predictions:
        raise ValueError("no systems to evaluate; pass at least one system's predictions")
    if method not in get_args(AggregationMethod):
        raise ValueError(f"unknown aggregation method {method!r}; choose one of {list(get_args(AggregationMethod))}")
    retrieval_weights(np.zeros(1), temperature)  # raises on a bad temperature
    if baseline is not None and baseline not in predictions:
        raise ValueError(f"baseline {baseline!r} is not one of the systems {list(predictions)}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")


def _check_case_sets(predictions: Mapping[str, Sequence[CasePrediction]]) -> list[str]:
    """Return the first system's case order after checking every system has the same case ids."""
    first = next(iter(predictions))
    reference: list[str] = []
    for system, preds in predictions.items():
        ids = [p.case_id for p in preds]
        if not ids:
            raise ValueError(f"system {system!r} has no cases; evaluate a non-empty case list")
        repeated = sorted(case_id for case_id, n in Counter(ids).items() if n > 1)
        if repeated:
            raise ValueError(f"system {system!r} has duplicate case ids {repeated[:5]}; case ids must be unique")
        if system == first:
            reference = ids
            continue
        missing = sorted(set(reference) - set(ids))
        extra = sorted(set(ids) - set(reference))
        if missing or extra:
            raise ValueError(
                f"system {system!r} was evaluated on different cases than {first!r}: missing "
                f"{missing[:5]}, extra {extra[:5]}; evaluate every system on the same cases"
            )
    return reference


def _check_same_gold(rows: Mapping[str, Sequence[CaseResult]]) -> None:
    systems = list(rows)
    first = systems[0]
    for system in systems[1:]:
        for a, b in zip(rows[first], rows[system]):
            if set(a.gold) != set(b.gold):
                raise ValueError(
                    f"case {a.case_id!r} has gold {list(a.gold)} under {first!r} but {list(b.gold)} under "
                    f"{system!r}; every system must be scored against the same gold labels"
                )
