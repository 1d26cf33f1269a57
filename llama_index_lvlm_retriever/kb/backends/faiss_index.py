"""FaissIndex: one faiss inner-product index (flat, IVF or HNSW) over L2-normalised vectors.

The default, embedded vector backend of
:class:`~llama_index_lvlm_retriever.kb.knowledge_base.KnowledgeBase` (one per modality): it creates
the index when the first vectors arrive (so the dimension is known and IVF can be trained), adds
later vectors incrementally, searches, and reads/writes the faiss file format (never pickle).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

if TYPE_CHECKING:
    from llama_index_lvlm_retriever.kb.types import IndexConfig

logger = logging.getLogger(__name__)

# faiss's k-means warns below 39 training points per centroid; we cap nlist to n ourselves and
# log in Python instead of letting faiss print to stderr.
_FAISS_MIN_POINTS_PER_CENTROID = 39


class FaissIndex:
    """A faiss index whose row ``i`` is knowledge-base position ``i``.

    Args:
        config: Index kind and its parameters (an ``IndexConfig``).
        index: An existing faiss index (e.g. read from disk); ``None`` creates one lazily.
    """

    def __init__(self, config: IndexConfig, index: faiss.Index | None = None) -> None:
        self._config = config
        self._index = index
        if index is not None:
            self._apply_search_params()

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return 0 if self._index is None else int(self._index.ntotal)

    @property
    def dim(self) -> int | None:
        """Vector dimension (``None`` before the first vectors are added)."""
        return None if self._index is None else int(self._index.d)

    @property
    def faiss_index(self) -> faiss.Index | None:
        """The underlying faiss index (``None`` before the first vectors are added)."""
        return self._index

    def add(self, vectors: np.ndarray) -> None:
        """Append rows ``(m, dim)``; the first call creates (and, for IVF, trains) the index."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (m, dim)
        if vectors.shape[0] == 0:
            return
        if self._index is None:
            self._index = self._create(vectors)
        self._index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(scores, positions)``, both ``(n, k)``; missing results have position -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)  # (n, dim)
        if self._index is None or k == 0:
            return np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
        scores, positions = self._index.search(queries, k)  # (n, k), (n, k)
        return scores, positions

    def write(self, path: Path) -> None:
        """Write the index in faiss's own format."""
        if self._index is None:
            raise ValueError("cannot write an empty vector index")
        faiss.write_index(self._index, str(path))

    @classmethod
    def read(cls, path: Path, config: IndexConfig) -> FaissIndex:
        """Read an index written by :meth:`write` and check that it is of ``config.kind``."""
        index = faiss.read_index(str(path))
        expected = {"flat": faiss.IndexFlat, "ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat}[config.kind]
        if not isinstance(index, expected):
            raise ValueError(
                f"{path} holds a {type(index).__name__} but the manifest says index kind "
                f"{config.kind!r}; the knowledge-base directory is inconsistent, rebuild it"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{path} is not an inner-product index; rebuild the knowledge base")
        return cls(config, index)

    def _create(self, vectors: np.ndarray) -> faiss.Index:
        n, dim = vectors.shape
        kind = self._config.kind
        if kind == "flat":
            return faiss.IndexFlatIP(dim)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self._config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self._config.ef_search
            return index
        nlist = min(self._config.nlist, n)
        if nlist < self._config.nlist:
            logger.warning("IVF nlist capped from %d to %d: only %d vectors to train on", self._config.nlist, nlist, n)
        elif n < _FAISS_MIN_POINTS_PER_CENTROID * nlist:
            logger.warning(
                "IVF trained on %d vectors for %d lists (faiss recommends >= %d per list); "
                "consider a smaller nlist", n, nlist, _FAISS_MIN_POINTS_PER_CENTROID,
            )
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # we warned above; keep faiss from printing to stderr
        index.train(vectors)
        index.nprobe = min(self._config.nprobe, nlist)
        return index

    def _apply_search_params(self) -> None:
        if isinstance(self._index, faiss.IndexIVFFlat):
            self._index.nprobe = min(self._config.nprobe, self._index.nlist)
        elif isinstance(self._index, faiss.IndexHNSWFlat):
            self._index.hnsw.efSearch = self._config.ef_search


__all__ = ["FaissIndex"]
