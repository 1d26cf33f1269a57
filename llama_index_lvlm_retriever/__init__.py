"""LVLM-aware multimodal retrieval for RAG-based medical image diagnosis, for LlamaIndex."""

from llama_index_lvlm_retriever.data import Case, KBItem
from llama_index_lvlm_retriever.version import __version__

__all__ = ["Case", "KBItem", "__version__"]
