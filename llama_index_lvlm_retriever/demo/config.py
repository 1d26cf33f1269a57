"""Typed settings of the end-to-end demo (``lvlm-retriever demo`` / ``make demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "DATASETS",
    "DemoConfig",
    "MiniCLIPSettings",
    "MiniReaderSettings",
    "RetrieverTrainingSettings",
    "quick_config",
]

Dataset = Literal["elpv", "retinamnist", "dermamnist", "breastmnist"]
DATASETS: tuple[str, ...] = ("elpv", "retinamnist", "dermamnist", "breastmnist")


class MiniCLIPSettings(BaseModel):
    """The small CLIP trained offline as the frozen retriever encoder (skipped in real mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    patch_size: int = Field(default=8, gt=0, description="Vision patch side (divides the image size).")
    hidden: int = Field(default=64, gt=0, description="Width of both towers.")
    layers: int = Field(default=2, gt=0, description="Blocks per tower.")
    heads: int = Field(default=4, gt=0, description="Attention heads per block.")
    projection_dim: int = Field(default=32, gt=0, description="Embedding size (the KB vectors).")
    epochs: int = Field(default=30, gt=0, description="Contrastive epochs over the KB pairs.")
    batch_size: int = Field(default=64, ge=2, description="Pairs per step.")
    lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate.")


class MiniReaderSettings(BaseModel):
    """The small LLaVA reader trained offline by stage-1 SFT (skipped in real mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = Field(default=64, gt=0, description="Width of the Llama language model.")
    layers: int = Field(default=2, gt=0, description="Language-model blocks.")
    heads: int = Field(default=4, gt=0, description="Language-model attention heads.")
    init_from_retriever: bool = Field(
        default=True, description="Start the vision tower from the trained CLIP's image tower."
    )
    epochs: int = Field(default=14, gt=0, description="SFT epochs.")
    batch_size: int = Field(default=32, gt=0, description="SFT samples per step.")
    lr: float = Field(default=2e-3, gt=0, description="Peak AdamW learning rate (full fine-tuning).")
    per_head: int = Field(default=2, gt=0, description="Retrieved pairs per training case (the paper: 2).")


class RetrieverTrainingSettings(BaseModel):
    """Stage 2: feedback collection and LVLM-aware retriever training (encoder mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_candidates: int = Field(default=16, gt=0, description="Frozen top-N pool scored per training query.")
    kb_queries: int | None = Field(
        default=800, ge=0, description="KB items used as extra leave-one-out training queries (None = all)."
    )
    loss: Literal["posterior", "replug"] = Field(
        default="posterior", description="PosteriorKLLoss (frozen prior, the paper) or LSRLoss (REPLUG)."
    )
    gamma: float = Field(default=0.05, gt=0, description="Retrieval softmax temperature.")
    alpha: float = Field(default=0.15, gt=0, le=1, description="Blend weight of the trained tower copy.")
    last_n_blocks: int = Field(default=1, ge=0, description="Trainable blocks of the tower copy.")
    max_steps: int = Field(default=300, gt=0, description="Optimiser steps.")
    batch_size: int = Field(default=256, gt=0, description="Queries per step.")
    learning_rate: float = Field(default=3e-3, gt=0, description="Peak AdamW learning rate.")
    n_train_candidates: int = Field(default=10, gt=0, description="Candidates per query in the loss.")
    refresh_every: int = Field(default=10, ge=0, description="Re-rank the pool with the current head every M steps.")
    eval_every: int = Field(default=25, gt=0, description="Validate every this many steps.")


class DemoConfig(BaseModel):
    """Everything ``lvlm-retriever demo`` does, with defaults that fit 2 CPU cores in ~10 minutes.

    Example:
        >>> DemoConfig().seeds
        (0, 1, 2)
        >>> quick_config().seeds
        (0,)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_dir: Path = Field(default=Path("demo_output"), description="Reports, plots and the cache.")
    seeds: tuple[int, ...] = Field(default=(0, 1, 2), min_length=1, description="One full run per seed.")
    fresh: bool = Field(default=False, description="Delete the cache and rebuild everything.")
    quick: bool = Field(default=False, description="A small run (CI): fewer images, epochs and steps.")
    dataset: Dataset = Field(default="elpv", description="elpv (offline) or a MedMNIST task (real mode).")
    image_size: int = Field(default=48, gt=0, description="Side of the stored square images.")
    limit: int | None = Field(default=None, gt=0, description="Images used in total (stratified); None = all.")
    fractions: tuple[float, float, float, float] = Field(
        default=(0.5, 0.2, 0.05, 0.25), description="Shares of knowledge base / train / validation / test."
    )
    k: int = Field(default=4, gt=0, description="Neighbours read per test case (the paper: 4).")
    n_bootstrap: int = Field(default=1000, ge=0, description="Bootstrap resamples for every interval.")
    clip: MiniCLIPSettings = Field(default_factory=MiniCLIPSettings)
    reader: MiniReaderSettings = Field(default_factory=MiniReaderSettings)
    retriever_training: RetrieverTrainingSettings = Field(default_factory=RetrieverTrainingSettings)
    reader_batch_size: int = Field(default=64, gt=0, description="Prompts per reader forward pass.")
    retriever_model: str | None = Field(
        default=None, description="Real mode: a CLIP/SigLIP checkpoint (hub id or folder) instead of the small CLIP."
    )
    reader_model: str | None = Field(
        default=None, description="Real mode: an image-text-to-text checkpoint instead of the small LLaVA."
    )
    data_root: Path | None = Field(default=None, description="MedMNIST download folder (real mode).")
    device: str = Field(default="cpu", description="Torch device of the reader and training.")
    show_progress: bool = Field(default=True, description="tqdm bars.")

    @model_validator(mode="after")
    def _check(self) -> DemoConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {list(self.fractions)}")
        if self.retriever_model is None and self.image_size % self.clip.patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of clip.patch_size={self.clip.patch_size}"
            )
        if self.dataset != "elpv" and (self.retriever_model is None or self.reader_model is None):
            raise ValueError(
                f"--dataset {self.dataset} is the real mode: also pass --retriever-model (a CLIP/SigLIP "
                "checkpoint) and --reader-model (e.g. Qwen/Qwen2-VL-2B-Instruct); the small stand-in models "
                "are trained only on the offline elpv data"
            )
        return self

    @property
    def real_mode(self) -> bool:
        """Whether pretrained checkpoints replace the small models trained here."""
        return self.retriever_model is not None or self.reader_model is not None

    @property
    def cache_dir(self) -> Path:
        """Models, knowledge bases and feedback reused by later runs."""
        return self.output_dir / "cache"


def quick_config(**overrides: object) -> DemoConfig:
    """The ``--quick`` settings: one seed, 480 images, short training (CI, under 3 minutes)."""
    values: dict[str, object] = {
        "quick": True,
        "seeds": (0,),
        "limit": 480,
        "n_bootstrap": 200,
        "clip": MiniCLIPSettings(epochs=15),
        "reader": MiniReaderSettings(epochs=4),
        "retriever_training": RetrieverTrainingSettings(
            n_candidates=8, kb_queries=120, max_steps=30, batch_size=64, eval_every=10, n_train_candidates=6
        ),
    }
    values.update(overrides)
    return DemoConfig(**values)  # type: ignore[arg-type]
