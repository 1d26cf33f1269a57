"""FaissIndex: one faiss inner-product index (flat, IVF or HNSW) over L2-normalised vectors.

The default, embedded vector backend of
:class:`~llama_index_lvlm_retriever.kb.knowledge_base.KnowledgeBase` (one per modality): it creates
the index when the first vectors arrive (so the dimension is known and IVF can be trained), adds
later vectors incrementally, deletes/replaces by rebuilding from its own stored vectors (an IVF index
keeps its trained lists), searches, and reads/writes the faiss file format (never pickle).

A flat (exact) index keeps no faiss copy of the vectors: it holds the ``(n, dim)`` matrix itself
(:attr:`FaissIndex.matrix`, the same array the knowledge base keeps, so each vector is in memory
once) and searches it with ``faiss.knn``, the brute-force kernel behind ``IndexFlatIP`` (same
results, same order). Nor does it need a file of its own: a persisted KB rebuilds it from the stored
vectors (:meth:`FaissIndex.from_vectors`). IVF and HNSW keep their faiss index (the graph and the
inverted lists hold the vectors).

Metadata filters are a pre-filter by row set: the filter is evaluated over the pairs' fields in
Python and handed to faiss as an ``IDSelectorBitmap`` (IVF/HNSW) or used to pick the allowed rows
of the matrix (flat; a temporary copy of those rows), so the search only scores allowed rows and a
flat index's top-k is still exact (an over-fetch-then-filter scheme could miss hits when the
filter is selective).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import faiss
import numpy as np
from llama_index.core.bridge.pydantic import BaseModel, ConfigDict
from llama_index.core.vector_stores.types import MetadataFilters

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import KBFormatError
from llama_index_lvlm_retriever.kb import filters as kb_filters
from llama_index_lvlm_retriever.kb.backends.base import Hits

if TYPE_CHECKING:
    from llama_index_lvlm_retriever.kb.types import IndexConfig

logger = logging.getLogger(__name__)

# faiss's k-means warns below 39 training points per centroid; we cap nlist to n ourselves and
# log in Python instead of letting faiss print to stderr.
_FAISS_MIN_POINTS_PER_CENTROID = 39


class FaissBackendConfig(BaseModel):
    """The faiss backend: embedded, its indexes are files of the knowledge-base folder.

    Example:
        >>> FaissBackendConfig().name
        'faiss'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["faiss"] = "faiss"

    def describe(self) -> str:
        """Where the vectors live, for messages."""
        return "faiss (in-process)"

    def close(self) -> None:
        """Nothing to release: the index lives in this process."""


