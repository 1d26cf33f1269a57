"""LlamaIndex-style import path: ``from llama_index.retrievers.lvlm_aware import LVLMAwareRetriever``.

It is also the package's LlamaHub ``import_path`` (``[tool.llamahub]`` in pyproject.toml), so every
class listed there is importable from here: the retriever, the LVLM postprocessor and the encoder.
"""

from __future__ import annotations

from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.postprocessor import LVLMRerank, LVLMRerankResult
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever

__all__ = ["CLIPEmbedding", "LVLMAwareRetriever", "LVLMRerank", "LVLMRerankResult"]
