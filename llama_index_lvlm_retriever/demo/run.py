"""``run_demo``: every seed, the pooled paper-style table, the report files and one example query."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from llama_index.core.schema import QueryBundle

from llama_index_lvlm_retriever.demo.config import DemoConfig
from llama_index_lvlm_retriever.demo.pipeline import (
    AWARE_ROW,
    CEILING_ROWS,
    CLOSED_BOOK_ROW,
    ORACLE_FIT_ROW,
    PLACEBO_ROW,
    STANDARD_ROW,
    SeedRun,
    run_seed,
)
from llama_index_lvlm_retriever.evaluation.comparison import PairedComparison
from llama_index_lvlm_retriever.evaluation.consistency_evaluator import ConsistencyEvaluator
from llama_index_lvlm_retriever.evaluation.predictions import evaluate_predictions
from llama_index_lvlm_retriever.evaluation.records import CasePrediction
from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport, write_report
from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.query_engine import LVLMDiagnosisQueryEngine
from llama_index_lvlm_retriever.storage.files import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["DemoResult", "headline_table", "pool_reports", "run_demo"]

Echo = Callable[[str], None]
ROWS = (CLOSED_BOOK_ROW, STANDARD_ROW, AWARE_ROW, PLACEBO_ROW, *CEILING_ROWS)


@dataclass
class DemoResult:
    """What ``run_demo`` produced: the pooled report, the per-seed runs and the files written."""

    pooled: ConsistencyReport
    runs: list[SeedRun]
    comparisons: dict[str, list[PairedComparison]]
    files: dict[str, Path]
    seconds: float
    markdown: str


def run_demo(config: DemoConfig, echo: Echo = print) -> DemoResult:
    """Run the demo (see :mod:`llama_index_lvlm_retriever.demo`); print and write the results."""
    start = time.perf_counter()
    out = config.output_dir
    if config.fresh and config.cache_dir.exists():
        echo(f"--fresh: deleting the cache {config.cache_dir}")
        shutil.rmtree(config.cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    _intro(config, echo)
    with _fixed_threads(config.threads):
        runs = [run_seed(config, seed, echo) for seed in config.seeds]
    pooled = pool_reports([run.report for run in runs], [run.seed for run in runs], n_bootstrap=config.n_bootstrap)
    comparisons = {
        "LVLM-aware RAG vs standard RAG": pooled.compare(AWARE_ROW, STANDARD_ROW),
        "placebo vs standard RAG": pooled.compare(PLACEBO_ROW, STANDARD_ROW),
        "LVLM-aware RAG vs placebo (subsets by standard RAG)": pooled.compare(
            AWARE_ROW, PLACEBO_ROW, subsets_from=STANDARD_ROW
        ),
    }
    seconds = time.perf_counter() - start
    markdown = demo_markdown(config, runs, pooled, comparisons, seconds)
    files = write_report(pooled, out)  # report.json, report.md, PNG plots
    files["demo"] = atomic_write_text(out / "demo.md", markdown)
    files["summary"] = atomic_write_json(out / "demo_summary.json", _summary(config, runs, pooled, comparisons, seconds))
    for run in runs:
        run.report.to_json(out / "seeds" / f"seed{run.seed}" / "report.json")
    echo("")
    echo(markdown)
    _example_query(runs[-1], config, echo)
    echo(f"\nwritten: {', '.join(str(path) for path in files.values())}")
    echo(f"total wall time {time.perf_counter() - start:.1f} s")
    return DemoResult(pooled=pooled, runs=runs, comparisons=comparisons, files=files, seconds=seconds,
                      markdown=markdown)


def _intro(config: DemoConfig, echo: Echo) -> None:
    echo("llama-index-lvlm-retriever demo: LVLM-aware retrieval for RAG diagnosis (arXiv 2508.17394), end to end")
    if config.real_mode:
        echo(f"real mode: dataset {config.dataset}, retriever {config.retriever_model or 'small CLIP'}, "
             f"reader {config.reader_model or 'small LLaVA'}")
    else:
        echo("offline miniature: no pretrained CLIP or LVLM can be downloaded here, so this run trains its own "
             "small ones with the package's code\n(a small CLIP, contrastive; a small LLaVA, retrieval-augmented "
             "SFT) and saves/loads them with from_pretrained like real checkpoints.")
    echo(f"seeds {list(config.seeds)}{' (quick run)' if config.quick else ''}; cache {config.cache_dir}\n")


def pool_reports(reports: list[ConsistencyReport], seeds: list[int], *, n_bootstrap: int) -> ConsistencyReport:
    """One report over the test cases of every seed (case ids prefixed ``seed<N>/``).

    The cases of different seeds are different draws (split, models, training), so pooling them
    gives intervals that include the variation between seeds.
    """
    first = reports[0]
    predictions: dict[str, list[CasePrediction]] = {system: [] for system in first.systems}
    for seed, report in zip(seeds, reports):
        for system in first.systems:
            for row in report.rows[system]:
                predictions[system].append(
                    CasePrediction(
                        case_id=f"seed{seed}/{row.case_id}",
                        gold=row.gold,
                        distributions=np.asarray(row.neighbour_distributions, dtype=np.float64),
                        retrieval_scores=None if row.retrieval_scores is None else np.asarray(row.retrieval_scores),
                        neighbour_ids=row.neighbour_ids,
                        neighbour_labels=row.neighbour_labels,
                        neighbour_heads=row.neighbour_heads,
                    )
                )
    task = type("Task", (), {"labels": first.labels, "multi_label": first.multi_label})()
    settings = first.settings
    return evaluate_predictions(
        predictions, task, method=settings.get("method", "weighted"),
        temperature=float(settings.get("temperature", 1.0)), baseline=first.baseline,
        n_bootstrap=n_bootstrap, seed=0,
        settings={"k": settings.get("k"), "seeds": list(seeds), "pooled_over_seeds": True},
    )


def _pct(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{100 * value:.1f}"


def _ci(report: ConsistencyReport, system: str, metric: str) -> str:
    est = report.estimate(system, metric)
    if not np.isfinite(est.value):
        return "-"
    if not np.isfinite(est.ci_low):
        return _pct(est.value)
    return f"{_pct(est.value)} [{_pct(est.ci_low)}, {_pct(est.ci_high)}]"


def headroom_captured(report: ConsistencyReport, system: str) -> float:
    """(system - standard RAG) / (oracle-fit head - standard RAG) in accuracy; NaN without headroom."""
    if ORACLE_FIT_ROW not in report.systems or system not in report.systems:
        return float("nan")
    base = report.estimate(STANDARD_ROW, "accuracy").value
    room = report.estimate(ORACLE_FIT_ROW, "accuracy").value - base
    return (report.estimate(system, "accuracy").value - base) / room if room > 1e-9 else float("nan")


def headline_table(report: ConsistencyReport, k: int) -> list[str]:
    """The paper-style table: one row per system, percentages with 95% intervals; ceilings last."""
    lines = [
        f"| System | Accuracy (95% CI) | Macro-F1 | Inconsistent | Acc. consistent | Acc. inconsistent | Oracle@{k} | "
        "Acc. img head | Acc. text head | Headroom captured |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in ROWS:
        if system not in report.systems:
            continue
        value = lambda metric: _pct(report.estimate(system, metric).value)  # noqa: E731
        share = headroom_captured(report, system) if system in (AWARE_ROW, PLACEBO_ROW) else float("nan")
        label = f"*{system}* (not legal)" if system in CEILING_ROWS else system
        lines.append(
            f"| {label} | {_ci(report, system, 'accuracy')} | {value('macro_f1')} | {value('inconsistent_rate')} | "
            f"{value('accuracy_consistent')} | {value('accuracy_inconsistent')} | {value('oracle')} | "
            f"{value('accuracy_image_head')} | {value('accuracy_text_head')} | "
            f"{'-' if not np.isfinite(share) else f'{100 * share:.0f}%'} |"
        )
    return lines


def _comparison_lines(comparisons: dict[str, list[PairedComparison]]) -> list[str]:
    lines = [
        "| Comparison | Cases | n | Accuracy | Reference | Difference (95% CI) | b | c | McNemar p |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for title, rows in comparisons.items():
        for c in rows:
            if c.subset == "consistent":
                continue
            subset = "all" if c.subset == "all" else "standard-RAG-inconsistent" if "standard" in title else (
                f"{c.baseline}-inconsistent")
            d = c.difference
            diff = "-" if not np.isfinite(d.value) else (
                f"{100 * d.value:+.1f} [{100 * d.ci_low:+.1f}, {100 * d.ci_high:+.1f}]" if np.isfinite(d.ci_low)
                else f"{100 * d.value:+.1f}")
            lines.append(
                f"| {title} | {subset} | {c.n_cases} | {_pct(c.accuracy)} | {_pct(c.baseline_accuracy)} | {diff} | "
                f"{c.n_system_only} | {c.n_baseline_only} | {c.p_value:.3g} |"
            )
    return lines


def demo_markdown(
    config: DemoConfig,
    runs: list[SeedRun],
    pooled: ConsistencyReport,
    comparisons: dict[str, list[PairedComparison]],
    seconds: float,
) -> str:
    """The demo's report: setting, headline table, paired comparisons, per-seed lines, verdict."""
    data = runs[0].data
    n_test = sum(run.sizes["test"] for run in runs)
    lines = [
        "# LVLM-aware retrieval, end to end" + (" (quick run)" if config.quick else ""),
        "",
        f"Data: {data.description if data else config.dataset}. "
        f"{len(runs)} seed(s) {list(config.seeds)}, {n_test} test cases pooled; k = {config.k} neighbours; "
        f"percentages with 95% bootstrap intervals over cases ({config.n_bootstrap} resamples).",
        "",
        *headline_table(pooled, config.k),
        "",
        f"Each system reads {config.k_image} image-head + {config.k_text} text-head neighbours (the paper's 2 + 2; "
        "fewer when both heads find a pair), fused per head by max-normalisation. "
        "Placebo: the frozen query embedding perturbed at random so that its top-k lists overlap standard RAG's as "
        "much as the trained retriever's do; it shows how much any change of neighbours moves the numbers. "
        "Ceiling rows use the test cases' labels or reader feedback (not legal systems): they bound what a better "
        "choice of neighbours could gain; headroom captured = (system - standard) / (oracle-fit head - standard).",
        "",
        "## Roles (seed " + str(runs[0].seed) + ")",
        "",
        "No image is in two roles (checked by content hash); the retriever-training queries are unseen by the "
        "encoder's pre-training and by the reader's SFT.",
        "",
        *(data.role_lines if data else []),
        "",
        "## What the frozen encoder and the reader do",
        "",
        "| Seed | Linear probe on frozen KB vectors | Frozen top-k label precision, image / caption | Majority | "
        "Reader P(gold), same-label / other-label candidate (training pools) | Gamma (image / text) | "
        "Target keeps frozen top-k (image / text) | Neighbours shared with the reader's best: standard / aware / "
        "oracle-fit | Adopted |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *_diagnostic_lines(runs),
        "",
        "## Paired comparisons",
        "",
        "b = cases only the first system gets right, c = only the reference; subsets by standard RAG's consistency.",
        "",
        *_comparison_lines(comparisons),
        "",
        "## Per seed",
        "",
        "| Seed | Test cases | Standard RAG | LVLM-aware RAG | Placebo | Top-k overlap (aware / placebo) | Wall time (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        acc = lambda system: _pct(run.report.estimate(system, "accuracy").value)  # noqa: E731,B023
        lines.append(
            f"| {run.seed} | {run.sizes['test']} | {acc(STANDARD_ROW)} | {acc(AWARE_ROW)} | {acc(PLACEBO_ROW)} | "
            f"{run.overlap:.3f} / {run.placebo.achieved_overlap:.3f} | {sum(run.timings.values()):.0f} |"
        )
    lines += ["", "## Verdict", "", *_verdict(comparisons), *_headroom_line(pooled), "",
              f"Wall time of this run: {seconds:.0f} s."]
    if data is not None:
        lines += ["", f"Data licence: {data.licence}"]
    return "\n".join(lines) + "\n"


def _headroom_line(report: ConsistencyReport) -> list[str]:
    if ORACLE_FIT_ROW not in report.systems:
        return []
    base = report.estimate(STANDARD_ROW, "accuracy").value
    room = report.estimate(ORACLE_FIT_ROW, "accuracy").value - base
    share = headroom_captured(report, AWARE_ROW)
    captured = "-" if not np.isfinite(share) else f"{100 * share:.0f}%"
    return [f"- Headroom: the oracle-fit head (trained on the test cases' own feedback, not legal) is "
            f"{100 * room:+.1f} points from standard RAG; LVLM-aware RAG captures {captured} of it."]


def _diagnostic_lines(runs: list[SeedRun]) -> list[str]:
    lines = []
    for run in runs:
        d = run.training.get("diagnostics") or {}
        use = run.training.get("neighbour_use") or {}
        gamma = run.training.get("gamma") or {}
        adoption = run.training.get("adoption") or {}
        fmt = lambda x: "-" if x is None or not np.isfinite(x) else f"{x:.3f}"  # noqa: E731
        gammas = " / ".join(fmt(gamma.get(h)) if h in gamma else "-" for h in ("image", "text"))
        share = run.training.get("frozen_topk_share") or {}
        shares = " / ".join(fmt(share.get(h)) if h in share else "-" for h in ("image", "text"))
        overlap = run.training.get("overlap_with_reader_best") or {}
        overlaps = " / ".join(fmt(overlap.get(row)) for row in (STANDARD_ROW, AWARE_ROW, ORACLE_FIT_ROW))
        adopted = "yes" if adoption.get("adopted") else "no (kept standard RAG)" if adoption else "-"
        lines.append(
            f"| {run.seed} | {fmt(d.get('linear_probe_accuracy'))} | {fmt(d.get('topk_precision_image'))} / "
            f"{fmt(d.get('topk_precision_text'))} | {fmt(d.get('majority_baseline'))} | "
            f"{fmt(use.get('same_label'))} / {fmt(use.get('other_label'))} | {gammas} | {shares} | {overlaps} | {adopted} |"
        )
    return lines


def _verdict(comparisons: dict[str, list[PairedComparison]]) -> list[str]:
    def pick(title: str, subset: str) -> PairedComparison:
        return next(c for c in comparisons[title] if c.subset == subset)

    def says(c: PairedComparison) -> str:
        d = c.difference
        if c.n_cases == 0 or not np.isfinite(d.value):
            return "no such cases"
        if not np.isfinite(d.ci_low):
            return f"{100 * d.value:+.1f} points (no interval)"
        sign = "better" if d.ci_low > 0 else "worse" if d.ci_high < 0 else "not distinguishable from 0"
        return f"{100 * d.value:+.1f} points [{100 * d.ci_low:+.1f}, {100 * d.ci_high:+.1f}], {sign}"

    overall = pick("LVLM-aware RAG vs standard RAG", "all")
    hard = pick("LVLM-aware RAG vs standard RAG", "inconsistent")
    beyond = pick("LVLM-aware RAG vs placebo (subsets by standard RAG)", "inconsistent")
    return [
        f"- LVLM-aware vs standard RAG, all {overall.n_cases} cases: {says(overall)}.",
        f"- On the {hard.n_cases} cases standard RAG found inconsistent: {says(hard)}.",
        f"- LVLM-aware minus placebo on those cases: {says(beyond)} "
        "(the part of the change that a random change of neighbours does not explain).",
    ]


@contextlib.contextmanager
def _fixed_threads(threads: int) -> Iterator[None]:
    """A fixed torch thread count and deterministic kernels for the run; the previous settings after."""
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def _summary(
    config: DemoConfig,
    runs: list[SeedRun],
    pooled: ConsistencyReport,
    comparisons: dict[str, list[PairedComparison]],
    seconds: float,
) -> dict[str, Any]:
    return {
        "config": json.loads(config.model_dump_json()),
        "seconds": seconds,
        "pooled": {system: pooled.metrics(system) for system in pooled.systems},
        "comparisons": {title: [c.to_dict() for c in rows] for title, rows in comparisons.items()},
        "seeds": [
            {
                "seed": run.seed,
                "sizes": run.sizes,
                "timings_s": run.timings,
                "cached": run.cached,
                "top_k_overlap": run.overlap,
                "placebo": run.placebo.to_dict(),
                "training": run.training,
                "accuracy": {system: run.report.estimate(system, "accuracy").value for system in run.report.systems},
            }
            for run in runs
        ],
    }


def _example_query(run: SeedRun, config: DemoConfig, echo: Echo) -> None:
    """One test case through LVLMDiagnosisQueryEngine with the trained retriever."""
    if run.retriever is None or run.reader is None or run.data is None or not run.data.test:
        return
    inconsistent = {row.case_id for row in run.report.rows[STANDARD_ROW] if not row.consistent}
    case = next((c for c in run.data.test if c.id in inconsistent), run.data.test[0])
    engine = LVLMDiagnosisQueryEngine.from_defaults(
        reader=run.reader, retriever=run.retriever, top_n=config.k, min_support=0.5
    )
    response = engine.query(QueryBundle(query_str=case.question, image_path=case.image_path))
    meta = response.metadata or {}
    echo(f"\nexample query through LVLMDiagnosisQueryEngine (seed {run.seed}, test case {case.id}, "
         f"gold grade {case.labels[0]}):")
    echo(f"  answer: {response.response}")
    echo(f"  label {meta.get(keys.ANSWER)}, probability {meta.get(keys.PROBABILITY, float('nan')):.3f}, "
         f"answer support {meta.get(keys.SUPPORT, float('nan')):.2f}, abstain {meta.get(keys.ABSTAIN)} (min support 0.5)")
    for node in response.source_nodes:
        echo(f"  evidence {node.node.node_id:<14} score {node.score:.3f}  {node.node.get_content()[:90]}")
    result = ConsistencyEvaluator().evaluate_response(response=response)
    echo(f"  consistency: majority share {result.score:.2f}, consistent {result.passing}; {result.feedback}")
