"""Typed settings of the retriever-training stage: feedback collection and the fine-tuning engine.

Both are pydantic models with a description and bounds on every field, validated eagerly (a bad
value raises at construction and the message echoes it), frozen, and JSON round-trippable, so a
run's settings are written next to its outputs and a CLI flag maps one-to-one onto a field.
"""

from __future__ import annotations

from typing import Literal

from llama_index.core.bridge.pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from llama_index_lvlm_retriever.training.reporting import ReportTarget, check_report_to

FeedbackHead = Literal["image", "text"]
TrainMode = Literal["adapter", "encoder"]
TrainHead = Literal["text", "image", "both"]
Schedule = Literal["joint", "sequential"]
SelectionMetric = Literal["val_rag_loglik", "val_loss"]
AdapterKind = Literal["linear", "mlp"]
Adoption = Literal["no_regression", "best"]
Gamma = float | Literal["auto"]
TargetLoss = Literal["posterior", "lsr", "rank", "emdr"]

ADAPTER_LEARNING_RATE = 0.1
"""Default peak rate of residual adapter heads (training/target_grid.py's validation runs)."""
ENCODER_LEARNING_RATE = 3e-3
"""Default peak rate of a trainable tower copy (encoder mode); 0.1 would overwrite the copied weights."""


class FeedbackConfig(BaseModel):
    """Settings of :func:`~llama_index_lvlm_retriever.training.feedback.collect_feedback`.

    Example:
        >>> FeedbackConfig(n_candidates=20, shard_size=128).heads
        ('image', 'text')
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_candidates: int = Field(
        default=50, gt=0, description="Candidates N retrieved and scored per case and head (the paper: 50)."
    )
    heads: tuple[FeedbackHead, ...] = Field(
        default=("image", "text"), description="Retriever heads whose candidates are collected."
    )
    embed_batch_size: int = Field(default=32, gt=0, description="Query images per frozen-encoder call.")
    reader_batch_size: int = Field(
        default=64, gt=0, description="(case, candidate) pairs per reader.score call."
    )
    shard_size: int = Field(
        default=256, gt=0, description="Cases per shard file; a shard is the unit of resumption and of work per rank."
    )
    disagree_k: int | None = Field(
        default=None,
        gt=0,
        description="Top-k candidates per head whose reader predictions define a disagreeing case; "
        "None = the retriever's k_image / k_text.",
    )

    @field_validator("heads")
    @classmethod
    def _check_heads(cls, heads: tuple[str, ...]) -> tuple[str, ...]:
        if not heads:
            raise ValueError("FeedbackConfig.heads is empty; collect at least one of ('image', 'text')")
        if len(set(heads)) != len(heads):
            raise ValueError(f"FeedbackConfig.heads has duplicates: {list(heads)}")
        return tuple(heads)


class TrainerConfig(BaseModel):
    """Settings of :class:`~llama_index_lvlm_retriever.training.trainer.RetrieverFinetuneEngine`.

    Defaults follow the paper where it is sound (blend 0.15, the text head before the image head in
    the ``"sequential"`` schedule) and fix it where it is not: the softmax temperature is derived from
    the encoder's score spread (``gamma="auto"``, see
    :mod:`~llama_index_lvlm_retriever.training.temperature`) instead of a fixed 0.05; weight decay
    pulls toward the initial weights (L2-SP, 0.01) instead of toward zero at 1.0; gradients are
    clipped after ``backward``; a trained head is adopted only when it beats the initial heads on
    validation (``adoption="no_regression"``).

    Example:
        >>> TrainerConfig(schedule="sequential", max_steps=100).resolved_learning_rate
        0.1
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: TrainMode = Field(
        default="adapter",
        description="'adapter': a residual QueryHead on cached frozen query embeddings (fast, KB untouched); "
        "'encoder': a trainable copy of the encoder's image tower per head (the paper; needs the cases' images).",
    )
    encoder_last_n_blocks: int = Field(
        default=1,
        ge=0,
        description="'encoder' mode: trainable transformer blocks of the tower copy, counted from the last "
        "(the post-layernorm and projection always train); not used with encoder_lora_r.",
    )
    encoder_lora_r: int | None = Field(
        default=None,
        gt=0,
        description="'encoder' mode: rank of LoRA adapters on the tower copy instead of training its last blocks; "
        "only the adapters train, and a saved head has them merged in. Needs the 'peft' extra. None = no LoRA.",
    )
    encoder_lora_alpha: float = Field(
        default=16.0, gt=0.0, description="'encoder' mode with LoRA: scaling numerator (update = alpha / r * B A)."
    )
    encoder_lora_dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="'encoder' mode with LoRA: dropout on the adapters' input."
    )
    encoder_lora_target_modules: tuple[str, ...] = Field(
        default=("q_proj", "v_proj"),
        description="'encoder' mode with LoRA: linear layers of each tower block that get adapters "
        "(CLIP: q_proj, k_proj, v_proj, out_proj, fc1, fc2).",
    )
    schedule: Schedule = Field(
        default="joint",
        description="'joint': all trained heads in one optimisation; 'sequential': the text head first, "
        "then the image head (the paper).",
    )
    head_kind: AdapterKind = Field(
        default="mlp", description="Kind of a new head when the retriever has none to continue from."
    )
    head_hidden_dim: int | None = Field(
        default=None, gt=0, description="Hidden width of a new 'mlp' head; None = the embedding dim."
    )
    alpha: float = Field(
        default=0.15, ge=0.0, le=1.0, description="Blend weight of a new head (the paper: 0.15)."
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout inside a new head.")
    max_steps: int = Field(default=600, gt=0, description="Optimiser steps per phase (per head when sequential).")
    batch_size: int = Field(default=256, gt=0, description="Training cases per step.")
    learning_rate: float | None = Field(
        default=None,
        gt=0.0,
        description="Peak AdamW learning rate; None = 0.1 in 'adapter' mode, 3e-3 in 'encoder' mode (the rates of the "
        "validation grid: with gamma 1 the gradients are small and Adam's step is the rate itself).",
    )
    weight_decay: float = Field(
        default=0.01,
        ge=0.0,
        description="L2-SP coefficient lambda: the loss gains lambda * ||w - w0||^2 over the trainable weights, "
        "pulling them toward their initial values (the frozen tower copy, the identity adapter), not toward zero; "
        "AdamW's own decoupled decay is 0.",
    )
    gamma: Gamma = Field(
        default=1.0,
        description="Temperature dividing cosines in the retrieval softmax of the default loss (and of the pool "
        "validation): a float > 0, or 'auto' = per head, the temperature at which the frozen retriever's softmax "
        "over the training candidates has a mean entropy of half log n (see training.temperature). The default "
        "1.0 on raw cosines (the paper's code) was chosen on validation cases over 'auto' (README).",
    )
    loss: TargetLoss = Field(
        default="posterior",
        description="Default loss when none is passed: 'posterior' = PosteriorKLLoss (the paper; prior_gamma), "
        "'lsr' = LSRLoss (REPLUG; beta), 'rank' = ReaderRankLoss (pairwise, the reader's order; rank_min_gap), "
        "'emdr' = EMDRLoss. Chosen on validation cases (README, 'Choosing the training target').",
    )
    prior_gamma: float | None = Field(
        default=None,
        gt=0.0,
        description="'posterior' only: temperature dividing the frozen scores in the prior; None = the head's "
        "gamma (a prior as sharp as the cosine gaps: its optimum is the frozen ranking); 1.0 = the paper's code.",
    )
    beta: float = Field(default=1.0, gt=0.0, description="'lsr' only: temperature dividing the reader log-likelihoods.")
    rank_min_gap: float = Field(
        default=0.0, ge=0.0, description="'rank' only: smallest reader log-likelihood gap (nats) that makes a pair."
    )
    only_inconsistent: bool = Field(
        default=False, description="Train only on cases whose reader predictions differ across the top-k candidates."
    )
    inconsistent_weight: float = Field(
        default=1.0,
        ge=1.0,
        description="Weight of an inconsistent case relative to a consistent one in the loss (the soft version "
        "of only_inconsistent); 1 = equal.",
    )
    rounds: int = Field(
        default=1,
        ge=1,
        description="Feedback rounds: after each round but the last, the trained heads retrieve new candidates "
        "for the training cases, the reader scores the new pairs (through the feedback cache) and training "
        "continues on the merged pool. > 1 needs reader= and cases=.",
    )
    adoption: Adoption = Field(
        default="no_regression",
        description="'no_regression': keep the trained heads only if their paired validation log-likelihood gain "
        "over the initial heads has a one-sided bootstrap lower bound > 0 and validation accuracy does not "
        "drop, else keep the initial heads; 'best': keep the best validation checkpoint.",
    )
    adoption_holdout: float = Field(
        default=0.5,
        ge=0.0,
        lt=1.0,
        description="Share of the validation cases (drawn by seed) kept out of checkpoint selection and used only "
        "by the adoption rule, so the decision is not biased by the selection (the winner's curse); 0 = both "
        "use every validation case.",
    )
    adoption_confidence: float = Field(
        default=0.9,
        gt=0.5,
        lt=1.0,
        description="One-sided confidence of the no-regression rule's bootstrap lower bound.",
    )
    bootstrap_resamples: int = Field(
        default=1000, gt=0, description="Bootstrap resamples (over validation cases) of the no-regression rule."
    )
    max_grad_norm: float | None = Field(
        default=1.0, gt=0.0, description="Clip the global gradient norm to this after backward; None = no clipping."
    )
    warmup_ratio: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of a phase's steps with linear learning-rate warmup."
    )
    min_lr_ratio: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Floor of the cosine decay, as a share of the peak rate."
    )
    n_train_candidates: int | None = Field(
        default=None,
        gt=0,
        description="Candidates per case and head in the training softmax: the top ones of the cached "
        "pool under the current head; None = the whole pool.",
    )
    refresh_every: int = Field(
        default=0,
        ge=0,
        description="Re-draw the training candidates from the cached pool with the current head every "
        "this many steps; 0 = draw once, at the start.",
    )
    validation_fraction: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Share of cases held out (by case) for validation when no validation cache is given.",
    )
    eval_every: int = Field(default=25, gt=0, description="Validate every this many steps (and at step 0).")
    patience: int | None = Field(
        default=None,
        gt=0,
        description="Stop a phase after this many validations without improvement; None = never stop early.",
    )
    selection_metric: SelectionMetric = Field(
        default="val_rag_loglik",
        description="Checkpoint selection: validation RAG log-likelihood (higher is better) or loss (lower).",
    )
    val_top_k: int | None = Field(
        default=None,
        gt=0,
        description="Top-k per head in the validation RAG log-likelihood; None = the retriever's k_image / k_text.",
    )
    val_gamma: float | None = Field(
        default=None,
        gt=0.0,
        description="Pool validation (no reader given) only: temperature dividing cosines in its retrieval "
        "softmax; None = the head's resolved gamma. Real-retrieval validation fuses as at inference.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of torch and numpy (split, batches, init).")
    device: str = Field(default="cpu", description="Torch device for training ('cpu', 'cuda', 'cuda:1', ...).")
    log_every: int = Field(default=10, gt=0, description="Record loss parts in the history every this many steps.")
    show_progress: bool = Field(default=True, description="Show a tqdm progress bar.")
    report_to: tuple[ReportTarget, ...] = Field(
        default=("none",),
        description="Send the logged loss parts and validation metrics (every log_every steps) to these "
        "transformers integrations (tensorboard, mlflow, wandb); 'none' = nothing is reported.",
    )
    report_dir: str | None = Field(
        default=None,
        description="Folder of TensorBoard's event files; None = runs/<run name>-<date-time> in the working directory.",
    )

    @field_validator("report_to")
    @classmethod
    def _check_report_to(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_report_to(value)

    @property
    def resolved_learning_rate(self) -> float:
        """``learning_rate``, or the validated rate of the mode when it is None."""
        if self.learning_rate is not None:
            return self.learning_rate
        return ENCODER_LEARNING_RATE if self.mode == "encoder" else ADAPTER_LEARNING_RATE

    @field_validator("encoder_lora_target_modules")
    @classmethod
    def _check_lora_targets(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        if not targets or not all(targets):
            raise ValueError(
                f"TrainerConfig.encoder_lora_target_modules must name at least one linear layer, e.g. "
                f"('q_proj', 'v_proj'), got {list(targets)}"
            )
        return tuple(targets)

    @model_validator(mode="after")
    def _check_lora_mode(self) -> TrainerConfig:
        if self.encoder_lora_r is not None and self.mode != "encoder":
            raise ValueError(
                f"encoder_lora_r={self.encoder_lora_r} applies to mode='encoder' only, got mode={self.mode!r}; "
                "set mode='encoder' or encoder_lora_r=None"
            )
        return self

    @field_validator("gamma")
    @classmethod
    def _check_gamma(cls, gamma: float | str) -> float | str:
        if gamma != "auto" and not (isinstance(gamma, (int, float)) and 0.0 < float(gamma) < float("inf")):
            raise ValueError(f"TrainerConfig.gamma must be a finite float > 0 or 'auto', got {gamma!r}")
        return gamma

    @model_validator(mode="after")
    def _check_refresh(self) -> TrainerConfig:
        if self.refresh_every > 0 and self.n_train_candidates is None:
            raise ValueError(
                f"refresh_every={self.refresh_every} needs n_train_candidates (the size of the re-drawn "
                "subset of the cached pool); set n_train_candidates or refresh_every=0"
            )
        return self


__all__ = ["FeedbackConfig", "TrainerConfig"]
