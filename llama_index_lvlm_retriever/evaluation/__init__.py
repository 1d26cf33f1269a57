"""Evaluation: accuracy, consistency of retrieval predictions, oracle@k, intervals and reports.

``evaluate_dataset`` runs retrievers and a reader over labelled cases; ``evaluate_predictions`` takes
precomputed per-neighbour reader distributions; both return a :class:`ConsistencyReport`, written
with :func:`write_report` (JSON, Markdown, PNG plots). :class:`ConsistencyEvaluator` scores single
query-engine responses inside LlamaIndex's evaluation tooling.
"""

from __future__ import annotations

from llama_index_lvlm_retriever.evaluation.bootstrap import (
    Estimate,
    bootstrap_estimates,
    mcnemar_exact,
)
from llama_index_lvlm_retriever.evaluation.clinical_metrics import (
    class_rates,
    clinical_metrics,
    confusion_matrix,
    expected_calibration_error,
    reliability_bins,
)
from llama_index_lvlm_retriever.evaluation.comparison import PairedComparison, compare_rows
from llama_index_lvlm_retriever.evaluation.consistency_evaluator import ConsistencyEvaluator
from llama_index_lvlm_retriever.evaluation.dataset import CLOSED_BOOK, evaluate_dataset
from llama_index_lvlm_retriever.evaluation.predictions import evaluate_predictions
from llama_index_lvlm_retriever.evaluation.records import CasePrediction, CaseResult, score_case
from llama_index_lvlm_retriever.evaluation.report import (
    ConsistencyReport,
    metric_prefix,
    write_report,
)
from llama_index_lvlm_retriever.evaluation.risk_control import (
    RiskControl,
    choose_min_support,
    load_threshold_file,
    save_threshold_file,
)
from llama_index_lvlm_retriever.evaluation.subgroups import subgroup_estimates
from llama_index_lvlm_retriever.evaluation.system_metrics import METRIC_DESCRIPTIONS

__all__ = [
    "CLOSED_BOOK",
    "METRIC_DESCRIPTIONS",
    "CasePrediction",
    "CaseResult",
    "ConsistencyEvaluator",
    "ConsistencyReport",
    "Estimate",
    "PairedComparison",
    "RiskControl",
    "bootstrap_estimates",
    "choose_min_support",
    "class_rates",
    "clinical_metrics",
    "compare_rows",
    "confusion_matrix",
    "evaluate_dataset",
    "evaluate_predictions",
    "expected_calibration_error",
    "load_threshold_file",
    "mcnemar_exact",
    "metric_prefix",
    "reliability_bins",
    "save_threshold_file",
    "score_case",
    "subgroup_estimates",
    "write_report",
]
