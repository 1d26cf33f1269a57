"""PNG plots of a ConsistencyReport (matplotlib, imported lazily; the ``plots`` extra).

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never
through ``pyplot``, so plotting neither needs a display nor changes the process-wide backend.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llama_index_lvlm_retriever.evaluation._io import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport

__all__ = ["PLOT_NAMES", "save_report_plots"]

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
        The written paths.

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
    return paths


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'plots need matplotlib: pip install "llama-index-lvlm-retriever[plots]"'
        ) from error
    return Figure, FigureCanvasAgg


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
        for position, value in zip(positions, values):
            if math.isnan(value):  # an empty group, e.g. no inconsistent case
                ax.text(position, 0.02, "n/a", ha="center", fontsize=7, rotation=90)
    ax.set_xticks(x, [title for _, title in _GROUPS])
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by consistency group (each system's own neighbours)", fontsize=10)
    ax.legend(fontsize=8)


def _agreement_histogram(fig: Any, report: ConsistencyReport) -> None:
    ax = fig.add_subplot()
    systems = [s for s in report.systems if report.k(s) > 1] or list(report.systems)
    bins = np.linspace(0.0, 1.0, 11)
    data = [[row.agreement for row in report.rows[s]] for s in systems]
    ax.hist(data, bins=bins, label=systems)
    ax.set_xlabel("agreement (share of neighbours voting for the majority answer)")
    ax.set_ylabel("cases")
    ax.set_title("Agreement among neighbours", fontsize=10)
    ax.legend(fontsize=8)


def _risk_coverage(fig: Any, report: ConsistencyReport) -> None:
    ax = fig.add_subplot()
    for system in report.systems:
        curve = report.curves[system]
        aurc = report.estimates[system]["aurc"].value
        label = system if math.isnan(aurc) else f"{system} (AURC {aurc:.3f})"
        ax.plot(curve["coverage"], curve["risk"], marker="o", label=label)
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("coverage (share of cases answered)")
    ax.set_ylabel("risk (error rate on answered cases)")
    ax.set_title("Risk-coverage when abstaining on low agreement", fontsize=10)
    ax.legend(fontsize=8)
