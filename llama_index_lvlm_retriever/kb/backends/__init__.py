"""Vector backends of the knowledge base, one module per store, behind :class:`VectorBackend`.

``faiss`` (embedded; flat, IVF or HNSW) is the default. The name a knowledge base was built with is
what :data:`BACKENDS` maps to its class.
"""

from __future__ import annotations

from llama_index_lvlm_retriever.kb.backends.base import VectorBackend
from llama_index_lvlm_retriever.kb.backends.faiss_index import FaissIndex

BACKENDS: dict[str, type] = {"faiss": FaissIndex}

__all__ = ["BACKENDS", "FaissIndex", "VectorBackend"]
