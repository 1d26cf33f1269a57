"""PNG plots of a ConsistencyReport (matplotlib, imported lazily; the ``plots`` extra).

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never
through ``pyplot``, so plotting neither needs a display nor changes the process-wide backend.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llama_index_lvlm_retriever.evaluation._io import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport

__all__ = ["PLOT_NAMES", "agreement_bin_edges", "save_report_plots"]

logger = logging.getLogger(__name__)

PLOT_NAMES: tuple[str, ...] = ("accuracy_by_consistency", "agreement_histogram", "risk_coverage")
"""File stems of the plots, in the order :func:`save_report_plots` returns them."""

_GROUPS = (
    ("accuracy", "all cases"),
    ("accuracy_consistent", "consistent"),
    ("accuracy_inconsistent", "inconsistent"),
)


def save_report_plots(report: ConsistencyReport, directory: Path) -> list[Path]:
    """Write ``<name>.png`` for each of :data:`PLOT_NAMES` into ``directory``.

    Args:
        report: The report to draw.
        directory: Output folder (created if missing).

    Returns:
        The written paths: :data:`PLOT_NAMES` in order, then the clinical plots
        (``reliability_diagram.png``, ``confusion_<system>.png``; see :mod:`.clinical_plots`).

    Raises:
        ImportError: matplotlib is not installed.
    """
    figure_cls, canvas_cls = _matplotlib()
    directory.mkdir(parents=True, exist_ok=True)
    drawers = (_accuracy_by_consistency, _agreement_histogram, _risk_coverage)
    paths = []
    for name, draw in zip(PLOT_NAMES, drawers):
        fig = figure_cls(figsize=(7.0, 4.2), dpi=100, layout="constrained")
        canvas_cls(fig)
        draw(fig, report)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        path = directory / f"{name}.png"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
        logger.debug("wrote %s", path)
    from llama_index_lvlm_retriever.evaluation.clinical_plots import save_clinical_plots

    return paths + save_clinical_plots(report, directory, figure_cls, canvas_cls)


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'plots need matplotlib: pip install "llama-index-lvlm-retriever[plots]"'
        ) from error
    return Figure, FigureCanvasAgg


def agreement_bin_edges(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Histogram edges that give each distinct agreement value its own bin.

    Agreements are k-fractions (``j / k``), so fixed tenths put 0.5 into [0.5, 0.6) and 1.0 into
    [0.9, 1.0]; here each edge lies half-way between two neighbouring values, and the outer edges
    half a gap outside (0.05 for a single value), so every value sits strictly inside its bin
    (in its middle when the values are evenly spaced, as the fractions of one k are).

    Example:
        >>> agreement_bin_edges([0.5, 1.0, 0.75, 1.0]).tolist()
        [0.375, 0.625, 0.875, 1.125]
    """
    distinct = np.unique(np.round(np.asarray(values, dtype=float), 9))  # round: 2/3 from several k's is one value
    if distinct.size == 0:
        return np.array([0.0, 1.0])
    if distinct.size == 1:
        return np.array([distinct[0] - 0.05, distinct[0] + 0.05])
    middles = (distinct[1:] + distinct[:-1]) / 2
    return np.concatenate([[distinct[0] - (middles[0] - distinct[0])], middles, [distinct[-1] + (distinct[-1] - middles[-1])]])