class FaissIndex:
    """A faiss index whose row ``i`` is the ``i``-th pair added (rows stay in knowledge-base order).

    Args:
        config: Index kind and its parameters (an ``IndexConfig``).
        index: An existing faiss index (e.g. read from disk); ``None`` creates one lazily.
        items: The pairs of the existing index's rows (needed with ``index``).
        hashes: Their image content hashes.
    """

    def __init__(
        self,
        config: IndexConfig,
        index: faiss.Index | None = None,
        items: Sequence[KBItem] = (),
        hashes: Sequence[str] = (),
    ) -> None:
        self._config = config
        self._index = index
        self._matrix: np.ndarray | None = None  # flat kind: the vectors themselves, (n, dim) float32
        if isinstance(index, faiss.IndexFlat):  # a flat index file of an older version: keep its vectors only
            self._matrix, self._index = index.reconstruct_n(0, index.ntotal), None
        self._items: list[KBItem] = list(items)
        self._hashes: list[str] = list(hashes)
        self._rows = {item.id: i for i, item in enumerate(self._items)}
        self._columns: dict[str, np.ndarray] = {}
        if index is not None:
            if index.ntotal != len(self._items):
                raise ValueError(
                    f"the faiss index holds {index.ntotal} vectors for {len(self._items)} items; "
                    "the knowledge base is inconsistent, rebuild it"
                )
            self._apply_search_params()

    @classmethod
    def from_vectors(
        cls, config: IndexConfig, vectors: np.ndarray, items: Sequence[KBItem], hashes: Sequence[str]
    ) -> FaissIndex:
        """A flat index over stored vectors ``(n, dim)``, sharing them (no copy when float32 and contiguous)."""
        if config.kind != "flat":
            raise ValueError(f"from_vectors builds flat indexes only, not {config.kind!r}")
        index = cls(config)
        index.add(vectors, items, hashes)
        return index

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        if self._matrix is not None:
            return int(self._matrix.shape[0])
        return 0 if self._index is None else int(self._index.ntotal)

    @property
    def dim(self) -> int | None:
        """Vector dimension (``None`` before the first vectors are added)."""
        if self._matrix is not None:
            return int(self._matrix.shape[1])
        return None if self._index is None else int(self._index.d)

    @property
    def matrix(self) -> np.ndarray | None:
        """Flat kind: the stored vectors ``(n, dim)`` the index searches (``None`` for IVF/HNSW or when empty)."""
        return self._matrix

    @property
    def faiss_index(self) -> faiss.Index | None:
        """The underlying faiss index of an IVF/HNSW kind (``None`` for flat, or before the first vectors)."""
        return self._index

    def add(self, vectors: np.ndarray, items: Sequence[KBItem] = (), hashes: Sequence[str] = ()) -> None:
        """Append rows ``(m, dim)``; the first call creates (and, for IVF, trains) the index."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (m, dim)
        if vectors.shape[0] == 0:
            return
        if self._config.kind == "flat":
            # The first matrix is kept as given (shared with the caller), later rows appended.
            self._matrix = vectors if self._matrix is None else np.concatenate([self._matrix, vectors])
        else:
            if self._index is None:
                self._index = self._create(vectors)
            self._index.add(vectors)
        for item, h in zip(items, hashes):
            self._rows[item.id] = len(self._items)
            self._items.append(item)
            self._hashes.append(h)
        self._columns.clear()

    def upsert(self, vectors: np.ndarray, items: Sequence[KBItem], hashes: Sequence[str]) -> None:
        """Replace stored pairs in place (same row) and append new ones."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (m, dim)
        old = [j for j, item in enumerate(items) if item.id in self._rows]
        if old:
            stored = self._stored()  # (n, dim)
            for j in old:
                row = self._rows[items[j].id]
                stored[row] = vectors[j]
                self._items[row] = items[j]
                self._hashes[row] = hashes[j]
            self._rebuild(stored)
        new = [j for j, item in enumerate(items) if item.id not in self._rows]
        if new:
            self.add(vectors[new], [items[j] for j in new], [hashes[j] for j in new])
        self._columns.clear()

    def delete(self, ids: Sequence[str]) -> None:
        """Remove rows by item id; later rows move up, keeping their order."""
        drop = {self._rows[i] for i in ids}
        if not drop:
            return
        keep = np.array([r for r in range(len(self._items)) if r not in drop], dtype=np.int64)
        stored = self._stored()[keep]  # (n - |ids|, dim)
        self._items = [self._items[r] for r in keep]
        self._hashes = [self._hashes[r] for r in keep]
        self._rows = {item.id: i for i, item in enumerate(self._items)}
        self._rebuild(stored)
        self._columns.clear()

    def search(self, queries: np.ndarray, k: int, filters: Sequence[MetadataFilters | None] | None = None) -> Hits:
        """Top-``k`` ``(item id, score)`` per query; a query's filter restricts the rows searched."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)  # (n, dim)
        n = queries.shape[0]
        out: Hits = [[] for _ in range(n)]
        if self.ntotal == 0 or k == 0 or n == 0:
            return out
        groups: dict[str, list[int]] = {}
        per_query = list(filters) if filters is not None else [None] * n
        for i, f in enumerate(per_query):
            groups.setdefault(kb_filters.group_key(f), []).append(i)
        for members in groups.values():
            f = per_query[members[0]]
            if self._matrix is not None:
                scores, rows = self._flat_search(queries[members], k, f)  # (m, k) each
            else:
                params, keep_alive = (None, None) if f is None else self._selector(f)
                if keep_alive is not None and not keep_alive.any():
                    continue  # nothing passes the filter
                assert self._index is not None  # ntotal > 0
                scores, rows = self._index.search(queries[members], min(k, self.ntotal), params=params)  # (m, k) each
            for i, s_row, p_row in zip(members, scores.tolist(), rows.tolist()):
                # -1: an approximate index (or a selective filter) found fewer than k
                out[i] = [(self._items[p].id, s) for s, p in zip(s_row, p_row) if p >= 0]
        return out

    def write(self, path: Path) -> None:
        """Write the index in faiss's own format (a flat index as an ``IndexFlatIP`` of its matrix)."""
        if self.ntotal == 0:
            raise ValueError("cannot write an empty vector index")
        index = self._index
        if self._matrix is not None:
            index = faiss.IndexFlatIP(self._matrix.shape[1])
            index.add(self._matrix)
        faiss.write_index(index, str(path))

    def drop(self) -> None:
        """Forget every vector (the index lives only in this process)."""
        self._index = None
        self._matrix = None
        self._items, self._hashes, self._rows = [], [], {}
        self._columns.clear()

    @classmethod
    def read(cls, path: Path, config: IndexConfig, items: Sequence[KBItem] = (), hashes: Sequence[str] = ()) -> FaissIndex:
        """Read an index written by :meth:`write` and check that it is of ``config.kind``."""
        return cls.from_bytes(Path(path).read_bytes(), path, config, items, hashes)

    @classmethod
    def from_bytes(
        cls, data: bytes, path: Path, config: IndexConfig, items: Sequence[KBItem] = (), hashes: Sequence[str] = ()
    ) -> FaissIndex:
        """Deserialise an index file's (already checksummed) bytes; ``path`` is for messages."""
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as err:  # faiss reports truncated/garbled files as RuntimeError
            raise KBFormatError(f"{path} is not a readable faiss index ({str(err).splitlines()[0]}); rebuild the knowledge base") from err
        if items and index.ntotal != len(items):
            raise KBFormatError(
                f"{path} holds {index.ntotal} vectors but the knowledge base lists {len(items)} items; "
                "the directory is inconsistent, rebuild it"
            )
        expected = {"flat": faiss.IndexFlat, "ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat}[config.kind]
        if not isinstance(index, expected):
            raise KBFormatError(
                f"{path} holds a {type(index).__name__} but the manifest says index kind "
                f"{config.kind!r}; the knowledge-base directory is inconsistent, rebuild it"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise KBFormatError(f"{path} is not an inner-product index; rebuild the knowledge base")
        return cls(config, index, items, hashes)

    # ------------------------------------------------------------------ internals
    def _flat_search(self, queries: np.ndarray, k: int, f: MetadataFilters | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` over the matrix (or the rows a filter allows): ``(scores, rows)``, each ``(m, k')``."""
        assert self._matrix is not None
        if f is None:
            return faiss.knn(queries, self._matrix, min(k, self.ntotal), metric=faiss.METRIC_INNER_PRODUCT)
        allowed = np.flatnonzero(kb_filters.evaluate(f, self._column))  # (a,) row numbers
        if allowed.size == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, local = faiss.knn(queries, np.ascontiguousarray(self._matrix[allowed]), min(k, allowed.size),
                                  metric=faiss.METRIC_INNER_PRODUCT)  # (m, k') over the allowed rows
        return scores, np.where(local >= 0, allowed[np.maximum(local, 0)], -1)

    def _column(self, key: str) -> np.ndarray:
        if key not in self._columns:
            column = np.empty(len(self._items), dtype=object)  # (n,)
            column[:] = [kb_filters.field_value(item, h, key) for item, h in zip(self._items, self._hashes)]
            self._columns[key] = column
        return self._columns[key]

    def _selector(self, f: MetadataFilters) -> tuple[faiss.SearchParameters, np.ndarray]:
        mask = kb_filters.evaluate(f, self._column)  # (n,) bool
        bits = np.packbits(mask, bitorder="little")  # (ceil(n / 8),) uint8: faiss reads bit i of byte i >> 3
        selector = faiss.IDSelectorBitmap(bits.size, faiss.swig_ptr(bits))
        if isinstance(self._index, faiss.IndexIVF):
            params: Any = faiss.SearchParametersIVF(sel=selector, nprobe=self._index.nprobe)
        elif isinstance(self._index, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=self._index.hnsw.efSearch)
        else:
            params = faiss.SearchParameters(sel=selector)
        params._keep_alive = (selector, bits)  # faiss holds raw pointers to both during the search
        return params, mask

    def _stored(self) -> np.ndarray:
        """All stored vectors ``(n, dim)``, row order (a writable copy)."""
        if self._matrix is not None:
            return np.array(self._matrix)
        index = self._index
        if index is None:
            return np.zeros((0, 0), np.float32)
        if isinstance(index, faiss.IndexIVF):
            index.make_direct_map()  # IVF rows are scattered over lists; the map finds them
            stored = index.reconstruct_n(0, index.ntotal)
            index.set_direct_map_type(faiss.DirectMap.NoMap)
            return stored
        return index.reconstruct_n(0, index.ntotal)

    def _rebuild(self, vectors: np.ndarray) -> None:
        if self._config.kind == "flat":
            self._matrix = np.ascontiguousarray(vectors, dtype=np.float32) if vectors.shape[0] else None
            return
        assert self._index is not None  # only called after rows were stored
        if isinstance(self._index, faiss.IndexHNSW):
            self._index = self._create(vectors)  # an HNSW graph cannot drop nodes: build a new one
        else:
            self._index.reset()  # IVF keeps its trained coarse quantizer: the lists stay the build's
        if vectors.shape[0]:
            self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))

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


__all__ = ["FaissBackendConfig", "FaissIndex"]
