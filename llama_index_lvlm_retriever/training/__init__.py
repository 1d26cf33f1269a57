"""Retriever training (stage 2, reader frozen): reader feedback, losses and the fine-tuning engine.

The losses compare the retriever's softmax over each case's candidates with a target derived from
the frozen reader; see :mod:`llama_index_lvlm_retriever.training.losses`.
"""

from __future__ import annotations

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
    "PosteriorKLLoss",
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
