"""QdrantIndex: one Qdrant collection per modality (local mode, or a Qdrant server/cluster).

``path="kb/qdrant"`` runs Qdrant's local mode inside the process (tests, laptops; exact search);
``url="http://host:6333"`` talks to a Qdrant server or cluster (API key from ``$QDRANT_API_KEY`` or
``api_key=``, never written to the manifest). A knowledge base named ``C`` keeps two collections,
``C_image`` and ``C_text``; a point's id is a UUID derived from the pair's id, its payload holds
``id``, ``content_hash``, ``label``, ``source`` and ``metadata``, its vector the L2-normalised
embedding under the ``Dot`` distance (an inner product, as in faiss). ``IndexConfig.kind`` flat
searches exactly (``exact=True``), hnsw uses Qdrant's HNSW with ``m`` and ``hnsw_ef``; Qdrant has no
IVF. The collections' metadata records the knowledge base, its dimension and its encoder, checked on
reopen. Metadata filters become a Qdrant ``Filter``.

Why ``qdrant-client`` directly and not ``llama-index-vector-stores-qdrant``: that store keeps
``TextNode`` s (one vector each, node JSON in the payload) in one collection; our unit is the pair
with two frozen vectors searched separately, keyed by the knowledge base's ids and content hashes,
and we record/verify the encoder and dimension in the collection, need exact search for parity
with faiss, and the same missing-field filter semantics on every backend (``kb/filters.py``).
Wrapping it would need two stores, node (de)serialisation per hit and raw client calls anyway.
"""

from __future__ import annotations

import atexit
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from llama_index.core.bridge.pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.kb import filters as kb_filters
from llama_index_lvlm_retriever.kb.backends.base import Hits, check_identity, path_for_manifest
from llama_index_lvlm_retriever.kb.types import BackendIdentity, IndexConfig

logger = logging.getLogger(__name__)

_INSTALL = 'the Qdrant backend needs qdrant-client: pip install "llama-index-lvlm-retriever[qdrant]"'
_UPSERT_CHUNK = 1024  # points per request: 1024 x 768 float32 ~ 3 MB of JSON-free gRPC / ~8 MB of REST
_POINT_NAMESPACE = uuid.UUID("6f1c7f3e-4a43-5b8e-9c39-1e8f0d6c2a51")  # fixed: ids map to the same UUIDs forever
_METADATA_KEY = "lvlm_kb"
# One client per location and process: local mode locks its folder; both collections share it.
_CLIENTS: dict[tuple[str, str], Any] = {}


def point_id(item_id: str) -> str:
    """The Qdrant point id (a UUID string) of a knowledge-base item id."""
    return str(uuid.uuid5(_POINT_NAMESPACE, item_id))


