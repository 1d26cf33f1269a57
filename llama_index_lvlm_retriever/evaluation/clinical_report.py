"""The clinical sections of a ConsistencyReport: per-class rates, calibration, confusion, subgroups, abstention.

:class:`~llama_index_lvlm_retriever.evaluation.report.ConsistencyReport` calls these to add its
clinical tables to ``report.md`` and its derived blocks to ``report.json``; they read the report and
write nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from llama_index_lvlm_retriever.evaluation.bootstrap import Estimate
from llama_index_lvlm_retriever.evaluation.clinical_metrics import (
    CLASS_RATES,
    DEFAULT_ECE_BINS,
    confusion_matrix,
    reliability_bins,
)
from llama_index_lvlm_retriever.evaluation.subgroups import SUBGROUP_METRICS

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport

__all__ = ["clinical_blocks", "clinical_markdown", "report_confusion_matrix", "report_reliability"]

_RATE_TITLES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV", "npv": "NPV"}


def report_confusion_matrix(report: ConsistencyReport, system: str) -> np.ndarray | None:
    """``(L, L)`` counts (row gold, column predicted) of a single-label report; ``None`` if multi-label."""
    if report.multi_label:
        return None
    rows = report.rows[system]
    return confusion_matrix([r.gold[0] for r in rows], [r.prediction[0] for r in rows], report.labels)


def report_reliability(report: ConsistencyReport, system: str, n_bins: int = DEFAULT_ECE_BINS) -> dict[str, list[float]]:
    """Reliability-diagram bins of one system (confidence = probability of the answer shown)."""
    rows = report.rows[system]
    return reliability_bins(np.array([r.probability for r in rows]), np.array([r.correct for r in rows]), n_bins)


def clinical_blocks(report: ConsistencyReport) -> dict[str, Any]:
    """The JSON blocks: ``confusion_matrices`` (single-label), ``reliability``, ``subgroups``, ``risk_control``."""
    out: dict[str, Any] = {
        "ece_bins": DEFAULT_ECE_BINS,
        "reliability": {s: _no_nan(report_reliability(report, s)) for s in report.systems},
        "subgroups": {
            field: {
                system: {group: {m: e.to_dict() for m, e in metrics.items()} for group, metrics in by_group.items()}
                for system, by_group in by_system.items()
            }
            for field, by_system in report.subgroups.items()
        },
        "risk_control": dict(report.risk_control),
    }
    if not report.multi_label:
        out["confusion_matrices"] = {s: report_confusion_matrix(report, s).tolist() for s in report.systems}
    return out


def clinical_markdown(report: ConsistencyReport) -> list[str]:
    """Markdown lines of the clinical sections."""
    lines = ["", "## Clinical metrics per class", ""]
    lines.append(
        "One-vs-rest per label: sensitivity TP/(TP+FN), specificity TN/(TN+FP), PPV TP/(TP+FP), NPV TN/(TN+FN); "
        "PPV and NPV depend on the prevalence of these cases."
    )
    for system in report.systems:
        lines += ["", f"### {system}", ""]
        lines.append("| Label | " + " | ".join(_RATE_TITLES[r] for r in CLASS_RATES) + " |")
        lines.append("|---|" + "---:|" * len(CLASS_RATES))
        for label in report.labels:
            cells = [_fmt_estimate(report.estimates[system].get(f"{rate}_{label}")) for rate in CLASS_RATES]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Calibration", ""]
    lines.append(
        f"Expected calibration error of the answer's probability, {DEFAULT_ECE_BINS} equal-width bins over [0, 1] "
        "(ECE = sum over bins of (bin share) x |accuracy - mean confidence|; 0 is perfectly calibrated); "
        "see reliability_diagram.png."
    )
    lines += ["", "| System | ECE |", "|---|---:|"]
    lines += [f"| {s} | {_fmt_estimate(report.estimates[s].get('ece'))} |" for s in report.systems]
    if not report.multi_label:
        lines += ["", "## Confusion matrices", "", "Rows: gold label; columns: predicted label (case counts); see confusion_<system>.png."]
        for system in report.systems:
            matrix = report_confusion_matrix(report, system)
            lines += ["", f"### {system}", "", "| gold \\ predicted | " + " | ".join(report.labels) + " |"]
            lines.append("|---|" + "---:|" * len(report.labels))
            lines += [f"| {label} | " + " | ".join(str(int(v)) for v in row) + " |" for label, row in zip(report.labels, matrix)]
    for field, by_system in report.subgroups.items():
        lines += ["", f"## Subgroups by `{field}`", ""]
        lines.append("Each subgroup is bootstrapped on its own cases; balanced accuracy = mean per-class sensitivity.")
        for system, by_group in by_system.items():
            lines += ["", f"### {system}", "", "| " + field + " | n | " + " | ".join(SUBGROUP_METRICS) + " |"]
            lines.append("|---|---:|" + "---:|" * len(SUBGROUP_METRICS))
            for group, metrics in by_group.items():
                cells = [_fmt_estimate(metrics.get(m)) for m in SUBGROUP_METRICS]
                lines.append(f"| {group} | {int(metrics['n'].value)} | " + " | ".join(cells) + " |")
    if report.risk_control:
        lines += ["", "## Abstention with a guarantee", ""]
        first = next(iter(report.risk_control.values()))
        lines.append(
            f"min_support chosen on {first['validation_cases']} validation cases so that the selective risk (error rate "
            f"on answered cases) is <= {first['target_risk']:g} with probability >= {1 - first['delta']:g} "
            f"({first['method']}); bound = Clopper-Pearson upper {1 - first['delta']:g} bound on the validation "
            "selective risk; test columns: the cases not used to choose the threshold."
        )
        lines += ["", "| System | min_support | Bound | Val. risk | Val. coverage | Test risk | Test coverage |"]
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for system, c in report.risk_control.items():
            threshold = "none certified (at 1.00:)" if c["threshold"] is None else f"{c['threshold']:.2f}"
            lines.append(
                f"| {system} | {threshold} | {_num(c['bound'])} | {_num(c['validation_risk'])} | "
                f"{_num(c['validation_coverage'])} | {_num(c['test_risk'])} | {_num(c['test_coverage'])} |"
            )
    return lines


def _num(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _fmt_estimate(est: Estimate | None) -> str:
    if est is None or math.isnan(est.value):
        return "-"
    if math.isnan(est.ci_low):
        return f"{est.value:.3f}"
    return f"{est.value:.3f} [{est.ci_low:.3f}, {est.ci_high:.3f}]"


def _no_nan(record: dict[str, list[float]]) -> dict[str, list[float | None]]:
    return {key: [None if math.isnan(v) else v for v in values] for key, values in record.items()}
