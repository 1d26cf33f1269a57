"""The dual-head retriever: query image (+ question) -> image head and text head -> knowledge-base pairs.

:class:`LVLMAwareRetriever` (``lvlm_aware_retriever.py``) is the LlamaIndex retriever; its settings
are :class:`LVLMAwareRetrieverConfig` (``config.py``); ``nodes.py`` turns search hits into
``ImageNode`` s and names their metadata keys (the ``META_*`` constants); ``query_inputs.py`` checks
and converts query images, questions and per-query exclusions.
"""

from __future__ import annotations

from llama_index_lvlm_retriever.retriever.config import LVLMAwareRetrieverConfig
from llama_index_lvlm_retriever.retriever.lvlm_aware_retriever import (
    NO_IMAGE_MESSAGE,
    LVLMAwareRetriever,
)
from llama_index_lvlm_retriever.retriever.nodes import (
    HEAD_IMAGE,
    HEAD_TEXT,
    HEADS,
    META_HEAD,
    META_HEADS,
    META_IMAGE_RANK,
    META_IMAGE_SCORE,
    META_KB_ID,
    META_KB_METADATA,
    META_LABEL,
    META_SOURCE,
    META_TEXT_RANK,
    META_TEXT_SCORE,
    RANK_KEYS,
    SCORE_KEYS,
    CaptionedImageNode,
    merge_hits,
    node_head,
)

__all__ = [
    "HEAD_IMAGE",
    "HEAD_TEXT",
    "HEADS",
    "META_HEAD",
    "META_HEADS",
    "META_IMAGE_RANK",
    "META_IMAGE_SCORE",
    "META_KB_ID",
    "META_KB_METADATA",
    "META_LABEL",
    "META_SOURCE",
    "META_TEXT_RANK",
    "META_TEXT_SCORE",
    "NO_IMAGE_MESSAGE",
    "RANK_KEYS",
    "SCORE_KEYS",
    "CaptionedImageNode",
    "LVLMAwareRetriever",
    "LVLMAwareRetrieverConfig",
    "merge_hits",
    "node_head",
]
