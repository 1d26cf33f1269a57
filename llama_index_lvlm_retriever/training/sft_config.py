"""ReaderSFTConfig: the typed settings of stage-1 reader SFT.

Its own light module (plain pydantic, no torch), so the CLI builds its parser, and prints
``--help``, without importing the training code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llama_index_lvlm_retriever.training.reporting import ReportTarget, check_report_to

SFTMode = Literal["full", "lora"]


class ReaderSFTConfig(BaseModel):
    """Typed settings of :class:`ReaderSFTEngine`.

    Example:
        >>> ReaderSFTConfig(mode="lora", lora_r=4).lora_alpha
        16.0
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=1, gt=0, description="Passes over the samples.")
    learning_rate: float = Field(default=2e-5, gt=0, description="Peak AdamW learning rate.")
    batch_size: int = Field(default=4, gt=0, description="Samples per forward pass (per device).")
    gradient_accumulation_steps: int = Field(
        default=1, gt=0, description="Forward passes per optimiser step (effective batch = batch_size x this)."
    )
    bf16: bool = Field(default=False, description="bfloat16 mixed precision (GPUs with bf16, recent CPUs).")
    mode: SFTMode = Field(default="lora", description="'full' fine-tuning or 'lora' adapters (peft).")
    lora_r: int = Field(default=8, gt=0, description="LoRA rank.")
    lora_alpha: float = Field(default=16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: tuple[str, ...] = Field(
        default=("q_proj", "v_proj"), description="Module names (suffixes) that get LoRA adapters."
    )
    merge_lora: bool = Field(
        default=False,
        description="LoRA: save the merged model (self-contained) instead of the adapters alone (small, need the base model).",
    )
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        default=0.1, ge=0, le=1, description="Fraction of steps with a linear learning-rate warmup (then linear decay)."
    )
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="Gradient-norm clip applied after backward (None = no clipping)."
    )
    max_image_side: int | None = Field(
        default=None, gt=0, description="Longest image side; None = the reader's prompt setting (keeps the inference format)."
    )
    seed: int = Field(default=0, description="Seed of the sample order and LoRA initialisation.")
    keep_checkpoints: int = Field(default=2, gt=0, description="Epoch checkpoints kept when checkpointing.")
    encoding_cache_mb: int = Field(
        default=1024, ge=0, description="Keep encoded samples (pixels, token ids) up to this size for later epochs."
    )
    show_progress: bool = Field(default=True, description="Show a tqdm bar.")
    report_to: tuple[ReportTarget, ...] = Field(
        default=("none",),
        description="Send the per-epoch losses to these transformers integrations (tensorboard, mlflow, wandb); "
        "'none' = nothing is reported.",
    )
    report_dir: str | None = Field(
        default=None,
        description="Folder of TensorBoard's event files; None = runs/<run name>-<date-time> in the working directory.",
    )

    @field_validator("report_to")
    @classmethod
    def _check_report_to(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_report_to(value)


__all__ = ["ReaderSFTConfig", "SFTMode"]
