"""TrainingReporter: training metrics to TensorBoard, MLflow or W&B through transformers' integrations.

Reader SFT runs on ``transformers.Trainer``, which takes the callbacks
:func:`reporting_callbacks` builds. Retriever training is our own loop; :class:`TrainingReporter`
drives the same callbacks (``on_train_begin``, ``on_log`` per logged step, ``on_train_end``) with a
``TrainingArguments``/``TrainerState`` pair, so both stages log through one code path and each
integration's own environment variables (``MLFLOW_TRACKING_URI``, ``WANDB_MODE``, ...) apply.

The default is ``("none",)``: nothing is imported or written, nothing is contacted. TensorBoard
writes event files under ``report_dir`` (offline); MLflow logs to ``./mlruns`` unless
``MLFLOW_TRACKING_URI`` says otherwise; W&B needs ``WANDB_MODE=offline`` (or a login) off-line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "REPORT_TARGETS",
    "ReportTarget",
    "TrainingReporter",
    "check_report_to",
    "default_report_dir",
    "reporting_callbacks",
]

logger = logging.getLogger(__name__)

ReportTarget = Literal["none", "tensorboard", "mlflow", "wandb"]
REPORT_TARGETS: tuple[str, ...] = get_args(ReportTarget)
"""Accepted ``report_to`` values (transformers' integration names; ``"none"`` alone = no reporting)."""

# What to install for each integration (transformers raises a RuntimeError naming the library).
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_report_to(report_to: Sequence[str]) -> tuple[str, ...]:
    """Validate a ``report_to`` tuple; returns it.

    Raises:
        ValueError: An unknown name, an empty tuple, or ``"none"`` together with a real target.
    """
    values = tuple(report_to)
    unknown = [value for value in values if value not in REPORT_TARGETS]
    if unknown:
        raise ValueError(f"report_to {unknown} is not one of {list(REPORT_TARGETS)}")
    if not values or ("none" in values and len(values) > 1):
        raise ValueError(f"report_to {list(values)}: pass 'none' alone, or one or more of {list(REPORT_TARGETS[1:])}")
    return values


def default_report_dir(run_name: str) -> Path:
    """``runs/<run_name>-<YYYYmmdd-HHMMSS>`` in the working directory (transformers' ``runs/`` habit)."""
    return Path("runs") / f"{run_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def reporting_callbacks(report_to: Sequence[str], report_dir: str | Path | None, *, run_name: str = "lvlm-retriever") -> list[Any]:
    """transformers ``TrainerCallback`` objects for ``report_to`` (empty for ``("none",)``).

    Args:
        report_to: Integration names, see :data:`REPORT_TARGETS`.
        report_dir: Folder TensorBoard's event files go to; ``None``: :func:`default_report_dir`.
        run_name: Names the default folder.

    Raises:
        ImportError: An integration's library is not installed; the message names the package.
        ValueError: ``report_to`` is invalid (see :func:`check_report_to`).
    """
    targets = [t for t in check_report_to(report_to) if t != "none"]
    if not targets:
        return []
    from transformers import integrations

    available = {"tensorboard": integrations.is_tensorboard_available, "mlflow": integrations.is_mlflow_available,
                 "wandb": integrations.is_wandb_available}
    missing = [t for t in targets if not available[t]()]
    if missing:
        # Checked before building any callback: a half-built one (transformers' own check fails in
        # __init__) complains again when garbage-collected.
        packages = " ".join(_PACKAGES[t] for t in missing)
        raise ImportError(f"--report-to {' '.join(missing)} needs the {packages} package: pip install {packages}")
    callbacks = []
    for target, callback_class in zip(targets, integrations.get_reporting_integration_callbacks(targets)):
        callback = callback_class()
        if target == "tensorboard":
            # Not the Trainer's output folder: reader SFT's is a scratch folder deleted after training.
            callback.logging_dir = str(Path(report_dir or default_report_dir(run_name)).expanduser())
        callbacks.append(callback)
    return callbacks


class TrainingReporter:
    """Send a hand-written training loop's metrics to transformers' reporting integrations.

    Args:
        report_to: Integration names (``("none",)``: every method is a no-op).
        report_dir: Folder for TensorBoard event files (created on the first write); ``None``:
            :func:`default_report_dir`.
        run_name: The run's name in MLflow / W&B.

    Raises:
        ImportError: An integration's library is not installed.
        ValueError: ``report_to`` is invalid.

    Example:
        >>> reporter = TrainingReporter(("none",), "runs/heads/runs")
        >>> reporter.log({"loss": 0.7}, step=1)  # nothing is written with "none"
        >>> reporter.close()
    """

    def __init__(
        self, report_to: Sequence[str], report_dir: str | Path | None, *, run_name: str = "lvlm-retriever"
    ) -> None:
        self._callbacks = reporting_callbacks(report_to, report_dir, run_name=run_name)
        self._started = False
        self._args: Any = None
        self._state: Any = None
        self._control: Any = None
        if self._callbacks:
            from transformers import TrainerControl, TrainerState, TrainingArguments

            # The callbacks read the output folder, run name and process rank from these; report_to
            # "none" here because the callbacks are ours (the arguments must not build their own).
            output_dir = str(report_dir or default_report_dir(run_name))
            self._args = TrainingArguments(output_dir=output_dir, run_name=run_name, report_to="none", use_cpu=True)
            self._state = TrainerState()
            self._control = TrainerControl()

    @property
    def active(self) -> bool:
        """Whether any integration receives the metrics."""
        return bool(self._callbacks)

    def log(self, metrics: Mapping[str, Any], *, step: int) -> None:
        """Log the numeric values of ``metrics`` at ``step`` (other values are skipped)."""
        if not self._callbacks:
            return
        if not self._started:
            self._started = True
            for callback in self._callbacks:
                callback.on_train_begin(self._args, self._state, self._control)
        self._state.global_step = int(step)
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            for callback in self._callbacks:
                callback.on_log(self._args, self._state, self._control, logs=numbers)

    def close(self) -> None:
        """End the run in every integration (flushes TensorBoard's files)."""
        if self._callbacks and self._started:
            for callback in self._callbacks:
                callback.on_train_end(self._args, self._state, self._control)
        self._started = False
