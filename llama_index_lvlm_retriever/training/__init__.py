"""Training: the retriever (stage 2, reader frozen), the reader (stage 1 SFT) and a small CLIP.

Stage 2: reader feedback (:func:`collect_feedback`), the losses and :class:`RetrieverFinetuneEngine`,
which trains residual adapter heads or, in encoder mode, :class:`EncoderQueryHead` (a trainable copy
of the image tower). Stage 1: :class:`ReaderSFTEngine` on :func:`build_sft_samples`. Offline, with
no pre-trained encoder: :class:`CLIPPretrainEngine` (:class:`MultiPositiveInfoNCELoss`).

The stage-2 losses compare the retriever's softmax over each case's candidates with a target
derived from the frozen reader; see :mod:`llama_index_lvlm_retriever.training.losses`.
"""

from __future__ import annotations

from llama_index_lvlm_retriever.heads import (
    EncoderQueryHead,
    EncoderQueryHeadConfig,
)
from llama_index_lvlm_retriever.training.clip_pretrain import CLIPPretrainConfig, CLIPPretrainEngine
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
)
from llama_index_lvlm_retriever.training.reader_sft import ReaderSFTConfig, ReaderSFTEngine
from llama_index_lvlm_retriever.training.sft_data import (
    SFTSample,
    build_sft_samples,
    export_sft_jsonl,
)
from llama_index_lvlm_retriever.training.trainer import RetrieverFinetuneEngine

__all__ = [
    "ENTROPY_RETRIEVER_KEY",
    "ENTROPY_TARGET_KEY",
    "LOSS_KEY",
    "N_CASES_KEY",
    "EMDRLoss",
    "LSRLoss",
    "MultiPositiveInfoNCELoss",
    "PosteriorKLLoss",
    "CLIPPretrainConfig",
    "CLIPPretrainEngine",
    "EncoderQueryHead",
    "EncoderQueryHeadConfig",
    "FeedbackCache",
    "FeedbackConfig",
    "RetrieverFinetuneEngine",
    "TrainerConfig",
    "ReaderSFTConfig",
    "ReaderSFTEngine",
    "SFTSample",
    "build_sft_samples",
    "export_sft_jsonl",
    "collect_feedback",
]
