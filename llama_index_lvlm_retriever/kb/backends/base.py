"""VectorBackend: the seam where a vector store plugs into the knowledge base.

A knowledge base keeps one backend per modality (image, text); row ``i`` of a backend is the
knowledge base's position ``i``. The knowledge base owns the items, their frozen vectors and the
exclusion rules (self / duplicate by id and content hash); a backend only stores vectors and answers
inner-product top-k queries. faiss (:class:`~llama_index_lvlm_retriever.kb.backends.faiss_index.FaissIndex`)
is the default and the only backend today; a vector database plugs in by implementing this protocol
in its own module of this package and registering its name in :data:`BACKENDS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class VectorBackend(Protocol):
    """What the knowledge base needs from a vector store (inner product over unit vectors)."""

    @property
    def ntotal(self) -> int:
        """Number of vectors stored."""

    @property
    def dim(self) -> int | None:
        """Vector dimension, ``None`` before the first vectors arrive."""

    def add(self, vectors: np.ndarray) -> None:
        """Append rows ``(m, dim)``; their positions continue after the existing ones."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(scores, positions)``, both ``(n, k)``; missing results have position -1."""

    def write(self, path: Path) -> None:
        """Persist the vectors to ``path`` (called inside the knowledge base's atomic folder write)."""


__all__ = ["VectorBackend"]
