"""MilvusIndex: one Milvus collection per modality (Milvus Lite embedded, or a Milvus server/cluster).

``uri="./kb.db"`` (a path ending in ``.db``) runs Milvus Lite inside the process (tests, laptops);
``uri="http://host:19530"`` talks to a Milvus server or cluster (token from ``$MILVUS_TOKEN`` or
``token=``, never written to the manifest). A knowledge base named ``C`` keeps two collections,
``C_image`` and ``C_text``, with the same rows: the pair's ``id`` (VARCHAR primary key),
``content_hash``, ``label`` and ``has_label`` (no nullable fields, which Milvus servers before 2.5
lack: an absent label is stored as ``""`` with ``has_label`` false, and reads as absent in filters),
``source``, ``metadata`` (JSON) and the L2-normalised ``vector``, searched by inner product (``IndexConfig.kind``: flat -> ``FLAT``, ivf -> ``IVF_FLAT``,
hnsw -> ``HNSW``). Each collection's properties record the knowledge base it belongs to, its
dimension and its encoder, checked on reopen. Metadata filters become a Milvus boolean expression.
A search right after this process's own insert/delete/upsert uses Strong consistency (it sees the
write; a server then waits for its next time tick, ~200 ms), later ones Bounded (no wait; another
process's writes show within the server's staleness bound, 5 s by default).
Servers from :data:`MIN_SERVER_VERSION` on are supported (checked at connect); collections written by
earlier versions of this package (a nullable ``label``, no ``has_label``) are still read and written.

Why ``pymilvus`` directly and not ``llama-index-vector-stores-milvus``: that store keeps one
collection of ``TextNode`` s with one embedding each and serialises the node into a JSON blob; our
unit is the image-caption pair with *two* frozen embeddings searched separately, identified by the
knowledge base's own ids and content hashes, and we must record and verify the encoder and the
dimension in the collection, pick exact FLAT search for parity with faiss, and give metadata filters
the same missing-field semantics on every backend (see ``kb/filters.py``). Wrapping the store would
mean two stores per knowledge base, node (de)serialisation on every hit, and still raw client calls
for the checks, so the client is used directly (the LlamaIndex type users know, ``MetadataFilters``,
is still what they pass).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from llama_index.core.bridge.pydantic import BaseModel, ConfigDict, Field, field_validator
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import ServerVersionError
from llama_index_lvlm_retriever.kb import filters as kb_filters
from llama_index_lvlm_retriever.kb.backends.base import Hits, check_identity, path_for_manifest
from llama_index_lvlm_retriever.kb.types import BackendIdentity, IndexConfig

logger = logging.getLogger(__name__)

_INSTALL = 'the Milvus backend needs pymilvus (and milvus-lite for a local .db): pip install "llama-index-lvlm-retriever[milvus]"'
_MAX_VARCHAR = 65535  # Milvus's VARCHAR limit
_INSERT_CHUNK = 4096  # rows per insert: 4096 x 768 float32 = 12 MB, under gRPC's 64 MB message cap
_MAX_TOPK = 16384  # Milvus's search limit
_PROPERTY_PREFIX = "lvlm_kb."
MIN_SERVER_VERSION = (2, 3)
"""The oldest Milvus server the backend supports (2.3: no nullable fields, hence ``has_label``)."""
_HAS_LABEL = "has_label == true"
_LEGACY_HAS_LABEL = "label is not null"  # collections with a nullable label (Milvus Lite, before has_label)
# One client per location and process: Milvus Lite opens its .db once; both collections share it.
_CLIENTS: dict[tuple[str, str], Any] = {}


class MilvusBackendConfig(BaseModel):
    """Where a knowledge base's Milvus collections live (recorded in its manifest, without secrets).

    Example:
        >>> MilvusBackendConfig(uri="kb/kb.db").is_local
        True
        >>> MilvusBackendConfig(uri="http://milvus.internal:19530", collection="roco").describe()
        "Milvus at 'http://milvus.internal:19530' (collections roco_image, roco_text)"
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["milvus"] = "milvus"
    uri: str = Field(
        default="kb.db",
        description="A path ending in .db runs Milvus Lite embedded (relative paths are relative to the KB folder "
        "once persisted inside it); http(s)://host:19530 is a Milvus server or cluster.",
    )
    collection: str = Field(default="lvlm_kb", description="Collection name prefix: <collection>_image and <collection>_text.")
    db_name: str = Field(default="", description="Milvus database ('' = the server's default).")
    token_env: str = Field(default="MILVUS_TOKEN", description="Environment variable holding the token (user:password or API key).")
    token: str | None = Field(default=None, exclude=True, description="Token; overrides token_env; never persisted.")
    timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for the server on connect and per call.")

    @field_validator("collection")
    @classmethod
    def _check_collection(cls, value: str) -> str:
        if not value or not value.replace("_", "a").isalnum() or value[0].isdigit():
            raise ValueError(f"collection {value!r}: use letters, digits and underscores, not starting with a digit")
        return value

    @property
    def is_local(self) -> bool:
        """Milvus Lite (a local ``.db`` path) rather than a server."""
        return self.uri.endswith(".db") and "://" not in self.uri

    def describe(self) -> str:
        """Where the vectors live, for messages."""
        return f"Milvus at {self.uri!r} (collections {self.collection}_image, {self.collection}_text)"

    def resolved(self, base_dir: Path | None) -> MilvusBackendConfig:
        """A copy whose relative Milvus Lite path is made absolute against ``base_dir``."""
        if not self.is_local or Path(self.uri).is_absolute() or base_dir is None:
            return self
        return self.model_copy(update={"uri": str(Path(base_dir) / self.uri)})

    def for_manifest(self, kb_dir: Path) -> dict[str, Any]:
        """The settings to record; a Milvus Lite file inside ``kb_dir`` is recorded relative to it."""
        record = self.model_dump()
        if self.is_local:
            record["uri"] = path_for_manifest(self.uri, kb_dir)
        return record

    def connect(self) -> Any:
        """A (cached) ``MilvusClient``; raises ``ConnectionError`` naming the URI when unreachable."""
        try:
            from pymilvus import MilvusClient
        except ImportError as err:
            raise ImportError(_INSTALL) from err
        uri = str(Path(self.uri).resolve()) if self.is_local else self.uri
        key = (uri, self.db_name)
        if key not in _CLIENTS:
            if self.is_local:
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
            token = self.token if self.token is not None else os.environ.get(self.token_env, "")
            try:
                client = MilvusClient(uri=uri, token=token, db_name=self.db_name, timeout=self.timeout)
                version = "" if self.is_local else str(client.get_server_version())
            except Exception as err:  # pymilvus raises MilvusException (or grpc errors) for any failure
                raise ConnectionError(
                    f"cannot reach Milvus at {self.uri!r} ({err}). Start the server, fix the URI "
                    "(http://host:19530, or a path ending in .db for Milvus Lite), or set the token in "
                    f"${self.token_env}."
                ) from err
            if not self.is_local:
                try:
                    check_server_version(version, self.uri)
                except ServerVersionError:
                    client.close()
                    raise
            _CLIENTS[key] = client
        return _CLIENTS[key]

    def close(self) -> None:
        """Release this location's cached client: Milvus Lite closes it and releases its ``.db``.

        A server's client is only dropped from the cache (the next connect makes a new one), not
        closed: other knowledge bases on the same server may still search through it.
        """
        uri = str(Path(self.uri).resolve()) if self.is_local else self.uri
        client = _CLIENTS.pop((uri, self.db_name), None)
        if client is not None and self.is_local:
            client.close()
        if self.is_local and not any(key[0] == uri for key in _CLIENTS):
            # Milvus Lite serves the .db from a thread that outlives the client; stop it to unlock the file.
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(uri)

    def open(self, modality: str, index_config: IndexConfig, identity: BackendIdentity) -> MilvusIndex:
        """The backend for one modality; its collection is created by the first :meth:`MilvusIndex.add`."""
        return MilvusIndex(self, modality, index_config, identity, self.connect(), create=True)

    def reopen(self, modality: str, index_config: IndexConfig, identity: BackendIdentity) -> MilvusIndex:
        """Attach to an existing collection and check that it is this knowledge base's."""
        return MilvusIndex(self, modality, index_config, identity, self.connect(), create=False)