class QdrantBackendConfig(BaseModel):
    """Where a knowledge base's Qdrant collections live (recorded in its manifest, without secrets).

    Exactly one of ``path`` (local mode) and ``url`` (server or cluster).

    Example:
        >>> QdrantBackendConfig(path="kb/qdrant").is_local
        True
        >>> QdrantBackendConfig(url="http://qdrant.internal:6333", collection="roco").describe()
        "Qdrant at 'http://qdrant.internal:6333' (collections roco_image, roco_text)"
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["qdrant"] = "qdrant"
    path: str | None = Field(
        default=None,
        description="Folder of Qdrant local mode (embedded; relative paths are relative to the KB folder once "
        "persisted inside it).",
    )
    url: str | None = Field(default=None, description="Qdrant server or cluster, e.g. http://host:6333.")
    collection: str = Field(default="lvlm_kb", description="Collection name prefix: <collection>_image and <collection>_text.")
    api_key_env: str = Field(default="QDRANT_API_KEY", description="Environment variable holding the API key.")
    api_key: str | None = Field(default=None, exclude=True, description="API key; overrides api_key_env; never persisted.")
    prefer_grpc: bool = Field(default=False, description="Use gRPC (port 6334) instead of REST for a server.")
    timeout: int = Field(default=10, gt=0, description="Seconds per request to a server.")

    @field_validator("collection")
    @classmethod
    def _check_collection(cls, value: str) -> str:
        if not value or not value.replace("_", "a").replace("-", "a").isalnum():
            raise ValueError(f"collection {value!r}: use letters, digits, '_' and '-'")
        return value

    @model_validator(mode="after")
    def _one_location(self) -> QdrantBackendConfig:
        if (self.path is None) == (self.url is None):
            raise ValueError(
                f"pass exactly one of path= (local mode folder) and url= (server), got path={self.path!r} url={self.url!r}"
            )
        return self

    @property
    def is_local(self) -> bool:
        """Local mode (a folder) rather than a server."""
        return self.path is not None

    def describe(self) -> str:
        """Where the vectors live, for messages."""
        where = self.path if self.is_local else self.url
        return f"Qdrant at {where!r} (collections {self.collection}_image, {self.collection}_text)"

    def resolved(self, base_dir: Path | None) -> QdrantBackendConfig:
        """A copy whose relative local-mode path is made absolute against ``base_dir``."""
        if self.path is None or Path(self.path).is_absolute() or base_dir is None:
            return self
        return self.model_copy(update={"path": str(Path(base_dir) / self.path)})

    def for_manifest(self, kb_dir: Path) -> dict[str, Any]:
        """The settings to record; a local-mode folder inside ``kb_dir`` is recorded relative to it."""
        record = self.model_dump()
        if self.path is not None:
            record["path"] = path_for_manifest(self.path, kb_dir)
        return record

    def connect(self) -> Any:
        """A (cached) ``QdrantClient``; raises ``ConnectionError`` naming the URL when unreachable."""
        try:
            from qdrant_client import QdrantClient
        except ImportError as err:
            raise ImportError(_INSTALL) from err
        key = ("path", str(Path(self.path).resolve())) if self.path is not None else ("url", str(self.url))
        if key not in _CLIENTS:
            if self.path is not None:
                client = QdrantClient(path=key[1])
            else:
                api_key = self.api_key if self.api_key is not None else os.environ.get(self.api_key_env) or None
                try:
                    client = QdrantClient(
                        url=self.url, api_key=api_key, prefer_grpc=self.prefer_grpc, timeout=self.timeout,
                        check_compatibility=False,  # its own probe only warns; get_collections below fails clearly
                    )
                    client.get_collections()  # the client connects lazily: fail here, naming the URL
                except Exception as err:
                    raise ConnectionError(
                        f"cannot reach Qdrant at {self.url!r} ({err}). Start the server, fix the URL "
                        f"(http://host:6333), or set the API key in ${self.api_key_env}."
                    ) from err
            if not _CLIENTS:
                atexit.register(_close_all)  # close before interpreter teardown, where QdrantClient.__del__ fails
            _CLIENTS[key] = client
        return _CLIENTS[key]

    def close(self) -> None:
        """Close this location's cached client (local mode releases its folder lock)."""
        key = ("path", str(Path(self.path).resolve())) if self.path is not None else ("url", str(self.url))
        client = _CLIENTS.pop(key, None)
        if client is not None:
            client.close()

    def open(self, modality: str, index_config: IndexConfig, identity: BackendIdentity) -> QdrantIndex:
        """The backend for one modality; its collection is created by the first :meth:`QdrantIndex.add`."""
        return QdrantIndex(self, modality, index_config, identity, self.connect(), create=True)

    def reopen(self, modality: str, index_config: IndexConfig, identity: BackendIdentity) -> QdrantIndex:
        """Attach to an existing collection and check that it is this knowledge base's."""
        return QdrantIndex(self, modality, index_config, identity, self.connect(), create=False)


def _close_all() -> None:
    for client in list(_CLIENTS.values()):
        client.close()
    _CLIENTS.clear()


