"""ConsistencyReport: every number of an evaluation, with JSON, Markdown and plot outputs.

A report holds the per-case rows of every system, the metrics with bootstrap intervals, the
risk-coverage curves and the paired comparisons. Computing it (``evaluate_predictions`` /
``evaluate_dataset``) does no file I/O; writing it is :meth:`ConsistencyReport.to_json`,
:meth:`~ConsistencyReport.to_markdown`, :meth:`~ConsistencyReport.save_plots` or
:func:`write_report` for all three.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from llama_index_lvlm_retriever.evaluation._io import atomic_write_bytes
from llama_index_lvlm_retriever.evaluation.bootstrap import Estimate
from llama_index_lvlm_retriever.evaluation.clinical_report import clinical_blocks, clinical_markdown
from llama_index_lvlm_retriever.evaluation.comparison import PairedComparison, compare_rows
from llama_index_lvlm_retriever.evaluation.records import CaseResult
from llama_index_lvlm_retriever.evaluation.system_metrics import AT_K_METRICS, METRIC_DESCRIPTIONS

__all__ = ["REPORT_FORMAT_VERSION", "ConsistencyReport", "metric_prefix", "write_report"]

REPORT_FORMAT_VERSION = 1
"""Version of the JSON layout written by :meth:`ConsistencyReport.to_json`."""

_MAIN_COLUMNS = (
    ("accuracy", "Accuracy"),
    ("macro_f1", "Macro-F1"),
    ("auroc", "AUROC"),
    ("inconsistent_rate", "Inconsistent"),
    ("accuracy_consistent", "Acc. consistent"),
    ("accuracy_inconsistent", "Acc. inconsistent"),
    ("oracle", "Oracle@k"),
    ("oracle_gap", "Oracle gap"),
    ("accuracy_image_head", "Acc. img head"),
    ("accuracy_text_head", "Acc. text head"),
)
_DETAIL_COLUMNS = (
    ("agreement", "Majority share"),
    ("answer_support", "Answer support"),
    ("vote_entropy", "Vote entropy"),
    ("n_distinct", "Distinct answers"),
    ("all_correct", "All-correct@k"),
    ("label_precision", "Label precision@k"),
    ("label_recall", "Label recall@k"),
    ("aurc", "AURC (lower is better)"),
    ("disagreement_auroc", "Disagreement AUROC"),
)


def metric_prefix(system: str) -> str:
    """Key prefix of a system in flat metric dicts: lower case, runs of non-word characters -> ``_``.

    Example:
        >>> metric_prefix("LVLM-aware RAG")
        'lvlm_aware_rag'
    """
    return re.sub(r"\W+", "_", system).strip("_").lower() or "system"


@dataclass
class ConsistencyReport:
    """The result of evaluating several systems on the same labelled cases.

    Args:
        labels: The task's label names.
        multi_label: Whether the task is multi-label.
        systems: System names in report order.
        rows: Per system, one :class:`~llama_index_lvlm_retriever.evaluation.records.CaseResult`
            per case, every system in the same case order.
        estimates: Per system, metric name -> :class:`~llama_index_lvlm_retriever.evaluation.bootstrap.Estimate`.
        curves: Per system, the risk-coverage points (``threshold``, ``coverage``, ``risk``).
        comparisons: Paired comparisons of each system with ``baseline``.
        baseline: The reference system of ``comparisons`` (it defines the consistency subsets).
        settings: How the report was computed (aggregation method, temperature, bootstrap
            resamples, confidence, seed, ...).
        subgroups: Per metadata field, per system, per group value: metric -> estimate (see
            :func:`~llama_index_lvlm_retriever.evaluation.subgroups.subgroup_estimates`); empty
            unless subgroups were requested.
        risk_control: Per system, the threshold chosen for a target risk with its bound and the
            test risk and coverage (:meth:`RiskControl.to_dict
            <llama_index_lvlm_retriever.evaluation.risk_control.RiskControl.to_dict>`); empty
            unless requested.

    Example:
        .. code-block:: python

            report = evaluate_dataset(cases, {"standard RAG": rag, "LVLM-aware": ours}, reader)
            print(report.to_markdown())
            report.metrics("LVLM-aware")["lvlm_aware_accuracy"]
            write_report(report, "eval/")
    """

    primary_metric: ClassVar[str] = "accuracy"
    greater_is_better: ClassVar[bool] = True

    labels: tuple[str, ...]
    multi_label: bool
    systems: tuple[str, ...]
    rows: dict[str, tuple[CaseResult, ...]]
    estimates: dict[str, dict[str, Estimate]]
    curves: dict[str, dict[str, list[float]]]
    comparisons: tuple[PairedComparison, ...] = ()
    baseline: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    subgroups: dict[str, dict[str, dict[str, dict[str, Estimate]]]] = field(default_factory=dict)
    risk_control: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n_cases(self) -> int:
        """Number of evaluated cases (the same for every system)."""
        return len(self.rows[self.systems[0]]) if self.systems else 0

    def k(self, system: str) -> int:
        """The largest number of neighbours ``system`` used for a case (1 for closed-book)."""
        return max(row.k for row in self._rows(system))

    def estimate(self, system: str, metric: str) -> Estimate:
        """One metric of one system with its interval.

        Raises:
            KeyError: Unknown system or metric (the message lists the known ones).
        """
        self._rows(system)
        if metric not in self.estimates[system]:
            raise KeyError(f"unknown metric {metric!r}; known: {sorted(self.estimates[system])}")
        return self.estimates[system][metric]

    def metrics(self, system: str) -> dict[str, float]:
        """Flat metric dict of one system: ``<prefix>_<metric>`` plus ``..._ci_low``/``..._ci_high``.

        The prefix is :func:`metric_prefix` of the system name; metrics that depend on the number
        of neighbours carry ``@k`` (e.g. ``lvlm_aware_oracle@4``). Undefined values are left out.
        """
        self._rows(system)
        prefix, k = metric_prefix(system), self.k(system)
        out: dict[str, float] = {}
        for name, est in self.estimates[system].items():
            key = f"{prefix}_{name}" + (f"@{k}" if name in AT_K_METRICS else "")
            for suffix, value in (("", est.value), ("_ci_low", est.ci_low), ("_ci_high", est.ci_high)):
                if not math.isnan(value):
                    out[key + suffix] = value
        return out

    def all_metrics(self) -> dict[str, float]:
        """:meth:`metrics` of every system plus comparisons (``<system>_vs_<baseline>_<subset>_...``)."""
        out: dict[str, float] = {}
        for system in self.systems:
            out.update(self.metrics(system))
        for c in self.comparisons:
            key = f"{metric_prefix(c.system)}_vs_{metric_prefix(c.baseline)}_{c.subset}"
            values = {
                "accuracy_difference": c.difference.value,
                "accuracy_difference_ci_low": c.difference.ci_low,
                "accuracy_difference_ci_high": c.difference.ci_high,
                "mcnemar_p": c.p_value,
            }
            out.update({f"{key}_{name}": v for name, v in values.items() if not math.isnan(v)})
        return out

    def compare(
        self,
        system: str,
        baseline: str,
        n_bootstrap: int | None = None,
        seed: int | None = None,
        subsets_from: str | None = None,
    ) -> list[PairedComparison]:
        """Paired comparison of any two systems of the report (subsets defined by ``baseline``).

        Args:
            system: The compared system.
            baseline: The reference system.
            n_bootstrap: Resamples (default: the report's setting).
            seed: Seed (default: the report's setting).
            subsets_from: A third system whose consistency defines the subsets (default: ``baseline``).

        Returns:
            Comparisons for the subsets ``"all"``, ``"consistent"``, ``"inconsistent"``.
        """
        return compare_rows(
            system,
            self._rows(system),
            baseline,
            self._rows(baseline),
            n_bootstrap=int(self.settings.get("n_bootstrap", 1000) if n_bootstrap is None else n_bootstrap),
            confidence=float(self.settings.get("confidence", 0.95)),
            seed=int(self.settings.get("seed", 0) if seed is None else seed),
            subsets_from=None if subsets_from is None else self._rows(subsets_from),
        )

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """Everything as a JSON-ready dict (NaN becomes ``None``)."""
        return {
            "format_version": REPORT_FORMAT_VERSION,
            "labels": list(self.labels),
            "multi_label": self.multi_label,
            "systems": list(self.systems),
            "baseline": self.baseline,
            "settings": dict(self.settings),
            "n_cases": self.n_cases,
            "metric_descriptions": dict(METRIC_DESCRIPTIONS),
            "metrics": {
                system: {name: est.to_dict() for name, est in self.estimates[system].items()}
                for system in self.systems
            },
            "curves": {system: dict(self.curves[system]) for system in self.systems},
            "comparisons": [c.to_dict() for c in self.comparisons],
            "rows": {system: [row.to_dict() for row in self.rows[system]] for system in self.systems},
            **clinical_blocks(self),
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ConsistencyReport:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: The record was written by an unknown format version.
        """
        version = record.get("format_version")
        if version != REPORT_FORMAT_VERSION:
            raise ValueError(
                f"report format version {version!r} is not supported (expected {REPORT_FORMAT_VERSION}); "
                "re-run the evaluation with this version of the package"
            )
        systems = tuple(record["systems"])
        return cls(
            labels=tuple(record["labels"]),
            multi_label=bool(record["multi_label"]),
            systems=systems,
            rows={s: tuple(CaseResult.from_dict(r) for r in record["rows"][s]) for s in systems},
            estimates={
                s: {name: Estimate.from_dict(e) for name, e in record["metrics"][s].items()} for s in systems
            },
            curves={s: {key: list(v) for key, v in record["curves"][s].items()} for s in systems},
            comparisons=tuple(PairedComparison.from_dict(c) for c in record["comparisons"]),
            baseline=record.get("baseline"),
            settings=dict(record.get("settings", {})),
            subgroups={
                f: {
                    s: {g: {m: Estimate.from_dict(e) for m, e in metrics.items()} for g, metrics in groups.items()}
                    for s, groups in by_system.items()
                }
                for f, by_system in (record.get("subgroups") or {}).items()
            },
            risk_control={s: dict(c) for s, c in (record.get("risk_control") or {}).items()},
        )

    def to_json(self, path: str | Path, provenance: Mapping[str, Any] | None = None) -> Path:
        """Write :meth:`to_dict` as JSON, atomically; returns the path.

        Args:
            path: Target file.
            provenance: A block from :func:`~llama_index_lvlm_retriever.outputs.provenance.collect_provenance`,
                stored under ``"provenance"`` (:meth:`from_json` ignores it).
        """
        path = Path(path)
        record = self.to_dict()
        if provenance is not None:
            record["provenance"] = dict(provenance)
        text = json.dumps(record, indent=1, allow_nan=False)
        atomic_write_bytes(path, text.encode("utf-8"))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> ConsistencyReport:
        """Load a report written by :meth:`to_json`.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: The file is not a report of a supported format version.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no report at {str(path)!r}; write one with ConsistencyReport.to_json")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{str(path)!r} is not valid JSON ({error}); was it written by to_json?") from error
        return cls.from_dict(record)

    # ------------------------------------------------------------------ outputs

    def to_markdown(self) -> str:
        """The tables a paper would print, as Markdown.

        Cells are ``value [low, high]`` with the bootstrap interval; ``-`` marks an undefined value.
        """
        s = self.settings
        confidence = float(s.get("confidence", 0.95))
        lines = [
            "# Consistency report",
            "",
            f"{self.n_cases} cases, {len(self.labels)} labels ({'multi-label' if self.multi_label else 'single-label'}); "
            f"aggregation `{s.get('method', '?')}` (temperature {s.get('temperature', '?')}); "
            f"{round(100 * confidence)}% percentile bootstrap intervals over cases "
            f"({s.get('n_bootstrap', '?')} resamples, seed {s.get('seed', '?')}).",
            "",
            "## Accuracy and consistency",
            "",
            *self._table(_MAIN_COLUMNS, with_k=True),
            "",
            "## Agreement, retrieval quality and selective prediction",
            "",
            *self._table(_DETAIL_COLUMNS, with_k=False),
            "",
            "Selective prediction abstains on cases with low agreement among the neighbours.",
        ]
        if self.comparisons:
            lines += ["", "## Paired comparisons", ""]
            lines.append(
                f"Consistent / inconsistent subsets are defined by the baseline system `{self.baseline}`; "
                "b = cases only the system gets right, c = cases only the baseline gets right; "
                "p = two-sided exact McNemar test."
            )
            lines += ["", "| System | Baseline | Subset | n | Accuracy | Baseline accuracy | Difference | b | c | p |"]
            lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
            for c in self.comparisons:
                lines.append(
                    f"| {c.system} | {c.baseline} | {c.subset} | {c.n_cases} | {_fmt(c.accuracy)} | "
                    f"{_fmt(c.baseline_accuracy)} | {_fmt_estimate(c.difference, signed=True)} | "
                    f"{c.n_system_only} | {c.n_baseline_only} | {_fmt_p(c.p_value)} |"
                )
        lines += ["", "## F1 per label", ""]
        lines.append("| System | " + " | ".join(self.labels) + " |")
        lines.append("|---|" + "---:|" * len(self.labels))
        for system in self.systems:
            cells = [_fmt(self.estimates[system][f"f1_{label}"].value) for label in self.labels]
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
        lines += clinical_markdown(self)
        lines += ["", "## Metric definitions", ""]
        lines += [f"- **{name}**: {text}" for name, text in METRIC_DESCRIPTIONS.items()]
        return "\n".join(lines) + "\n"

    def save_plots(self, directory: str | Path) -> list[Path]:
        """Write the PNG plots into ``directory`` (needs matplotlib: the ``plots`` extra).

        Returns:
            Paths of accuracy by consistency group (with interval bars), the agreement histogram
            and the risk-coverage curves.
        """
        from llama_index_lvlm_retriever.evaluation.plots import save_report_plots

        return save_report_plots(self, Path(directory))

    # ------------------------------------------------------------------ helpers

    def _rows(self, system: str) -> tuple[CaseResult, ...]:
        if system not in self.rows:
            raise KeyError(f"unknown system {system!r}; the report has {list(self.systems)}")
        return self.rows[system]

    def _table(self, columns: tuple[tuple[str, str], ...], with_k: bool) -> list[str]:
        head = "| System | " + ("k | " if with_k else "") + " | ".join(title for _, title in columns) + " |"
        rule = "|---|" + ("---:|" if with_k else "") + "---:|" * len(columns)
        body = []
        for system in self.systems:
            cells = [_fmt_estimate(self.estimates[system][name]) for name, _ in columns]
            k = f"{self.k(system)} | " if with_k else ""
            body.append(f"| {system} | {k}" + " | ".join(cells) + " |")
        return [head, rule, *body]


def write_report(
    report: ConsistencyReport, out_dir: str | Path, provenance: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the PNG plots into ``out_dir``.

    Args:
        report: The report.
        out_dir: Output folder (created if missing).
        provenance: Provenance block stored in ``report.json`` (see :meth:`ConsistencyReport.to_json`).

    Returns:
        ``{"json": ..., "markdown": ..., <plot name>: ...}`` paths of the written files.

    Example:
        .. code-block:: python

            paths = write_report(report, "eval/")
            print(paths["markdown"].read_text())
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": report.to_json(out_dir / "report.json", provenance)}
    markdown = out_dir / "report.md"
    atomic_write_bytes(markdown, report.to_markdown().encode("utf-8"))
    paths["markdown"] = markdown
    for path in report.save_plots(out_dir):
        paths[path.stem] = path
    return paths


def _fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _fmt_estimate(est: Estimate, signed: bool = False) -> str:
    if math.isnan(est.value):
        return "-"
    value = f"{est.value:+.3f}" if signed else f"{est.value:.3f}"
    if math.isnan(est.ci_low):
        return value
    return f"{value} [{est.ci_low:.3f}, {est.ci_high:.3f}]"


def _fmt_p(p: float) -> str:
    if p is None or math.isnan(p):  # an empty subset has no test
        return "-"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"
