"""Subgroup metrics: the clinical metrics of one system within each value of a case-metadata field.

A clinical team asks whether a model works equally well across sites, scanners, sexes or age
bands. :func:`subgroup_estimates` splits one system's scored cases by a group value per case (e.g.
``case.metadata["site"]``) and computes, within each group, the metrics of
:data:`SUBGROUP_METRICS` with bootstrap intervals over that group's cases. Groups are independent
samples, so each has its own resamples; intervals of small groups are wide, as they should be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llama_index_lvlm_retriever.evaluation.bootstrap import Estimate, Statistic, bootstrap_estimates
from llama_index_lvlm_retriever.evaluation.clinical_metrics import class_rates
from llama_index_lvlm_retriever.evaluation.metrics import nan_mean
from llama_index_lvlm_retriever.evaluation.records import CaseResult
from llama_index_lvlm_retriever.evaluation.system_metrics import CaseArrays, system_statistics

__all__ = ["MISSING_GROUP", "SUBGROUP_METRICS", "case_groups", "subgroup_estimates"]

SUBGROUP_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "ece")
"""Metrics reported per subgroup (besides its case count ``n``, and per-label sensitivity)."""
MISSING_GROUP = "(missing)"
"""Group of the cases whose metadata lacks the field."""


def case_groups(metadata: Mapping[str, Mapping[str, object]], field: str) -> dict[str, str]:
    """Case id -> group value (as a string) of ``field``; :data:`MISSING_GROUP` where it is absent.

    Args:
        metadata: Case id -> that case's metadata dict.
        field: The metadata key to group by, e.g. ``"site"``.

    Raises:
        ValueError: No case has the field (the message lists the keys the cases do have).
    """
    out = {
        case_id: MISSING_GROUP if meta.get(field) is None else str(meta[field]) for case_id, meta in metadata.items()
    }
    if out and all(value == MISSING_GROUP for value in out.values()):
        known = sorted({key for meta in metadata.values() for key in meta})
        raise ValueError(f"no case has the metadata field {field!r}; fields in the cases: {known}. Pass one of them")
    return out


def subgroup_estimates(
    rows: Sequence[CaseResult],
    groups: Mapping[str, str],
    labels: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Estimate]]:
    """Per group value: ``n``, :data:`SUBGROUP_METRICS` and ``sensitivity_<label>``, with intervals.

    ``balanced_accuracy`` is the mean over labels of the one-vs-rest sensitivity (labels without a
    positive case in the group are skipped).

    Args:
        rows: One system's scored cases.
        groups: Case id -> group value (see :func:`case_groups`).
        labels: The task's label names.
        n_bootstrap: Resamples per group (0: no intervals).
        confidence: Interval coverage.
        seed: Resampling seed.

    Returns:
        Group value (sorted) -> metric name -> :class:`Estimate` (``n`` has no interval).

    Raises:
        KeyError: A case has no group.
    """
    missing = [row.case_id for row in rows if row.case_id not in groups]
    if missing:
        raise KeyError(f"cases {missing[:5]} have no group value; give every case one (case_groups does)")
    out: dict[str, dict[str, Estimate]] = {}
    for value in sorted({groups[row.case_id] for row in rows}):
        subset = [row for row in rows if groups[row.case_id] == value]
        stats = system_statistics(subset, labels)
        a = CaseArrays.from_rows(subset, labels)
        chosen: dict[str, Statistic] = {name: stats[name] for name in SUBGROUP_METRICS if name != "balanced_accuracy"}
        chosen["balanced_accuracy"] = lambda w, a=a: nan_mean(class_rates(a.predicted, a.gold, w)["sensitivity"])
        chosen.update({f"sensitivity_{label}": stats[f"sensitivity_{label}"] for label in labels})
        estimates = bootstrap_estimates(chosen, len(subset), n_bootstrap, confidence, seed)
        nan = float("nan")
        out[value] = {"n": Estimate(float(len(subset)), nan, nan), **{name: estimates[name] for name in chosen}}
    return out

