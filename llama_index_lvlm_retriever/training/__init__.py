"""Training: the retriever (stage 2, reader frozen), the reader (stage 1 SFT) and a small CLIP.

Stage 2: reader feedback (:func:`collect_feedback`), the losses and :class:`RetrieverFinetuneEngine`,
which trains residual adapter heads or, in encoder mode, :class:`EncoderQueryHead` (a trainable copy
of the image tower). Stage 1: :class:`ReaderSFTEngine` on :func:`build_sft_samples`. Offline, with
no pre-trained encoder: :class:`CLIPPretrainEngine` (:class:`MultiPositiveInfoNCELoss`).

The stage-2 losses compare the retriever's softmax over each case's candidates with a target
derived from the frozen reader; see :mod:`llama_index_lvlm_retriever.training.losses`.

Names are imported on first use (PEP 562), so ``import`` of this package and the CLI's
``--help``/``--version`` stay fast; ``from ... import Name`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_index_lvlm_retriever._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from llama_index_lvlm_retriever.heads import EncoderQueryHead, EncoderQueryHeadConfig
    from llama_index_lvlm_retriever.training.clip_pretrain import (
        CLIPPretrainConfig,
        CLIPPretrainEngine,
    )
    from llama_index_lvlm_retriever.training.config import FeedbackConfig, TrainerConfig
    from llama_index_lvlm_retriever.training.feedback import collect_feedback
    from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache
    from llama_index_lvlm_retriever.training.losses import (
        ENTROPY_RETRIEVER_KEY,
        ENTROPY_TARGET_KEY,
        LOSS_KEY,
        N_CASES_KEY,
        EMDRLoss,
        LSRLoss,
        MultiPositiveInfoNCELoss,
        PosteriorKLLoss,
        ReaderRankLoss,
    )
    from llama_index_lvlm_retriever.training.reader_sft import ReaderSFTConfig, ReaderSFTEngine
    from llama_index_lvlm_retriever.training.sft_data import (
        SFTSample,
        build_sft_samples,
        export_sft_jsonl,
    )
    from llama_index_lvlm_retriever.training.target_diagnostics import (
        TargetDiagnostics,
        diagnose_target,
    )
    from llama_index_lvlm_retriever.training.trainer import RetrieverFinetuneEngine

_LAZY: dict[str, tuple[str, str]] = {
    "CLIPPretrainConfig": ("llama_index_lvlm_retriever.training.clip_pretrain", "CLIPPretrainConfig"),
    "CLIPPretrainEngine": ("llama_index_lvlm_retriever.training.clip_pretrain", "CLIPPretrainEngine"),
    "EMDRLoss": ("llama_index_lvlm_retriever.training.losses", "EMDRLoss"),
    "ENTROPY_RETRIEVER_KEY": ("llama_index_lvlm_retriever.training.losses", "ENTROPY_RETRIEVER_KEY"),
    "ENTROPY_TARGET_KEY": ("llama_index_lvlm_retriever.training.losses", "ENTROPY_TARGET_KEY"),
    "EncoderQueryHead": ("llama_index_lvlm_retriever.heads", "EncoderQueryHead"),
    "EncoderQueryHeadConfig": ("llama_index_lvlm_retriever.heads", "EncoderQueryHeadConfig"),
    "FeedbackCache": ("llama_index_lvlm_retriever.training.feedback_cache", "FeedbackCache"),
    "FeedbackConfig": ("llama_index_lvlm_retriever.training.config", "FeedbackConfig"),
    "LOSS_KEY": ("llama_index_lvlm_retriever.training.losses", "LOSS_KEY"),
    "LSRLoss": ("llama_index_lvlm_retriever.training.losses", "LSRLoss"),
    "MultiPositiveInfoNCELoss": ("llama_index_lvlm_retriever.training.losses", "MultiPositiveInfoNCELoss"),
    "N_CASES_KEY": ("llama_index_lvlm_retriever.training.losses", "N_CASES_KEY"),
    "PosteriorKLLoss": ("llama_index_lvlm_retriever.training.losses", "PosteriorKLLoss"),
    "ReaderRankLoss": ("llama_index_lvlm_retriever.training.losses", "ReaderRankLoss"),
    "ReaderSFTConfig": ("llama_index_lvlm_retriever.training.reader_sft", "ReaderSFTConfig"),
    "ReaderSFTEngine": ("llama_index_lvlm_retriever.training.reader_sft", "ReaderSFTEngine"),
    "RetrieverFinetuneEngine": ("llama_index_lvlm_retriever.training.trainer", "RetrieverFinetuneEngine"),
    "SFTSample": ("llama_index_lvlm_retriever.training.sft_data", "SFTSample"),
    "TargetDiagnostics": ("llama_index_lvlm_retriever.training.target_diagnostics", "TargetDiagnostics"),
    "TrainerConfig": ("llama_index_lvlm_retriever.training.config", "TrainerConfig"),
    "build_sft_samples": ("llama_index_lvlm_retriever.training.sft_data", "build_sft_samples"),
    "collect_feedback": ("llama_index_lvlm_retriever.training.feedback", "collect_feedback"),
    "diagnose_target": ("llama_index_lvlm_retriever.training.target_diagnostics", "diagnose_target"),
    "export_sft_jsonl": ("llama_index_lvlm_retriever.training.sft_data", "export_sft_jsonl"),
}
"""Public name -> (module, attribute), imported on first access."""

__all__ = [
    "ENTROPY_RETRIEVER_KEY",
    "ENTROPY_TARGET_KEY",
    "LOSS_KEY",
    "N_CASES_KEY",
    "EMDRLoss",
    "LSRLoss",
    "MultiPositiveInfoNCELoss",
    "PosteriorKLLoss",
    "ReaderRankLoss",
    "CLIPPretrainConfig",
    "CLIPPretrainEngine",
    "EncoderQueryHead",
    "EncoderQueryHeadConfig",
    "FeedbackCache",
    "FeedbackConfig",
    "RetrieverFinetuneEngine",
    "TrainerConfig",
    "TargetDiagnostics",
    "diagnose_target",
    "ReaderSFTConfig",
    "ReaderSFTEngine",
    "SFTSample",
    "build_sft_samples",
    "export_sft_jsonl",
    "collect_feedback",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
