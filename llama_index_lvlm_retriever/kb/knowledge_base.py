"""KnowledgeBase: image-text pairs with a frozen image index and a frozen text index.

Both indexes hold L2-normalised embeddings from one dual encoder (any LlamaIndex
``MultiModalEmbedding``) and are searched by inner product, so every score is a cosine. Search
can exclude items by id and by exact image content, which keeps a query image (or a re-encoded
copy of it) from retrieving itself, and takes LlamaIndex ``MetadataFilters`` pushed down into the
vector backend (faiss in process by default; Milvus or Qdrant, see ``kb/backends/``). Pairs can be
added, deleted and upserted after the build; only new pairs are embedded.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.vector_stores.types import MetadataFilters

from llama_index_lvlm_retriever.data.images import (
    ImageInput,
    image_content_hash,
)
from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import DataError, UsageError
from llama_index_lvlm_retriever.kb import checks, persistence
from llama_index_lvlm_retriever.kb import encoding as enc
from llama_index_lvlm_retriever.kb import filters as kb_filters
from llama_index_lvlm_retriever.kb import storage as store
from llama_index_lvlm_retriever.kb._manifest_checks import check_kb_manifest
from llama_index_lvlm_retriever.kb.backends import (
    BackendConfig,
    FaissBackendConfig,
    FaissIndex,
    VectorBackend,
)
from llama_index_lvlm_retriever.kb.live_updates import LiveUpdatesMixin
from llama_index_lvlm_retriever.kb.tie_order import needs_deeper_search, tie_order
from llama_index_lvlm_retriever.kb.types import (
    MODALITIES,
    BackendIdentity,
    IndexConfig,
    Modality,
    SearchHit,
)

logger = logging.getLogger(__name__)


class KnowledgeBase(LiveUpdatesMixin):
    """Image-text pairs plus an image index and a text index over their embeddings.

    Usually made with :meth:`build` (embeds everything) or :meth:`from_persist_dir`; the
    constructor takes ready vectors.

    Args:
        embed_model: Any LlamaIndex ``MultiModalEmbedding``; it embeds the pairs and must be the
            model queries are embedded with. A model with array methods
            ``embed_images(images)``/``embed_texts(texts)`` is called through them.
        items: The pairs, row order.
        image_vectors: ``(n, dim)`` image embeddings of ``items`` (normalised here).
        text_vectors: ``(n, dim)`` text embeddings of ``items`` (normalised here).
        image_hashes: ``image_content_hash`` of every item's image; computed from the files
            when omitted.
        index_config: Index kind and parameters (default: exact flat index).
        encoder_info: Encoder record to persist (default: derived from ``embed_model``).
        backend: Where the vectors are searched: ``FaissBackendConfig()`` (default, in process),
            ``MilvusBackendConfig(uri=...)`` or ``QdrantBackendConfig(path=... | url=...)``; recorded
            in the manifest so :meth:`from_persist_dir` reopens the same store.

    Raises:
        TypeError: ``embed_model`` is not a ``MultiModalEmbedding``.
        ValueError: Vectors are missing or of the wrong shape, or ids repeat.
        FileExistsError: The database backend's collections already exist.
        ConnectionError: The database server cannot be reached.

    Example:
        >>> from llama_index_lvlm_retriever.data.loaders import load_kb_jsonl
        >>> from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
        >>> embed = CLIPEmbedding.from_pretrained("openai/clip-vit-base-patch16")  # doctest: +SKIP
        >>> kb = KnowledgeBase.build(load_kb_jsonl("kb.jsonl"), embed)  # doctest: +SKIP
        >>> kb.persist("kb_dir")  # doctest: +SKIP
        >>> query = embed.embed_images(["query.png"])  # doctest: +SKIP
        >>> hits = kb.search(query, "image", k=2,  # doctest: +SKIP
        ...                  exclude_hashes=[[kb.content_hash_of("query.png")]])
        >>> [(h.item.id, round(h.score, 3)) for h in hits[0]]  # doctest: +SKIP
        [('roco-118', 0.912), ('roco-7', 0.887)]

        The same on Milvus Lite, with a filter keeping the query patient's own studies out:

        >>> from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters
        >>> from llama_index_lvlm_retriever.kb.backends import MilvusBackendConfig
        >>> kb = KnowledgeBase.build(items, embed, backend=MilvusBackendConfig(uri="kb_dir/kb.db"))  # doctest: +SKIP
        >>> other_patients = MetadataFilters(filters=[MetadataFilter(key="patient_id", operator="!=", value="p7")])
        >>> hits = kb.search(query, "image", k=2, filters=other_patients)  # doctest: +SKIP
    """

    def __init__(
        self,
        embed_model: MultiModalEmbedding,
        items: Sequence[KBItem] = (),
        image_vectors: np.ndarray | None = None,
        text_vectors: np.ndarray | None = None,
        image_hashes: Sequence[str] | None = None,
        index_config: IndexConfig | None = None,
        encoder_info: dict[str, Any] | None = None,
        backend: BackendConfig | None = None,
    ) -> None:
        items = list(items)
        if items and (image_vectors is None or text_vectors is None):
            raise ValueError(
                f"got {len(items)} items but no image_vectors/text_vectors; pass both, or use "
                "KnowledgeBase.build(items, embed_model) to embed them"
            )
        if image_hashes is None:
            image_hashes = [enc.hash_item(item) for item in items]
        self._setup(
            embed_model,
            index_config or IndexConfig(),
            dict(encoder_info) if encoder_info else None,
            items,
            None if image_vectors is None else enc.unit_rows(checks.as_vectors("image_vectors", image_vectors, len(items))),
            None if text_vectors is None else enc.unit_rows(checks.as_vectors("text_vectors", text_vectors, len(items))),
            list(image_hashes),
            backend=backend or FaissBackendConfig(),
        )

    def _setup(
        self,
        embed_model: MultiModalEmbedding,
        config: IndexConfig,
        encoder_info: dict[str, Any] | None,
        items: list[KBItem],
        image_vectors: np.ndarray | None,
        text_vectors: np.ndarray | None,
        image_hashes: list[str],
        indexes: dict[str, VectorBackend] | None = None,
        *,
        backend: BackendConfig,
        kb_uid: str | None = None,
    ) -> None:
        if not isinstance(embed_model, MultiModalEmbedding):
            raise TypeError(
                "embed_model must be a LlamaIndex MultiModalEmbedding (e.g. CLIPEmbedding), got "
                f"{type(embed_model).__name__}"
            )
        checks.check_items(items)
        n = len(items)
        vectors = {
            "image": checks.as_vectors("image_vectors", image_vectors, n),
            "text": checks.as_vectors("text_vectors", text_vectors, n),
        }
        self._embed_model = embed_model
        self._config = config
        self._encoder_info = encoder_info
        self._backend = backend
        self._kb_uid = kb_uid or uuid.uuid4().hex
        self._dim: int | None = vectors["image"].shape[1] or None
        if indexes is None:
            indexes = {name: self._new_index(name) for name in MODALITIES}
            self._indexes = indexes
            self._store(lambda name: indexes[name].add(vectors[name], items, image_hashes), items, created=True)
        checks.check_state(vectors, image_hashes, indexes, n)
        self._items = items
        self._vectors = vectors
        self._hashes = image_hashes
        self._indexes = indexes
        self._reindex()
        self._skipped: list[tuple[str, str]] = []
        # The folder version this KB was loaded from (or last wrote there): persist() back into that
        # folder is a compare-and-swap against it. None for a KB built in memory.
        self._version: store.StoreVersion | None = None
        self._locked_folder: Path | None = None  # set inside updating(): persist() there already holds the lock

    def _reindex(self) -> None:
        """Rebuild the id / hash lookups after the rows changed, and share the vectors with flat indexes."""
        for name, index in self._indexes.items():
            # A flat faiss index holds the same vectors (same rows, same values): keep its array, not
            # a second copy, so each vector is in memory once.
            matrix = getattr(index, "matrix", None)
            if isinstance(matrix, np.ndarray) and matrix.shape == self._vectors[name].shape:
                self._vectors[name] = matrix
        self._positions = {item.id: i for i, item in enumerate(self._items)}
        self._hash_positions: dict[str, list[int]] = {}
        for i, h in enumerate(self._hashes):
            self._hash_positions.setdefault(h, []).append(i)
        self._metadata_kinds: dict[str, set[str]] | None = None  # computed on the first filtered search

    def _new_index(self, modality: str, dim: int | None = None) -> VectorBackend:
        if isinstance(self._backend, FaissBackendConfig):
            return FaissIndex(self._config)
        return self._backend.open(modality, self._config, self._identity(dim))

    def _identity(self, dim: int | None = None) -> BackendIdentity:
        record = self._encoder_record()
        return BackendIdentity(
            kb_uid=self._kb_uid,
            dim=int(dim or self._dim or 0),
            encoder=enc.encoder_digest(record),
            encoder_label=enc.encoder_label(record),
        )

    @classmethod
    def build(
        cls,
        items: Iterable[KBItem],
        embed_model: MultiModalEmbedding,
        *,
        index_config: IndexConfig | None = None,
        batch_size: int | None = None,
        show_progress: bool = True,
        skip_bad: bool = False,
        backend: BackendConfig | None = None,
    ) -> KnowledgeBase:
        """Embed every pair's image and text in batches and index them.

        Everything is embedded before the first vector is stored, and a failed store drops the
        database collections it created, so a failed build leaves nothing behind.

        Args:
            items: The pairs (e.g. from :func:`~llama_index_lvlm_retriever.data.loaders.load_kb_jsonl`).
            embed_model: Any LlamaIndex ``MultiModalEmbedding``.
            index_config: Index kind and parameters (default: exact flat index).
            backend: Vector store settings (default: faiss in process); see the class docstring.
            batch_size: Pairs per embedding call (default: the model's ``embed_batch_size``).
            show_progress: Show a tqdm progress bar.
            skip_bad: Skip (log, and list in :attr:`skipped`) items whose image is missing,
                truncated or not an image, instead of raising.

        Returns:
            The knowledge base.

        Raises:
            UsageError: No items were given.
            DataError: All items were skipped as unreadable.
            ValueError: Repeated ids.
            EmbeddingError: The model returned NaN/infinite embeddings, or image and text
                embeddings of different dimensions (names the item).
            ImageLoadError: An image cannot be read (``skip_bad=False``); names the item and file.

        Example:
            >>> kb = KnowledgeBase.build(items, embed, index_config=IndexConfig(kind="hnsw"),  # doctest: +SKIP
            ...                          batch_size=64, skip_bad=True)
            >>> kb.skipped  # doctest: +SKIP
            [('roco-9', 'cannot read image /data/roco/9.png: ...')]
        """
        items = list(items)
        if not items:
            raise UsageError("knowledge base is empty: build() got no items; pass at least one KBItem (check the loader's input file)")
        kb = cls(embed_model, index_config=index_config, backend=backend)
        kb.add(items, batch_size=batch_size, show_progress=show_progress, skip_bad=skip_bad)
        if len(kb) == 0:
            first_id, first_reason = kb.skipped[0]
            raise DataError(
                f"knowledge base is empty: all {len(items)} items were skipped as unreadable "
                f"(first: {first_id!r}: {first_reason})"
            )
        return kb

    @property
    def items(self) -> list[KBItem]:
        """The pairs in row order (a copy; change the knowledge base with :meth:`add`, :meth:`upsert`, :meth:`delete`)."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._positions

    def __repr__(self) -> str:
        dim = self._dim if self._dim is not None else "?"
        return (
            f"KnowledgeBase(n={len(self)}, dim={dim}, index={self._config.kind!r}, backend={self._backend.name!r}, "
            f"encoder={type(self._embed_model).__name__})"
        )

    @property
    def dim(self) -> int:
        """Embedding dimension (raises while the knowledge base is still empty)."""
        if self._dim is None:
            raise ValueError("knowledge base is empty; its dimension is set by the first add()")
        return self._dim

    @property
    def embed_model(self) -> MultiModalEmbedding:
        """The embedding model the pairs were embedded with (embed queries with it too)."""
        return self._embed_model

    @property
    def index_config(self) -> IndexConfig:
        """The index kind and parameters."""
        return self._config

    @property
    def backend(self) -> BackendConfig:
        """The vector store settings (faiss, Milvus or Qdrant)."""
        return self._backend

    @property
    def image_vectors(self) -> np.ndarray:
        """``(n, dim)`` float32 L2-normalised image embeddings, row order (read-only view)."""
        return checks.read_only(self._vectors["image"])

    @property
    def text_vectors(self) -> np.ndarray:
        """``(n, dim)`` float32 L2-normalised text embeddings, row order (read-only view)."""
        return checks.read_only(self._vectors["text"])

    @property
    def image_hashes(self) -> list[str]:
        """Content hash of every item's image, row order."""
        return list(self._hashes)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(item id, reason)`` of items skipped by the last :meth:`build`/:meth:`add` with ``skip_bad``."""
        return list(self._skipped)

    def get(self, item_id: str) -> KBItem:
        """The item with this id; raises ``KeyError`` naming it when absent."""
        return self._items[self.position(item_id)]

    def position(self, item_id: str) -> int:
        """The row of the item with this id; raises ``KeyError`` naming it when absent."""
        try:
            return self._positions[item_id]
        except KeyError:
            raise KeyError(f"no knowledge-base item with id {item_id!r} ({len(self)} items)") from None

    def content_hash_of(self, image: ImageInput) -> str:
        """The content hash (of decoded pixels) used by ``exclude_hashes`` for any image input."""
        return image_content_hash(image)

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray,
        modality: Modality,
        k: int,
        *,
        exclude_ids: Sequence[Collection[str] | None] | None = None,
        exclude_hashes: Sequence[Collection[str] | None] | None = None,
        filters: MetadataFilters | Sequence[MetadataFilters | None] | None = None,
    ) -> list[list[SearchHit]]:
        """Nearest pairs of each query in the image or the text index.

        Excluded items are removed after over-retrieving ``k`` plus the number of excluded items
        that exist, so each list still has ``k`` hits when the knowledge base has enough.
        ``filters`` are pushed down into the backend (faiss: a pre-filter by row set, so flat
        search stays exact; Milvus: a boolean expression; Qdrant: a ``Filter``); their semantics
        (fields, operators, absent values) are those of ``kb/filters.py`` on every backend.

        Args:
            queries: ``(n, dim)`` query embeddings (normalised here).
            modality: ``"image"`` searches image vectors, ``"text"`` the caption vectors.
            k: Hits per query.
            exclude_ids: One collection of item ids to skip per query (or ``None``).
            exclude_hashes: One collection of image content hashes to skip per query (or
                ``None``), e.g. ``[[kb.content_hash_of(query_image)]]`` to drop the query itself.
            filters: LlamaIndex ``MetadataFilters`` for every query, or one (or ``None``) per
                query, on ``id``, ``content_hash``, ``label``, ``source`` or any metadata key.

        Returns:
            ``n`` lists of at most ``k`` hits, best first. Ties (scores within 1e-6) are ordered by
            the pair's other-modality cosine with the query (for the text index: its image's),
            then by id, the same on every backend (see ``kb/tie_order.py``).

        Raises:
            UsageError: Empty knowledge base, bad modality, ``k`` not a non-negative int, queries
                not ``(n, dim)`` of this knowledge base's ``dim`` (a ``ValueError``).
            ValueError: Exclusion or filter lists whose length is not ``n``, or a filter on an
                unknown field / with an unsupported operator or value (named).

        Example:
            >>> from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters
            >>> ct_only = MetadataFilters(filters=[MetadataFilter(key="modality", value="CT")])
            >>> hits = kb.search(query_vectors, "text", 2, exclude_ids=[{"case-17"}], filters=ct_only)  # doctest: +SKIP
        """
        if modality not in MODALITIES:
            raise UsageError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise UsageError(f"k must be a non-negative int, got {k!r}")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2:
            raise UsageError(f"queries must have shape (n, dim), got {queries.shape}")
        n = queries.shape[0]
        ids = checks.per_query("exclude_ids", exclude_ids, n)
        hashes = checks.per_query("exclude_hashes", exclude_hashes, n)
        per_query_filters = kb_filters.per_query_filters(filters, n)
        if not self._items:
            raise UsageError("knowledge base is empty; add items before searching")
        self._check_filters(per_query_filters)
        if queries.shape[1] != self.dim:
            raise UsageError(
                f"queries are {queries.shape[1]}-d but the knowledge base is {self.dim}-d; "
                "embed queries with the encoder that built it"
            )
        if n == 0 or k == 0:
            return [[] for _ in range(n)]
        excluded = [self._excluded_positions(ids[i], hashes[i]) for i in range(n)]
        unit = enc.unit_rows(queries)  # (n, dim)
        found = self._search_whole_ties(modality, unit, k, excluded, per_query_filters)
        other = self._vectors["text" if modality == "image" else "image"]  # (N, dim): the tie-breaker
        results: list[list[SearchHit]] = []
        for i in range(n):
            hits = []
            for item_id, score in found[i]:
                p = self._positions.get(item_id)
                if p is None:
                    raise ValueError(
                        f"the {modality} index returned item {item_id!r}, which the knowledge base does not hold; "
                        f"{self._backend.describe()} was changed by another process. Reopen the knowledge base."
                    )
                if p not in excluded[i]:
                    hits.append(SearchHit(item=self._items[p], score=float(score), position=p))
            rows = [h.position for h in hits]
            order = tie_order(
                np.array([h.score for h in hits]), other[rows] @ unit[i], [h.item.id for h in hits]  # (m,)
            )
            results.append([hits[j] for j in order[:k]])
        return results

    def _search_whole_ties(
        self, modality: str, unit: np.ndarray, k: int, excluded: list[set[int]], filters: list[MetadataFilters | None]
    ) -> list[list[tuple[str, float]]]:
        """The backend's hits, fetched deep enough that no tied group is cut at ``k`` (see ``tie_order``)."""
        # One more than needed: whether the k-th hit ties with the next one shows without a second search.
        fetch = min(len(self), k + max(len(e) for e in excluded) + 1)
        found = self._indexes[modality].search(unit, fetch, filters)  # n lists of (id, score)
        while fetch < len(self):
            deeper = [i for i in range(len(found)) if needs_deeper_search(found[i], self._positions, excluded[i], k, fetch)]
            if not deeper:
                break
            fetch = min(len(self), 2 * fetch)
            again = self._indexes[modality].search(unit[deeper], fetch, [filters[i] for i in deeper])
            for i, hits in zip(deeper, again):
                found[i] = hits
        return found

    def close(self) -> None:
        """Release the database client (Milvus Lite / Qdrant local mode unlock their files).

        The knowledge base cannot search or change afterwards; reopen it with :meth:`from_persist_dir`.
        A faiss knowledge base has nothing to release.
        """
        self._backend.close()

    def check_filters(self, filters: MetadataFilters | Sequence[MetadataFilters | None] | None) -> None:
        """Raise as :meth:`search` would for a filter on an unknown field, operator or value kind.

        Example:
            >>> kb.check_filters(MetadataFilters(filters=[MetadataFilter(key="modality", value="CT")]))  # doctest: +SKIP
        """
        per_query = [filters] if filters is None or isinstance(filters, MetadataFilters) else list(filters)
        self._check_filters(per_query)

    def _check_filters(self, per_query: Sequence[MetadataFilters | None]) -> None:
        seen: set[str] = set()
        for f in per_query:
            key = kb_filters.group_key(f)
            if f is None or key in seen:
                continue
            seen.add(key)
            if self._metadata_kinds is None:
                self._metadata_kinds = kb_filters.metadata_kinds(self._items)
            kb_filters.check_filters(f, self._metadata_kinds)

    def _excluded_positions(self, ids: Collection[str], hashes: Collection[str]) -> set[int]:
        positions = {self._positions[i] for i in ids if i in self._positions}
        for h in hashes:
            positions.update(self._hash_positions.get(h, ()))
        return positions

    # ------------------------------------------------------------------ persistence
    def persist(self, persist_dir: str | Path) -> None:
        """Write the knowledge base to a directory, atomically.

        Everything is written into a temp directory next to ``persist_dir`` and then renamed
        into place (an existing knowledge base there is replaced), so an interrupted write
        leaves the old directory or none, never half of one. No pickle: JSON, safetensors and
        faiss's own index format. With a database backend the directory is updated in place
        (its Milvus Lite / Qdrant local store may live inside it): new data files first, then the
        manifest that names them, atomically replaced. The manifest records the backend and its
        connection settings (no secrets; a local store inside ``persist_dir`` as a relative
        path, so the folder can move). Call it again after :meth:`add`/:meth:`delete`/:meth:`upsert`.

        No lost updates: a knowledge base loaded with :meth:`from_persist_dir` writes back into
        that folder only if the folder still holds the version it loaded (or last wrote there);
        otherwise another process persisted in between and this write would drop its items, so
        :class:`~llama_index_lvlm_retriever.errors.ConcurrentUpdateError` is raised and nothing is
        written. Use :meth:`updating` to serialise such writers instead. A knowledge base built in
        memory replaces whatever knowledge base ``persist_dir`` holds.

        Args:
            persist_dir: Target directory (new, empty, or an existing knowledge base).

        Raises:
            ValueError: The knowledge base is empty, or some metadata is not JSON-serialisable.
            FileExistsError: ``persist_dir`` is a non-empty directory that is not a knowledge base.
            ConcurrentUpdateError: Another process persisted into ``persist_dir`` after this
                knowledge base was loaded from it.
            StoreLockedError: Another process is writing ``persist_dir`` right now.

        Example:
            >>> kb.persist("kb/roco-clip")  # doctest: +SKIP
        """
        if not self._items:
            raise ValueError("knowledge base is empty; nothing to persist")
        target = Path(persist_dir).resolve()
        own = self._version if self._version is not None and self._version.folder == target else None
        written = persistence.persist_knowledge_base(
            Path(persist_dir),
            encoder=self._encoder_record(),
            index_config=self._config,
            backend=self._backend,
            kb_uid=self._kb_uid,
            items=self._items,
            vectors=self._vectors,
            hashes=self._hashes,
            indexes=self._indexes,
            expect=own,
            lock_held=self._locked_folder == target,
        )
        if own is not None:
            self._version = written  # the next persist there compares with what this one wrote
        logger.info(
            "persisted knowledge base (%d pairs, %d-d, %s, %s) to %s",
            len(self), self.dim, self._config.kind, self._backend.describe(), persist_dir,
        )

    def _encoder_record(self) -> dict[str, Any]:
        info = dict(self._encoder_info or {})
        if "probe" not in info or "class_name" not in info:
            derived = enc.describe_encoder(self._embed_model, with_probe="probe" not in info)
            info = {**derived, **info}
        self._encoder_info = info
        return info

    @staticmethod
    def read_manifest(persist_dir: str | Path) -> dict[str, Any]:
        """The manifest of a persisted knowledge base (encoder, dim, counts, index) without loading it.

        Raises:
            FileNotFoundError: No such directory, or it has no manifest.
            KBFormatError: The manifest is not a knowledge-base manifest of a readable version, or
                a field has the wrong JSON type (a ``ValueError``).

        Example:
            >>> KnowledgeBase.read_manifest("kb/roco-clip")["encoder"]["model_name"]  # doctest: +SKIP
            'openai/clip-vit-base-patch16'
        """
        manifest = store.read_manifest(persist_dir)
        check_kb_manifest(manifest, Path(persist_dir))
        return manifest

    @classmethod
    def from_persist_dir(
        cls, persist_dir: str | Path, embed_model: MultiModalEmbedding, *, backend: BackendConfig | None = None
    ) -> KnowledgeBase:
        """Load a knowledge base written by :meth:`persist`, on the backend it was built with.

        Args:
            persist_dir: The directory.
            embed_model: The encoder that built it (checked: weights fingerprint when both the
                record and the model have one, else the embeddings of a fixed probe image and
                text must match to cosine 0.999).
            backend: Override the recorded connection settings (same backend name), e.g. a moved
                server's URL or a token; default: the manifest's.

        Returns:
            The knowledge base, with the persisted indexes (nothing is re-embedded).

        Raises:
            FileNotFoundError: No such directory, it lacks a manifest or data file, or the
                database collections are gone.
            EncoderMismatchError: ``embed_model`` is not the encoder that built the knowledge base,
                or the database collection was built with another encoder.
            ConnectionError: The database server cannot be reached.
            ValueError: The files (or the collections) are inconsistent with each other.

        Example:
            >>> kb = KnowledgeBase.from_persist_dir("kb/roco-clip", embed)  # doctest: +SKIP
        """
        loaded = persistence.load_knowledge_base(Path(persist_dir), embed_model, backend)
        kb = cls.__new__(cls)
        kb._setup(
            embed_model, loaded.index_config, loaded.encoder, loaded.items, loaded.image, loaded.text,
            loaded.hashes, indexes=loaded.indexes, backend=loaded.backend, kb_uid=loaded.kb_uid,
        )
        kb._version = loaded.version
        logger.info(
            "loaded knowledge base (%d pairs, %d-d, %s, %s) from %s",
            len(kb), kb.dim, loaded.index_config.kind, loaded.backend.describe(), persist_dir,
        )
        return kb


__all__ = ["KnowledgeBase"]
