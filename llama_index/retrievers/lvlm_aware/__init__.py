"""LlamaIndex-style import path: ``from llama_index.retrievers.lvlm_aware import LVLMAwareRetriever``."""

from __future__ import annotations

from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever

__all__ = ["LVLMAwareRetriever"]