class MilvusIndex:
    """One modality's collection in Milvus (see the module docstring for its layout).

    Args:
        config: Connection settings.
        modality: ``"image"`` or ``"text"``.
        index_config: Index kind and parameters.
        identity: The knowledge base this collection belongs to (uid, dim, encoder).
        client: A ``MilvusClient``.
        create: ``True``: the collection must not exist yet and is created on the first add;
            ``False``: it must exist and match ``identity``.

    Raises:
        FileExistsError: ``create`` and the collection already exists.
        FileNotFoundError: not ``create`` and the collection does not exist.
        EncoderMismatchError: The collection was built with another encoder.
        ValueError: The collection has another dimension or belongs to another knowledge base.
    """

    def __init__(
        self,
        config: MilvusBackendConfig,
        modality: str,
        index_config: IndexConfig,
        identity: BackendIdentity,
        client: Any,
        *,
        create: bool,
    ) -> None:
        self._config = config
        self._index_config = index_config
        self._identity = identity
        self._client = client
        self._name = f"{config.collection}_{modality}"
        self._modality = modality
        self._dim: int | None = None
        self._legacy_label = False  # a collection of an earlier version: nullable label, no has_label
        # Strong consistency makes a server wait for its next time tick (~200 ms) on every search; it
        # is needed only until this process's own writes are visible, i.e. for the first search after one.
        self._written = True
        exists = self._call("has_collection", self._name)
        if create and exists:
            count = self._count()
            raise FileExistsError(
                f"Milvus collection {self._name!r} already exists at {config.uri!r} with {count} rows; choose "
                "another collection name, drop it, or reopen its knowledge base with KnowledgeBase.from_persist_dir"
            )
        if not create:
            if not exists:
                raise FileNotFoundError(
                    f"Milvus collection {self._name!r} not found at {config.uri!r}; the knowledge base's "
                    "vectors are gone or the URI/collection is wrong (pass backend= to from_persist_dir to "
                    "point at the right server), else rebuild the knowledge base"
                )
            self._dim = self._check_identity()
            self._call("load_collection", self._name)

    @property
    def ntotal(self) -> int:
        """Rows in the collection (exact ``count(*)``)."""
        return 0 if self._dim is None else self._count()

    @property
    def dim(self) -> int | None:
        """Vector dimension (``None`` before the collection exists)."""
        return self._dim

    def add(self, vectors: np.ndarray, items: Sequence[KBItem], hashes: Sequence[str]) -> None:
        """Insert new pairs (creates the collection on the first call)."""
        if len(items) == 0:
            return
        if self._dim is None:
            self._create(int(vectors.shape[1]))
        self._write("insert", vectors, items, hashes)

    def upsert(self, vectors: np.ndarray, items: Sequence[KBItem], hashes: Sequence[str]) -> None:
        """Insert or replace pairs by id."""
        if len(items) == 0:
            return
        if self._dim is None:
            self._create(int(vectors.shape[1]))
        self._write("upsert", vectors, items, hashes)

    def delete(self, ids: Sequence[str]) -> None:
        """Delete pairs by id."""
        ids = list(ids)
        self._written = True
        for start in range(0, len(ids), _INSERT_CHUNK):
            self._call("delete", self._name, ids=ids[start : start + _INSERT_CHUNK])

    def search(self, queries: np.ndarray, k: int, filters: Sequence[MetadataFilters | None] | None = None) -> Hits:
        """Top-``k`` ``(item id, inner product)`` per query, each query's filter as a Milvus expression."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)  # (n, dim)
        n = queries.shape[0]
        out: Hits = [[] for _ in range(n)]
        if self._dim is None or k == 0 or n == 0:
            return out
        per_query = list(filters) if filters is not None else [None] * n
        # Strong after this process wrote (read-your-writes; pymilvus's "Session" does not give it),
        # then Bounded: no wait, and another process's writes show within the server's staleness bound.
        consistency, self._written = ("Strong" if self._written else "Bounded"), False
        groups: dict[str, list[int]] = {}
        for i, f in enumerate(per_query):
            groups.setdefault(kb_filters.group_key(f), []).append(i)
        for members in groups.values():
            f = per_query[members[0]]
            results = self._call(
                "search",
                self._name,
                data=[queries[i].tolist() for i in members],
                limit=min(k, _MAX_TOPK),
                filter="" if f is None else milvus_expression(f, label_present=_LEGACY_HAS_LABEL if self._legacy_label else _HAS_LABEL),
                output_fields=["id"],
                search_params={"metric_type": "IP", "params": self._search_params(k)},
                anns_field="vector",
                consistency_level=consistency,
            )
            for i, hits in zip(members, results):
                out[i] = [(str(hit["id"]), float(hit["distance"])) for hit in hits]
        return out

    def write(self, path: Path) -> None:
        """Nothing to write into the knowledge-base folder: the rows are in Milvus already."""

    def drop(self) -> None:
        """Drop the collection (rolls back a failed build)."""
        if self._call("has_collection", self._name):
            self._call("drop_collection", self._name)
        self._dim = None

    # ------------------------------------------------------------------ internals
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except Exception as err:
            if type(err).__name__ != "MilvusException":
                raise
            raise RuntimeError(
                f"Milvus {method} on collection {self._name!r} at {self._config.uri!r} failed: {err}"
            ) from err

    def _count(self) -> int:
        rows = self._call("query", self._name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])

    def _properties(self) -> dict[str, str]:
        identity = self._identity
        return {
            f"{_PROPERTY_PREFIX}uid": identity.kb_uid,
            f"{_PROPERTY_PREFIX}encoder": identity.encoder,
            f"{_PROPERTY_PREFIX}encoder_label": identity.encoder_label,
            f"{_PROPERTY_PREFIX}modality": self._modality,
        }

    def _check_identity(self) -> int:
        info = self._call("describe_collection", self._name)
        vector = [f for f in info.get("fields", []) if f.get("name") == "vector"]
        if not vector:
            raise ValueError(f"Milvus collection {self._name!r} at {self._config.uri!r} has no 'vector' field; it is not a knowledge-base collection")
        dim = int(vector[0]["params"]["dim"])
        self._legacy_label = not any(f.get("name") == "has_label" for f in info.get("fields", []))
        props = {str(k): str(v) for k, v in (info.get("properties") or {}).items()}
        check_identity(
            where=f"Milvus collection {self._name!r} at {self._config.uri!r}",
            identity=self._identity,
            dim=dim,
            kb_uid=props.get(f"{_PROPERTY_PREFIX}uid"),
            encoder=props.get(f"{_PROPERTY_PREFIX}encoder"),
            encoder_label=props.get(f"{_PROPERTY_PREFIX}encoder_label", "unknown encoder"),
        )
        return dim

    def _create(self, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_MAX_VARCHAR)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=256)
        schema.add_field("label", DataType.VARCHAR, max_length=_MAX_VARCHAR)  # "" when absent (has_label false)
        schema.add_field("has_label", DataType.BOOL)
        schema.add_field("source", DataType.VARCHAR, max_length=_MAX_VARCHAR)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index_params = self._client.prepare_index_params()
        kind = self._index_config.kind
        if kind == "flat":
            index_params.add_index("vector", index_type="FLAT", metric_type="IP")
        elif kind == "ivf":
            index_params.add_index("vector", index_type="IVF_FLAT", metric_type="IP", params={"nlist": self._index_config.nlist})
        else:
            # efConstruction 40: faiss's default, so both HNSW backends build comparable graphs.
            index_params.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": self._index_config.hnsw_m, "efConstruction": 40})
        self._call(
            "create_collection",
            self._name,
            schema=schema,
            index_params=index_params,
            properties=self._properties(),
            consistency_level="Strong",  # the default; searches pick theirs (see search())
        )
        self._dim = dim

    def _search_params(self, k: int) -> dict[str, Any]:
        kind = self._index_config.kind
        if kind == "ivf":
            return {"nprobe": min(self._index_config.nprobe, self._index_config.nlist)}
        if kind == "hnsw":
            return {"ef": max(self._index_config.ef_search, k)}  # Milvus requires ef >= limit
        return {}

    def _label_fields(self, item: KBItem) -> dict[str, Any]:
        if self._legacy_label:
            return {"label": item.label}
        return {"label": "" if item.label is None else item.label, "has_label": item.label is not None}

    def _write(self, method: str, vectors: np.ndarray, items: Sequence[KBItem], hashes: Sequence[str]) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)  # (m, dim)
        self._written = True
        for start in range(0, len(items), _INSERT_CHUNK):
            stop = start + _INSERT_CHUNK
            rows = [
                {
                    "id": item.id,
                    "content_hash": h,
                    **self._label_fields(item),
                    "source": item.source,
                    # None values count as absent for filters (kb/filters.py); JSON null would not.
                    "metadata": {key: value for key, value in item.metadata.items() if value is not None},
                    "vector": vector,
                }
                for item, h, vector in zip(items[start:stop], hashes[start:stop], vectors[start:stop].tolist())
            ]
            self._call(method, self._name, rows)


def check_server_version(version: str, uri: str) -> None:
    """Raise :class:`ServerVersionError` when a server's ``get_server_version()`` is below the minimum.

    Example:
        >>> check_server_version("v2.3.5", "http://milvus:19530")
        >>> check_server_version("v2.2.16", "http://milvus:19530")
        Traceback (most recent call last):
        ...
        llama_index_lvlm_retriever.errors.ServerVersionError: Milvus at 'http://milvus:19530' is version v2.2.16; ...
    """
    match = re.match(r"v?(\d+)\.(\d+)", version.strip())
    if match is None:
        logger.warning("Milvus at %r reports version %r, which is not major.minor; assuming it is recent enough", uri, version)
        return
    if (int(match.group(1)), int(match.group(2))) < MIN_SERVER_VERSION:
        minimum = ".".join(map(str, MIN_SERVER_VERSION))
        raise ServerVersionError(
            f"Milvus at {uri!r} is version {version}; the Milvus backend needs a server >= {minimum}. Upgrade the "
            "server, or use Milvus Lite (a uri ending in .db) or another backend"
        )


def milvus_expression(filters: MetadataFilters, *, label_present: str = _HAS_LABEL) -> str:
    """A checked ``MetadataFilters`` as a Milvus boolean expression (semantics: ``kb/filters.py``).

    ``label_present``: the expression true when a row has a label (``has_label == true``; a
    collection of an earlier version uses ``label is not null``).
    """
    parts = [
        milvus_expression(f, label_present=label_present) if isinstance(f, MetadataFilters) else _leaf_expression(f, label_present)
        for f in filters.filters
    ]
    condition = kb_filters.condition_of(filters)
    if condition == FilterCondition.AND:
        return " and ".join(f"({p})" for p in parts)
    joined = " or ".join(f"({p})" for p in parts)
    return joined if condition == FilterCondition.OR else f"not ({joined})"


def _leaf_expression(leaf: MetadataFilter, label_present: str) -> str:
    # Each leaf is total (true or false, never null): a comparison with an absent JSON key or a null
    # label is null in Milvus, and "not null" would drop rows our semantics keep.
    key = leaf.key
    if key in kb_filters.ITEM_FIELDS:
        field, present = key, (label_present if key == "label" else "")
    else:
        field = f"metadata[{json.dumps(key)}]"
        present = f"(exists {field})"  # parenthesised: Milvus 2.3 binds "exists" looser than "and"
    operator = FilterOperator(leaf.operator)
    if operator in (FilterOperator.IN, FilterOperator.NIN):
        # Milvus Lite rejects "json_path in [...]": spell it as a disjunction.
        test = " or ".join(f"{field} == {_literal(v)}" for v in leaf.value)
    elif operator == FilterOperator.NE:
        test = f"{field} == {_literal(leaf.value)}"
    else:
        test = f"{field} {operator.value} {_literal(leaf.value)}"
    positive = f"({present} and ({test}))" if present else f"({test})"
    if operator in kb_filters.NEGATIVE_OPERATORS:
        return f"not {positive}"
    return positive


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # double-quoted with backslash escapes, which Milvus parses


__all__ = ["MIN_SERVER_VERSION", "MilvusBackendConfig", "MilvusIndex", "check_server_version", "milvus_expression"]