def _accuracy_by_consistency(fig: Any, report: ConsistencyReport) -> None:
    ax = fig.add_subplot()
    n_systems = len(report.systems)
    width = 0.8 / max(n_systems, 1)
    x = np.arange(len(_GROUPS))
    for i, system in enumerate(report.systems):
        estimates = [report.estimates[system][metric] for metric, _ in _GROUPS]
        values = np.array([e.value for e in estimates], dtype=float)
        low = np.array([e.value - e.ci_low for e in estimates], dtype=float)
        high = np.array([e.ci_high - e.value for e in estimates], dtype=float)
        err = np.nan_to_num(np.vstack([low, high]), nan=0.0)  # no bar where there is no interval
        positions = x + (i - (n_systems - 1) / 2) * width
        ax.bar(positions, np.nan_to_num(values, nan=0.0), width, yerr=err, capsize=3, label=system)
        rows = report.rows[system]
        n_consistent = sum(bool(row.consistent) for row in rows)
        counts = (len(rows), n_consistent, len(rows) - n_consistent)  # cases behind each bar, _GROUPS order
        for position, value, top, n in zip(positions, values, high, counts):
            if math.isnan(value):  # an empty group, e.g. no inconsistent case
                ax.text(position, 0.02, "n/a (n=0)", ha="center", fontsize=7, rotation=90)
            else:
                ax.text(position, value + np.nan_to_num(top) + 0.01, f"n={n}", ha="center", fontsize=7)
    ax.set_xticks(x, [title for _, title in _GROUPS])
    ax.set_ylim(0.0, 1.12)  # room for the n labels above full bars
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by consistency group (each system's own neighbours; n = cases)", fontsize=10)
    ax.legend(fontsize=8)


def _agreement_histogram(fig: Any, report: ConsistencyReport) -> None:
    ax = fig.add_subplot()
    systems = [s for s in report.systems if report.k(s) > 1] or list(report.systems)
    data = [[row.agreement for row in report.rows[s]] for s in systems]
    edges = agreement_bin_edges([value for values in data for value in values])
    _, _, containers = ax.hist(data, bins=edges, label=systems)
    for container in containers if len(systems) > 1 else [containers]:
        ax.bar_label(container, labels=[f"{int(b.get_height())}" if b.get_height() else "" for b in container], fontsize=7)
    distinct = np.unique(np.round([value for values in data for value in values], 9))
    ax.set_xticks(distinct, [_fraction(v) for v in distinct], fontsize=8)  # one tick per value, under its bar
    ax.set_xlabel("agreement (share of neighbours voting for the majority answer; bars show case counts)")
    ax.set_ylabel("cases")
    ax.set_title("Agreement among neighbours", fontsize=10)
    ax.legend(fontsize=8)


# Hollow markers of decreasing size: coinciding points (e.g. closed-book at full coverage on top of
# standard RAG's last point) stay visible as nested shapes.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _risk_coverage(fig: Any, report: ConsistencyReport) -> None:
    ax = fig.add_subplot()
    for i, system in enumerate(report.systems):
        curve = report.curves[system]
        aurc = report.estimates[system]["aurc"].value
        label = system if math.isnan(aurc) else f"{system} (AURC {aurc:.3f})"
        single = len(curve["coverage"]) == 1  # e.g. closed-book: one neighbour, one agreement level
        ax.plot(
            curve["coverage"], curve["risk"], marker=_MARKERS[i % len(_MARKERS)], fillstyle="none",
            markersize=max(4.0, 11.0 - 1.5 * i), markeredgewidth=1.5, linestyle="none" if single else "-",
            zorder=3 if single else 2, label=label,
        )
        if single:
            ax.annotate(system, (curve["coverage"][0], curve["risk"][0]), xytext=(-8, 8),
                        textcoords="offset points", ha="right", fontsize=7)
    ax.set_xlim(0.0, 1.05)
    top = max((max(report.curves[s]["risk"], default=0.0) for s in report.systems), default=0.0)
    ax.set_ylim(0.0, max(0.05, 1.15 * top))  # headroom for the point labels
    ax.set_xlabel("coverage (share of cases answered)")
    ax.set_ylabel("risk (error rate on answered cases)")
    ax.set_title("Risk-coverage when abstaining on low agreement", fontsize=10)
    ax.legend(fontsize=8)


def _fraction(value: float) -> str:
    """``0.5 -> '1/2'``, ``1.0 -> '1'``: agreements are shares of at most a few dozen neighbours."""
    fraction = Fraction(float(value)).limit_denominator(64)
    return str(fraction.numerator) if fraction.denominator == 1 else f"{fraction.numerator}/{fraction.denominator}"
