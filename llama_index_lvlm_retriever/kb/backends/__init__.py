"""Vector backends of the knowledge base, one module per store, behind :class:`VectorBackend`.

``faiss`` (embedded; flat, IVF or HNSW) is the default; ``milvus`` (Milvus Lite or a server/cluster,
extra ``[milvus]``) and ``qdrant`` (local mode or a server/cluster, extra ``[qdrant]``) keep the
vectors in a vector database. :data:`BACKENDS` maps the name a knowledge base records in its
manifest to the pydantic config class of that backend's connection settings; importing this
package imports neither database client.
"""

from __future__ import annotations

from llama_index_lvlm_retriever.kb.backends.base import VectorBackend
from llama_index_lvlm_retriever.kb.backends.faiss_index import FaissBackendConfig, FaissIndex
from llama_index_lvlm_retriever.kb.backends.milvus_index import MilvusBackendConfig, MilvusIndex
from llama_index_lvlm_retriever.kb.backends.qdrant_index import QdrantBackendConfig, QdrantIndex

BackendConfig = FaissBackendConfig | MilvusBackendConfig | QdrantBackendConfig
BACKENDS: dict[str, type[FaissBackendConfig] | type[MilvusBackendConfig] | type[QdrantBackendConfig]] = {
    "faiss": FaissBackendConfig,
    "milvus": MilvusBackendConfig,
    "qdrant": QdrantBackendConfig,
}

__all__ = [
    "BACKENDS",
    "BackendConfig",
    "FaissBackendConfig",
    "FaissIndex",
    "MilvusBackendConfig",
    "MilvusIndex",
    "QdrantBackendConfig",
    "QdrantIndex",
    "VectorBackend",
]
