"""PNG plots of the clinical metrics: a reliability diagram and one confusion matrix per system.

Drawn like :mod:`.plots` (matplotlib's Agg canvas, never ``pyplot``; the ``plots`` extra).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llama_index_lvlm_retriever.evaluation._io import atomic_write_bytes
from llama_index_lvlm_retriever.evaluation.clinical_metrics import DEFAULT_ECE_BINS
from llama_index_lvlm_retriever.evaluation.clinical_report import (
    report_confusion_matrix,
    report_reliability,
)

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport

__all__ = ["RELIABILITY_PLOT", "confusion_plot_name", "save_clinical_plots"]

RELIABILITY_PLOT = "reliability_diagram"
"""File stem of the reliability diagram."""


def confusion_plot_name(system: str) -> str:
    """``confusion_<system>`` with the system name reduced to a safe file stem."""
    return "confusion_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", system).strip("_") or "system")


def save_clinical_plots(report: ConsistencyReport, directory: Path, figure_cls: Any, canvas_cls: Any) -> list[Path]:
    """Write ``reliability_diagram.png`` and, for single-label tasks, ``confusion_<system>.png`` per system.

    Args:
        report: The report to draw.
        directory: Output folder.
        figure_cls: matplotlib's ``Figure``.
        canvas_cls: matplotlib's ``FigureCanvasAgg``.

    Returns:
        The written paths.
    """
    drawings: list[tuple[str, Any, tuple[float, float]]] = [(RELIABILITY_PLOT, lambda fig: _reliability(fig, report), (6.0, 5.0))]
    if not report.multi_label:
        size = max(4.5, 0.55 * len(report.labels) + 2.5)
        for system in report.systems:
            drawings.append((confusion_plot_name(system), lambda fig, s=system: _confusion(fig, report, s), (size + 1.0, size)))
    paths = []
    for name, draw, figsize in drawings:
        fig = figure_cls(figsize=figsize, dpi=100, layout="constrained")
        canvas_cls(fig)
        draw(fig)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        path = directory / f"{name}.png"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def _reliability(fig: Any, report: ConsistencyReport) -> None:
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    for system in report.systems:
        bins = report_reliability(report, system)
        confidence = np.array(bins["confidence"], dtype=float)
        accuracy = np.array(bins["accuracy"], dtype=float)
        keep = np.isfinite(confidence)  # empty bins have no point
        ece = report.estimates[system].get("ece")
        label = system if ece is None else f"{system} (ECE {ece.value:.3f})"
        (line,) = ax.plot(confidence[keep], accuracy[keep], marker="o", label=label)
        for x, y, n in zip(confidence[keep], accuracy[keep], np.array(bins["count"])[keep]):
            # A bin of 2 cases at accuracy 1.0 says little: show how many cases each point stands for.
            ax.annotate(f"{int(n)}", (x, y), xytext=(4, -10), textcoords="offset points", fontsize=7, color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"mean probability of the answer ({DEFAULT_ECE_BINS} equal-width bins)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title("Reliability diagram (numbers: cases in the bin)", fontsize=10)
    ax.legend(fontsize=8)


def _confusion(fig: Any, report: ConsistencyReport, system: str) -> None:
    matrix = report_confusion_matrix(report, system)
    ax = fig.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.where(totals > 0, matrix / np.maximum(totals, 1), 0.0)  # row-normalised: sensitivity on the diagonal
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the gold row")
    n = len(report.labels)
    ax.set_xticks(range(n), report.labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), report.labels, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"Confusion matrix: {system} (counts; colour = row share)", fontsize=10)
