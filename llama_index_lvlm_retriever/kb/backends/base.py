"""VectorBackend: the seam where a vector store plugs into the knowledge base.

A knowledge base keeps one backend per modality (image, text), both holding the same pairs. The
knowledge base owns the items, their frozen vectors, the exclusion rules (self / duplicate by id and
content hash) and the check of filters against its fields; a backend stores vectors with the pair's
scalar fields (id, content hash, label, source, metadata), keyed by item id, and answers
inner-product top-k queries with the (already checked) metadata filters pushed down into it.

Three backends implement it, one module each: :class:`~.faiss_index.FaissIndex` (default, embedded),
:class:`~.milvus_index.MilvusIndex` (Milvus Lite or a Milvus server/cluster) and
:class:`~.qdrant_index.QdrantIndex` (Qdrant local mode or a server/cluster). Each comes with a
pydantic ``*BackendConfig`` (its connection settings, recorded in the knowledge base's manifest so
``KnowledgeBase.from_persist_dir`` reopens the same store), registered by name in
:data:`~llama_index_lvlm_retriever.kb.backends.BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from llama_index.core.vector_stores.types import MetadataFilters

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.kb.types import BackendIdentity, EncoderMismatchError

# (item id, score) per hit, best first, one list per query.
Hits = list[list[tuple[str, float]]]


@runtime_checkable
class VectorBackend(Protocol):
    """What the knowledge base needs from a vector store (inner product over unit vectors)."""

    @property
    def ntotal(self) -> int:
        """Number of vectors stored."""

    @property
    def dim(self) -> int | None:
        """Vector dimension, ``None`` before the first vectors arrive."""

    def add(self, vectors: np.ndarray, items: Sequence[KBItem], hashes: Sequence[str]) -> None:
        """Store rows ``(m, dim)`` of new pairs (ids not stored yet), with their scalar fields."""

    def upsert(self, vectors: np.ndarray, items: Sequence[KBItem], hashes: Sequence[str]) -> None:
        """Replace the pairs whose ids are stored and add the others."""

    def delete(self, ids: Sequence[str]) -> None:
        """Remove the pairs with these ids (all of them are stored)."""

    def search(self, queries: np.ndarray, k: int, filters: Sequence[MetadataFilters | None]) -> Hits:
        """Top-``k`` ``(item id, inner product)`` per query, best first, under that query's filter."""

    def write(self, path: Path) -> None:
        """Persist into the knowledge-base folder being written (``path`` is the faiss file name);
        a database backend has nothing to write there (its rows are already stored)."""

    def drop(self) -> None:
        """Remove everything this backend created (rolls back a failed build)."""


def check_identity(
    *, where: str, identity: BackendIdentity, dim: int, kb_uid: str | None, encoder: str | None, encoder_label: str
) -> None:
    """Raise unless a stored collection has the knowledge base's dimension, encoder and uid."""
    if dim != identity.dim:
        raise ValueError(
            f"{where} holds {dim}-d vectors but the knowledge base is {identity.dim}-d; point the knowledge base "
            "at its own collection (backend= collection/uri), or rebuild it"
        )
    if encoder != identity.encoder:
        raise EncoderMismatchError(
            f"{where} was built with {encoder_label} (encoder {encoder}), but the knowledge base's manifest "
            f"records {identity.encoder_label} (encoder {identity.encoder}); point the knowledge base at its own "
            "collection, or rebuild it with one encoder"
        )
    if kb_uid != identity.kb_uid:
        raise ValueError(
            f"{where} belongs to another knowledge base (uid {kb_uid}, this one's is {identity.kb_uid}); "
            "it was rebuilt or is shared. Point this knowledge base at its own collection, or rebuild it"
        )




def path_for_manifest(path: str | Path, kb_dir: Path) -> str:
    """A local store's path as a KB manifest records it: relative to ``kb_dir`` when inside it (so the
    folder can move), else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path(kb_dir).resolve()))
    except ValueError:
        return str(resolved)


__all__ = ["Hits", "VectorBackend", "check_identity", "path_for_manifest"]
