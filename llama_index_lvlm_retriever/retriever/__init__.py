"""The dual-head retriever: query image (+ question) -> image head and text head -> knowledge-base pairs.

:class:`LVLMAwareRetriever` (``lvlm_aware_retriever.py``) is the LlamaIndex retriever; its settings
are :class:`LVLMAwareRetrieverConfig` (``config.py``); ``nodes.py`` turns search hits into
``ImageNode`` s and names their metadata keys (the ``META_*`` constants); ``query_inputs.py`` checks
and converts query images, questions and per-query exclusions.

Names are imported on first use (PEP 562), so ``import`` of this package and the CLI's
``--help``/``--version`` stay fast; ``from ... import Name`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_index_lvlm_retriever._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
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

_LAZY: dict[str, tuple[str, str]] = {
    "CaptionedImageNode": ("llama_index_lvlm_retriever.retriever.nodes", "CaptionedImageNode"),
    "HEADS": ("llama_index_lvlm_retriever.retriever.nodes", "HEADS"),
    "HEAD_IMAGE": ("llama_index_lvlm_retriever.retriever.nodes", "HEAD_IMAGE"),
    "HEAD_TEXT": ("llama_index_lvlm_retriever.retriever.nodes", "HEAD_TEXT"),
    "LVLMAwareRetriever": ("llama_index_lvlm_retriever.retriever.lvlm_aware_retriever", "LVLMAwareRetriever"),
    "LVLMAwareRetrieverConfig": ("llama_index_lvlm_retriever.retriever.config", "LVLMAwareRetrieverConfig"),
    "META_HEAD": ("llama_index_lvlm_retriever.retriever.nodes", "META_HEAD"),
    "META_HEADS": ("llama_index_lvlm_retriever.retriever.nodes", "META_HEADS"),
    "META_IMAGE_RANK": ("llama_index_lvlm_retriever.retriever.nodes", "META_IMAGE_RANK"),
    "META_IMAGE_SCORE": ("llama_index_lvlm_retriever.retriever.nodes", "META_IMAGE_SCORE"),
    "META_KB_ID": ("llama_index_lvlm_retriever.retriever.nodes", "META_KB_ID"),
    "META_KB_METADATA": ("llama_index_lvlm_retriever.retriever.nodes", "META_KB_METADATA"),
    "META_LABEL": ("llama_index_lvlm_retriever.retriever.nodes", "META_LABEL"),
    "META_SOURCE": ("llama_index_lvlm_retriever.retriever.nodes", "META_SOURCE"),
    "META_TEXT_RANK": ("llama_index_lvlm_retriever.retriever.nodes", "META_TEXT_RANK"),
    "META_TEXT_SCORE": ("llama_index_lvlm_retriever.retriever.nodes", "META_TEXT_SCORE"),
    "NO_IMAGE_MESSAGE": ("llama_index_lvlm_retriever.retriever.lvlm_aware_retriever", "NO_IMAGE_MESSAGE"),
    "RANK_KEYS": ("llama_index_lvlm_retriever.retriever.nodes", "RANK_KEYS"),
    "SCORE_KEYS": ("llama_index_lvlm_retriever.retriever.nodes", "SCORE_KEYS"),
    "merge_hits": ("llama_index_lvlm_retriever.retriever.nodes", "merge_hits"),
    "node_head": ("llama_index_lvlm_retriever.retriever.nodes", "node_head"),
}
"""Public name -> (module, attribute), imported on first access."""

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
