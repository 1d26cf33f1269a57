"""Query heads: what turns a frozen query embedding (or image) into the vector that searches an index.

* :class:`QueryHead` (``query_head.py``): identity (standard RAG) or a residual adapter on the frozen
  embedding, blended ``0.85 / 0.15`` with it;
* :class:`EncoderQueryHead` (``encoder_head.py``): the paper's head, a trainable copy of the image
  tower, with its LoRA variant in ``encoder_lora.py``;
* :class:`PlaceboQueryHead` (``placebo_head.py``): seeded noise on the query, the control of an
  evaluation.

Every head saves to a folder (``config.json`` + ``model.safetensors``) that :func:`load_head` (or
``QueryHead.from_pretrained``) loads back as the class its config names. Heads are an inference
layer: training and evaluation import them, never the other way round.
"""

from __future__ import annotations

from llama_index_lvlm_retriever.heads._saving import CONFIG_NAME, WEIGHTS_NAME, load_head
from llama_index_lvlm_retriever.heads.compatibility import check_head_fits
from llama_index_lvlm_retriever.heads.encoder_head import EncoderQueryHead, EncoderQueryHeadConfig
from llama_index_lvlm_retriever.heads.placebo_head import PlaceboQueryHead
from llama_index_lvlm_retriever.heads.query_head import (
    HEAD_KINDS,
    HeadKind,
    QueryHead,
    QueryHeadConfig,
)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "check_head_fits",
    "HEAD_KINDS",
    "EncoderQueryHead",
    "EncoderQueryHeadConfig",
    "HeadKind",
    "PlaceboQueryHead",
    "QueryHead",
    "QueryHeadConfig",
    "load_head",
]
