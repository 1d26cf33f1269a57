"""What the report plots draw: agreement bins centred on k-fractions, n on the bars, visible points."""

from __future__ import annotations

import numpy as np
import pytest

from llama_index_lvlm_retriever.evaluation import plots
from llama_index_lvlm_retriever.evaluation.plots import agreement_bin_edges
from llama_index_lvlm_retriever.evaluation.predictions import evaluate_predictions

Figure = pytest.importorskip("matplotlib.figure").Figure


def test_agreement_bins_hold_one_k_fraction_each() -> None:
    # k = 2 gives 1/2 and 1: each must sit in the middle of its own bin (tenths put 0.5 in
    # [0.5, 0.6) and 1.0 in [0.9, 1.0]).
    edges = agreement_bin_edges([0.5, 1.0, 1.0])
    assert edges.tolist() == [0.25, 0.75, 1.25]
    # Mixed k (3 and 4): 1/3, 1/2, 2/3, 3/4, 1 -> five bins, one value strictly inside each.
    values = [1 / 3, 0.5, 2 / 3, 0.75, 1.0, 2 / 3 + 1e-12]
    edges = agreement_bin_edges(values)
    counts, _ = np.histogram(values, bins=edges)
    assert counts.tolist() == [1, 1, 2, 1, 1]
    for value in (1 / 3, 0.5, 2 / 3, 0.75, 1.0):
        i = np.searchsorted(edges, value) - 1
        assert edges[i] < value < edges[i + 1]
    assert agreement_bin_edges([1.0]).tolist() == pytest.approx([0.95, 1.05])


def test_histogram_ticks_and_counts(task, predictions) -> None:
    report = evaluate_predictions(predictions, task, baseline="rag", n_bootstrap=20)
    fig = Figure()
    plots._agreement_histogram(fig, report)
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert "1/2" in ticks and "1" in ticks and "2/3" in ticks and "1/3" in ticks
    # Bar labels are the case counts; they add up to the cases of every drawn system.
    labelled = sum(int(t.get_text()) for t in ax.texts if t.get_text())
    assert labelled == 6 * len([s for s in report.systems if report.k(s) > 1])


def test_accuracy_bars_show_n(task, predictions) -> None:
    report = evaluate_predictions(predictions, task, baseline="rag", n_bootstrap=20)
    fig = Figure()
    plots._accuracy_by_consistency(fig, report)
    texts = [t.get_text() for t in fig.axes[0].texts]
    # rag: 6 cases, consistent on c3 and c4 only; aware: consistent everywhere (inconsistent n = 0).
    assert texts.count("n=6") == 3 + 2  # "all" of the three systems + the consistent bar of aware and closed-book
    assert "n=2" in texts and "n=4" in texts and "n/a (n=0)" in texts


def test_risk_coverage_keeps_every_system_visible(task, predictions) -> None:
    report = evaluate_predictions(predictions, task, baseline="rag", n_bootstrap=20)
    fig = Figure()
    plots._risk_coverage(fig, report)
    lines = fig.axes[0].get_lines()
    assert len({line.get_marker() for line in lines}) == len(report.systems)  # one marker shape per system
    assert all(line.get_fillstyle() == "none" for line in lines)  # hollow: coinciding points stay visible
    sizes = [line.get_markersize() for line in lines]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    closed = [line for line in lines if line.get_label().startswith("closed-book")][0]
    assert closed.get_linestyle() == "None" and closed.get_zorder() > max(line.get_zorder() for line in lines if line is not closed) - 1
    assert "closed-book" in [t.get_text() for t in fig.axes[0].texts]