class QdrantIndex:
    """One modality's collection in Qdrant (see the module docstring for its layout).

    Args:
        config: Connection settings.
        modality: ``"image"`` or ``"text"``.
        index_config: Index kind and parameters (``flat`` or ``hnsw``).
        identity: The knowledge base this collection belongs to (uid, dim, encoder).
        client: A ``QdrantClient``.
        create: ``True``: the collection must not exist yet and is created on the first add;
            ``False``: it must exist and match ``identity``.

    Raises:
        ValueError: ``index_config.kind`` is ``ivf``; or the collection has another dimension or
            belongs to another knowledge base.
        FileExistsError: ``create`` and the collection already exists.
        FileNotFoundError: not ``create`` and the collection does not exist.
        EncoderMismatchError: The collection was built with another encoder.
    """

    def __init__(
        self,
        config: QdrantBackendConfig,
        modality: str,
        index_config: IndexConfig,
        identity: BackendIdentity,
        client: Any,
        *,
        create: bool,
    ) -> None:
        if index_config.kind == "ivf":
            raise ValueError("Qdrant has no IVF index; use index kind 'flat' (exact) or 'hnsw'")
        self._config = config
        self._index_config = index_config
        self._identity = identity
        self._client = client
        self._name = f"{config.collection}_{modality}"
        self._modality = modality
        self._dim: int | None = None
        exists = self._client.collection_exists(self._name)
        if create and exists:
            raise FileExistsError(
                f"Qdrant collection {self._name!r} already exists at {self._where()} with {self._count()} points; "
                "choose another collection name, delete it, or reopen its knowledge base with "
                "KnowledgeBase.from_persist_dir"
            )
        if not create:
            if not exists:
                raise FileNotFoundError(
                    f"Qdrant collection {self._name!r} not found at {self._where()}; the knowledge base's "
                    "vectors are gone or the path/URL/collection is wrong (pass backend= to from_persist_dir), "
                    "else rebuild the knowledge base"
                )
            self._dim = self._check_identity()

    @property
    def ntotal(self) -> int:
        """Points in the collection (exact count)."""
        return 0 if self._dim is None else self._count()

    @property
    def dim(self) -> int | None:
        """Vector dimension (``None`` before the collection exists)."""
        return self._dim

    def add(self, vectors: np.ndarray, items: Sequence[KBItem], hashes: Sequence[str]) -> None:
        """Insert new pairs (creates the collection on the first call)."""
        self.upsert(vectors, items, hashes)

    def upsert(self, vectors: np.ndarray, items: Sequence[KBItem], hashes: Sequence[str]) -> None:
        """Insert or replace pairs by id."""
        from qdrant_client import models

        if len(items) == 0:
            return
        if self._dim is None:
            self._create(int(vectors.shape[1]))
        vectors = np.asarray(vectors, dtype=np.float32)  # (m, dim)
        for start in range(0, len(items), _UPSERT_CHUNK):
            stop = start + _UPSERT_CHUNK
            points = [
                models.PointStruct(
                    id=point_id(item.id),
                    vector=vector,
                    payload={
                        "id": item.id,
                        "content_hash": h,
                        "label": item.label,
                        "source": item.source,
                        # None values count as absent for filters (kb/filters.py).
                        "metadata": {key: value for key, value in item.metadata.items() if value is not None},
                    },
                )
                for item, h, vector in zip(items[start:stop], hashes[start:stop], vectors[start:stop].tolist())
            ]
            self._client.upsert(self._name, points=points, wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        """Delete pairs by id."""
        from qdrant_client import models

        ids = list(ids)
        for start in range(0, len(ids), _UPSERT_CHUNK):
            chunk = [point_id(i) for i in ids[start : start + _UPSERT_CHUNK]]
            self._client.delete(self._name, points_selector=models.PointIdsList(points=chunk), wait=True)

    def search(self, queries: np.ndarray, k: int, filters: Sequence[MetadataFilters | None] | None = None) -> Hits:
        """Top-``k`` ``(item id, inner product)`` per query, each query's filter as a Qdrant ``Filter``."""
        from qdrant_client import models

        queries = np.ascontiguousarray(queries, dtype=np.float32)  # (n, dim)
        n = queries.shape[0]
        if self._dim is None or k == 0 or n == 0:
            return [[] for _ in range(n)]
        per_query = list(filters) if filters is not None else [None] * n
        # Local mode always searches exactly and warns about search params, so send none there.
        params = None if self._config.is_local else self._search_params()
        requests = [
            models.QueryRequest(
                query=queries[i].tolist(),
                filter=None if per_query[i] is None else qdrant_filter(per_query[i]),
                limit=k,
                params=params,
                with_payload=["id"],
            )
            for i in range(n)
        ]
        responses = self._client.query_batch_points(self._name, requests=requests)
        return [[(str(p.payload["id"]), float(p.score)) for p in r.points] for r in responses]

    def write(self, path: Path) -> None:
        """Nothing to write into the knowledge-base folder: the points are in Qdrant already."""

    def drop(self) -> None:
        """Delete the collection (rolls back a failed build)."""
        if self._client.collection_exists(self._name):
            self._client.delete_collection(self._name)
        self._dim = None

    # ------------------------------------------------------------------ internals
    def _where(self) -> str:
        return repr(self._config.path if self._config.is_local else self._config.url)

    def _count(self) -> int:
        return int(self._client.count(self._name, exact=True).count)

    def _check_identity(self) -> int:
        info = self._client.get_collection(self._name)
        vectors = info.config.params.vectors
        if not hasattr(vectors, "size"):
            raise ValueError(f"Qdrant collection {self._name!r} at {self._where()} has named vectors; it is not a knowledge-base collection")
        record = (info.config.metadata or {}).get(_METADATA_KEY) or {}
        check_identity(
            where=f"Qdrant collection {self._name!r} at {self._where()}",
            identity=self._identity,
            dim=int(vectors.size),
            kb_uid=record.get("uid"),
            encoder=record.get("encoder"),
            encoder_label=str(record.get("encoder_label", "unknown encoder")),
        )
        return int(vectors.size)

    def _create(self, dim: int) -> None:
        from qdrant_client import models

        hnsw = models.HnswConfigDiff(m=self._index_config.hnsw_m, ef_construct=40)  # 40: faiss's default
        identity = self._identity
        self._client.create_collection(
            self._name,
            vectors_config=models.VectorParams(size=dim, distance=models.Distance.DOT, hnsw_config=hnsw),
            metadata={
                _METADATA_KEY: {
                    "uid": identity.kb_uid,
                    "encoder": identity.encoder,
                    "encoder_label": identity.encoder_label,
                    "modality": self._modality,
                }
            },
        )
        if not self._config.is_local:
            # Keyword indexes on the pair's own fields keep id/label/source filters fast on a server.
            for field in ("id", "content_hash", "label", "source"):
                self._client.create_payload_index(self._name, field, models.PayloadSchemaType.KEYWORD)
        self._dim = dim

    def _search_params(self) -> Any:
        from qdrant_client import models

        if self._index_config.kind == "flat":
            return models.SearchParams(exact=True)
        return models.SearchParams(hnsw_ef=self._index_config.ef_search)


def qdrant_filter(filters: MetadataFilters) -> Any:
    """A checked ``MetadataFilters`` as a Qdrant ``Filter`` (semantics: ``kb/filters.py``)."""
    from qdrant_client import models

    parts = [qdrant_filter(f) if isinstance(f, MetadataFilters) else _leaf_filter(f) for f in filters.filters]
    condition = kb_filters.condition_of(filters)
    if condition == FilterCondition.AND:
        return models.Filter(must=parts)
    if condition == FilterCondition.OR:
        return models.Filter(should=parts)
    return models.Filter(must_not=parts)  # none of them match


def _leaf_filter(leaf: MetadataFilter) -> Any:
    from qdrant_client import models

    key = leaf.key if leaf.key in kb_filters.ITEM_FIELDS else f"metadata.{leaf.key}"
    operator = FilterOperator(leaf.operator)

    def equals(value: Any) -> Any:
        if kb_filters.value_kind(value) == "number":
            # A closed range matches 2 and 2.0 alike (MatchValue takes no floats and ints only match ints).
            return models.FieldCondition(key=key, range=models.Range(gte=value, lte=value))
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))

    if operator == FilterOperator.EQ:
        return models.Filter(must=[equals(leaf.value)])
    if operator == FilterOperator.NE:
        return models.Filter(must_not=[equals(leaf.value)])  # an absent key passes must_not, as specified
    if operator == FilterOperator.IN:
        return models.Filter(should=[equals(v) for v in leaf.value])
    if operator == FilterOperator.NIN:
        return models.Filter(must_not=[equals(v) for v in leaf.value])
    bound = {"gt": None, "gte": None, "lt": None, "lte": None}
    bound[{">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}[operator.value]] = leaf.value
    return models.Filter(must=[models.FieldCondition(key=key, range=models.Range(**bound))])


__all__ = ["QdrantBackendConfig", "QdrantIndex", "point_id", "qdrant_filter"]
