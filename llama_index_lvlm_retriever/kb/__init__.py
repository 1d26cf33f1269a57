"""The knowledge base: image-text pairs with a frozen image index and a frozen text index.

:class:`KnowledgeBase` is the API (build, add, delete, upsert, search with filters, persist, load).
Its parts, one module each: ``types`` (:class:`SearchHit`, :class:`IndexConfig`,
:class:`EncoderMismatchError`), ``encoding`` (batched embedding, content hashes, encoder
fingerprints), ``filters`` (LlamaIndex ``MetadataFilters``: checks and semantics), ``storage`` (the
persisted folder, written atomically), ``persistence`` (persist / reopen on the recorded backend),
``checks`` (input validation) and ``backends/`` (faiss by default, Milvus, Qdrant behind one seam).
"""

from __future__ import annotations

from llama_index_lvlm_retriever.kb.knowledge_base import KnowledgeBase
from llama_index_lvlm_retriever.kb.types import (
    MODALITIES,
    EncoderMismatchError,
    IndexConfig,
    Modality,
    SearchHit,
)

__all__ = ["MODALITIES", "EncoderMismatchError", "IndexConfig", "KnowledgeBase", "Modality", "SearchHit"]
