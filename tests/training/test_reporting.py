"""--report-to: training metrics through transformers' integrations (TensorBoard here, offline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from llama_index_lvlm_retriever.training.config import TrainerConfig
from llama_index_lvlm_retriever.training.reporting import (
    TrainingReporter,
    check_report_to,
    reporting_callbacks,
)
from llama_index_lvlm_retriever.training.sft_config import ReaderSFTConfig


@pytest.mark.parametrize(
    ("value", "match", "config_match"),
    [
        (("tensorbord",), r"report_to \['tensorbord'\] is not one of \['none', 'tensorboard', 'mlflow', 'wandb'\]",
         r"Input should be 'none', 'tensorboard', 'mlflow' or 'wandb'.*input_value='tensorbord'"),
        (("none", "tensorboard"), r"pass 'none' alone", r"pass 'none' alone"),
        ((), r"pass 'none' alone", r"pass 'none' alone"),
    ],
)
def test_bad_report_to_is_refused_by_both_configs(value: tuple[str, ...], match: str, config_match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_report_to(value)
    with pytest.raises(ValueError, match=config_match):
        ReaderSFTConfig(report_to=value)
    with pytest.raises(ValueError, match=config_match):
        TrainerConfig(report_to=value)


def test_default_reports_nothing(tmp_path: Path) -> None:
    assert ReaderSFTConfig().report_to == ("none",) and TrainerConfig().report_to == ("none",)
    assert reporting_callbacks(("none",), tmp_path) == []
    reporter = TrainingReporter(("none",), tmp_path / "runs")
    reporter.log({"loss": 1.0}, step=1)
    reporter.close()
    assert not reporter.active and not (tmp_path / "runs").exists()


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed here")
def test_a_missing_integration_names_its_package(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match="--report-to mlflow needs the mlflow package: pip install mlflow"):
        reporting_callbacks(("mlflow",), tmp_path)


def test_tensorboard_receives_the_logged_numbers(tmp_path: Path, tensorboard_scalars: Any) -> None:
    reporter = TrainingReporter(("tensorboard",), tmp_path / "tb", run_name="unit")
    assert reporter.active
    reporter.log({"text/loss/text": 0.75, "text/lr": 1e-3, "text/phase": "text", "text/event": "train"}, step=1)
    reporter.log({"text/loss/text": 0.5, "text/lr": 1e-3}, step=2)
    reporter.close()
    scalars = tensorboard_scalars(tmp_path / "tb")
    # transformers' TensorBoardCallback files non-eval logs under train/.
    assert scalars["train/text/loss/text"] == [(1, pytest.approx(0.75)), (2, pytest.approx(0.5))]
    assert "train/text/phase" not in scalars  # strings are not numbers
