"""Persisting and reopening a knowledge base on its backend (faiss files or a vector database).

Private module; :meth:`KnowledgeBase.persist
<llama_index_lvlm_retriever.kb.knowledge_base.KnowledgeBase.persist>` and
:meth:`~llama_index_lvlm_retriever.kb.knowledge_base.KnowledgeBase.from_persist_dir` are the API.
The folder layout and the versioned, checksummed writes are ``storage``'s; this module records the
backend's connection settings in the manifest, and on reopen checks encoder, files and the database
collections against each other, reading one consistent version of the folder.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.bridge.pydantic import ValidationError
from llama_index.core.embeddings import MultiModalEmbedding

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import KBFormatError
from llama_index_lvlm_retriever.kb import encoding as enc
from llama_index_lvlm_retriever.kb import storage as store
from llama_index_lvlm_retriever.kb._manifest_checks import check_kb_manifest
from llama_index_lvlm_retriever.kb.backends import (
    BACKENDS,
    BackendConfig,
    FaissBackendConfig,
    FaissIndex,
    VectorBackend,
)
from llama_index_lvlm_retriever.kb.types import (
    MODALITIES,
    BackendIdentity,
    EncoderMismatchError,
    IndexConfig,
)
from llama_index_lvlm_retriever.storage.versioned import load_consistent

logger = logging.getLogger(__name__)


@dataclass
class LoadedKnowledgeBase:
    """Everything :func:`load_knowledge_base` read, ready for ``KnowledgeBase._setup``."""

    index_config: IndexConfig
    encoder: dict[str, Any]
    items: list[KBItem]
    image: np.ndarray
    text: np.ndarray
    hashes: list[str]
    indexes: dict[str, VectorBackend]
    backend: BackendConfig
    kb_uid: str
    version: store.StoreVersion


def persist_knowledge_base(
    persist_dir: Path,
    *,
    encoder: dict[str, Any],
    index_config: IndexConfig,
    backend: BackendConfig,
    kb_uid: str,
    items: Sequence[KBItem],
    vectors: Mapping[str, np.ndarray],
    hashes: Sequence[str],
    indexes: Mapping[str, VectorBackend],
    expect: store.StoreVersion | None = None,
    lock_held: bool = False,
) -> store.StoreVersion:
    """Write a new version of a KB folder and commit it.

    The faiss backend also writes its IVF/HNSW index files; a flat index has none (it is rebuilt
    from the stored vectors on load, so each vector is on disk once).
    ``expect``/``lock_held``: see :func:`~llama_index_lvlm_retriever.kb.storage.write_knowledge_base`.
    Returns the version written.
    """
    is_faiss = isinstance(backend, FaissBackendConfig)
    manifest = store.make_manifest(
        encoder=encoder,
        dim=int(vectors["image"].shape[1]),
        items=items,
        index=index_config.model_dump(),
        backend=backend.model_dump() if is_faiss else backend.for_manifest(persist_dir),
        kb_uid=kb_uid,
    )
    data: dict[str, Any] = {
        "manifest": manifest,
        "items": items,
        "image_vectors": vectors["image"],
        "text_vectors": vectors["text"],
        "image_hashes": hashes,
        "expect": expect,
        "lock_held": lock_held,
    }
    if is_faiss:
        writers = {} if index_config.kind == "flat" else {name: indexes[name].write for name in MODALITIES}
        record = store.write_knowledge_base(persist_dir, **data, write_indexes=writers)
    else:
        local = backend.uri if backend.name == "milvus" else backend.path
        local_store = Path(local) if local is not None and backend.is_local else None
        record = store.write_knowledge_base(persist_dir, **data, write_indexes={}, local_store=local_store)
    return store.StoreVersion.of(persist_dir, record)


def load_knowledge_base(
    persist_dir: Path, embed_model: MultiModalEmbedding, backend: BackendConfig | None
) -> LoadedKnowledgeBase:
    """Read a KB folder and attach its backend, checking encoder, files, checksums and collections.

    The folder is read as one version: the files the manifest names, each checked against its
    sha256; a version replaced by a concurrent writer while we read is read again.
    """
    if not persist_dir.is_dir():
        store.read_manifest(persist_dir)  # raises the "not found" error
    return load_consistent(persist_dir / store.MANIFEST_FILE, lambda: _load_once(persist_dir, embed_model, backend))


def _load_once(
    persist_dir: Path, embed_model: MultiModalEmbedding, backend: BackendConfig | None
) -> LoadedKnowledgeBase:
    manifest = store.read_manifest(persist_dir)
    check_kb_manifest(manifest, persist_dir)
    backend = backend_from(manifest.get("backend") or {"name": "faiss"}, persist_dir, backend)
    store.require_files(persist_dir, manifest)
    encoder = dict(manifest.get("encoder") or {})
    reason = enc.encoder_mismatch(encoder, embed_model)
    if reason is not None:
        given = enc.describe_encoder(embed_model, with_probe=False)
        raise EncoderMismatchError(
            f"knowledge base {persist_dir} was built with {enc.encoder_label(encoder)}, but the "
            f"given embed model is {enc.encoder_label(given)} ({reason}). Load it with the encoder "
            "that built it, or rebuild the knowledge base with this one."
        )
    config = index_config_from(manifest.get("index") or {}, persist_dir)
    items, image, text, hashes = store.read_knowledge_base(persist_dir, manifest)
    kb_uid = str(manifest.get("kb_uid") or uuid.uuid4().hex)
    if isinstance(backend, FaissBackendConfig) and config.kind == "flat":
        # Rebuilt from the stored vectors, sharing them (a flat index file of an older version is not read).
        vectors = {"image": image, "text": text}
        indexes: dict[str, VectorBackend] = {
            name: FaissIndex.from_vectors(config, vectors[name], items, hashes) for name in MODALITIES
        }
    elif isinstance(backend, FaissBackendConfig):
        indexes = {
            name: FaissIndex.from_bytes(
                store.read_file(persist_dir, manifest, name), store.file_path(persist_dir, manifest, name), config, items, hashes
            )
            for name in MODALITIES
        }
    else:
        identity = BackendIdentity(
            kb_uid=kb_uid,
            dim=int(manifest.get("dim") or 0),
            encoder=enc.encoder_digest(encoder),
            encoder_label=enc.encoder_label(encoder),
        )
        indexes = {name: backend.reopen(name, config, identity) for name in MODALITIES}
        for name in MODALITIES:
            stored = indexes[name].ntotal
            if stored != len(items):
                raise KBFormatError(
                    f"{backend.describe()}: the {name} collection holds {stored} rows but {persist_dir} lists "
                    f"{len(items)} items; it was changed (add/delete/upsert) without persisting this folder "
                    "afterwards, or by another process. Persist from the process that changed it, or rebuild."
                )
    version = store.StoreVersion.of(persist_dir, manifest)
    return LoadedKnowledgeBase(config, encoder, items, image, text, list(hashes), indexes, backend, kb_uid, version)


def backend_from(recorded: dict[str, Any], persist_dir: Path, override: BackendConfig | None) -> BackendConfig:
    """The backend config recorded in a manifest (local paths resolved), or the caller's override."""
    name = str(recorded.get("name", "faiss"))
    if name not in BACKENDS:
        raise KBFormatError(
            f"{persist_dir}: the manifest names vector backend {name!r}, which this version does not know "
            f"(known: {sorted(BACKENDS)}); upgrade the package or rebuild the knowledge base"
        )
    if override is not None:
        if override.name != name:
            raise ValueError(
                f"{persist_dir} was built on the {name!r} backend; backend= must be a {name} config too, got {override.name!r}"
            )
        return override
    try:
        config = BACKENDS[name](**recorded)
    except ValidationError as err:
        raise KBFormatError(f"{persist_dir}: the manifest's backend settings are invalid ({_brief(err)}); rebuild the knowledge base") from err
    return config if isinstance(config, FaissBackendConfig) else config.resolved(persist_dir)


def index_config_from(recorded: dict[str, Any], persist_dir: Path) -> IndexConfig:
    """The manifest's index settings; unknown keys (another version's) are warned about and dropped."""
    unknown = sorted(set(recorded) - set(IndexConfig.model_fields))
    if unknown:
        logger.warning("%s: ignoring unknown index settings %s (written by another version?)", persist_dir, unknown)
    try:
        return IndexConfig(**{k: v for k, v in recorded.items() if k not in unknown})
    except ValidationError as err:
        raise KBFormatError(f"{persist_dir}: the manifest's index settings are invalid ({_brief(err)}); rebuild the knowledge base") from err


def _brief(err: ValidationError) -> str:
    # One line per pydantic error is too long for a message: field and reason of each.
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_url=False))


__all__ = ["LoadedKnowledgeBase", "backend_from", "index_config_from", "load_knowledge_base", "persist_knowledge_base"]
