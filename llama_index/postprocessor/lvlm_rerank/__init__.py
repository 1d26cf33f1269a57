"""LlamaIndex-style import path: ``from llama_index.postprocessor.lvlm_rerank import LVLMRerank``."""

from __future__ import annotations

from llama_index_lvlm_retriever.postprocessor import LVLMRerank, LVLMRerankResult

__all__ = ["LVLMRerank", "LVLMRerankResult"]
