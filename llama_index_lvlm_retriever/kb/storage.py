"""On-disk layout of a persisted knowledge base: versioned data files and a manifest written last.

A KB directory holds::

    manifest.json                format, package version, encoder record (+ probe, dtype), dim,
                                 counts, index, backend, ``revision`` (1, 2, ... one per write), and
                                 ``files``: name + sha256 + size of each data file below (the commit
                                 point of a write)
    items.<gen>.jsonl            one KBItem per line (KBItem.to_dict), row order = vector order
    vectors.<gen>.safetensors    tensors "image" and "text", (n, dim) float32, L2-normalised
    image_hashes.<gen>.json      content hash of every image, row order
    image.<gen>.faiss            faiss index over the image vectors   (faiss backend, IVF/HNSW only)
    text.<gen>.faiss             faiss index over the text vectors    (faiss backend, IVF/HNSW only)

A flat index has no file: it is rebuilt from (and shares) the vectors on load, so each vector is
stored once; a flat KB written by an earlier version with index files still loads (they are not read).

``<gen>`` is a fresh tag per write. Every backend is written the same way, in place (see
:mod:`~llama_index_lvlm_retriever.storage.versioned`): the new files under new names, then the manifest
replaced atomically, then the previous version's files and any leftovers of killed writes deleted,
all under the folder's write lock. The folder therefore always holds one complete version, a reader
never mixes two, and every file is checked against its sha256 on load. A write may be made
conditional on the folder still holding the version its data was loaded from (``expect=`` a
:func:`manifest_digest`): a compare-and-swap under the lock, so a second writer that loaded the same
version fails with :class:`~llama_index_lvlm_retriever.errors.ConcurrentUpdateError` instead of
silently dropping the first writer's items. A database backend's local
store (a Milvus Lite ``.db``, a Qdrant folder) may sit inside the directory and is never moved.
Format 1 directories (fixed names ``items.jsonl``, ..., no checksums) still load.

Private module; :class:`~llama_index_lvlm_retriever.kb.KnowledgeBase` is the API.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save_file

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import ConcurrentUpdateError, KBFormatError
from llama_index_lvlm_retriever.storage.files import naming_path
from llama_index_lvlm_retriever.storage.locking import LOCK_FILE, folder_lock
from llama_index_lvlm_retriever.storage.versioned import (
    VersionedWriter,
    file_entry,
    is_tagged,
    json_record,
    read_checked,
)
from llama_index_lvlm_retriever.version import __version__

logger = logging.getLogger(__name__)

FORMAT_NAME = "llama-index-lvlm-retriever/knowledge-base"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
"""1: fixed file names, no checksums (faiss) or plain generation names (databases); 2: ``files`` with sha256."""
MANIFEST_FILE = "manifest.json"
ITEMS_FILE = "items.jsonl"
VECTORS_FILE = "vectors.safetensors"
HASHES_FILE = "image_hashes.json"
IMAGE_INDEX_FILE = "image.faiss"
TEXT_INDEX_FILE = "text.faiss"
INDEX_FILES = {"image": IMAGE_INDEX_FILE, "text": TEXT_INDEX_FILE}
DATA_FILES = {"items": ITEMS_FILE, "vectors": VECTORS_FILE, "hashes": HASHES_FILE}
"""Manifest ``files`` key -> default (format 1) file name; index files use their modality as key."""
IMAGE_TENSOR = "image"
TEXT_TENSOR = "text"


def is_data_file(name: str) -> bool:
    """Whether ``name`` is one of a KB's data files (any version)."""
    return any(is_tagged(name, default) for default in (*DATA_FILES.values(), *INDEX_FILES.values()))


def remove_legacy_siblings(target: Path) -> None:
    """Delete ``.<name>.tmp-*`` / ``.<name>.old-*`` folders that format-1 writes left when killed."""
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for path in target.parent.glob(pattern):
            if path.is_dir():
                logger.info("removing %s, left by an interrupted write of %s", path, target)
                shutil.rmtree(path, ignore_errors=True)


def read_manifest(persist_dir: str | Path) -> dict[str, Any]:
    """Read and check the manifest of a KB directory."""
    persist_dir = Path(persist_dir)
    if not persist_dir.is_dir():
        raise FileNotFoundError(
            f"knowledge-base directory not found: {persist_dir}. Build one with "
            "KnowledgeBase.build(...).persist(dir) or `lvlm-retriever build-kb`."
        )
    path = persist_dir / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{persist_dir} has no {MANIFEST_FILE}, so it is not a knowledge-base directory "
            "(or its first write was interrupted); rebuild it with KnowledgeBase.persist."
        )
    try:
        with naming_path("cannot read", path):
            manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KBFormatError(f"{path} is not valid UTF-8 JSON ({err}); rebuild the knowledge base") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise KBFormatError(f"{path} is not a knowledge-base manifest (format {FORMAT_NAME!r} expected)")
    if manifest.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise KBFormatError(
            f"{path} has format version {manifest.get('format_version')!r}; this package reads "
            f"versions {list(READABLE_FORMAT_VERSIONS)}. Rebuild the knowledge base with this version."
        )
    return manifest


@dataclass(frozen=True)
class StoreVersion:
    """Which version of a KB folder a knowledge base was loaded from (or last wrote).

    Args:
        folder: The KB folder, resolved.
        digest: :func:`manifest_digest` of its manifest then.
        revision: The manifest's ``revision`` then.
    """

    folder: Path
    digest: str
    revision: int

    @classmethod
    def of(cls, folder: Path, manifest: Mapping[str, Any]) -> StoreVersion:
        """The version a manifest (as read back from JSON) stands for."""
        return cls(Path(folder).resolve(), manifest_digest(manifest), manifest_revision(manifest))

    def is_current(self) -> bool:
        """Whether the folder still holds this version (read without the lock: a hint, not a guarantee)."""
        return (current := _current_manifest(self.folder)) is not None and manifest_digest(current) == self.digest

    def check_current(self) -> None:
        """Raise :class:`ConcurrentUpdateError` if the folder moved on to another version."""
        if not self.is_current():
            raise ConcurrentUpdateError(self.folder, self.revision, manifest_revision(_current_manifest(self.folder)))


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of a manifest's content (key order ignored): the version token of a compare-and-swap write."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def manifest_revision(manifest: Mapping[str, Any] | None) -> int:
    """The manifest's write counter (0 for none, or for manifests written before revisions existed)."""
    if manifest is None:
        return 0
    revision = manifest.get("revision", 0)
    return revision if isinstance(revision, int) and not isinstance(revision, bool) else 0


def items_bytes(items: Sequence[KBItem]) -> bytes:
    """Items as JSONL (row order), naming any item whose metadata is not JSON-serialisable."""
    lines = []
    for item in items:
        try:
            lines.append(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"item {item.id!r} cannot be saved: its metadata is not JSON-serialisable ({err}); "
                "keep metadata to strings, numbers, lists and dicts"
            ) from err
    return "".join(lines).encode("utf-8")


def parse_items(data: bytes, path: Path) -> list[KBItem]:
    """Read items written by :func:`items_bytes`; errors name the file and line."""
    items: list[KBItem] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise KBFormatError(f"{path} is not UTF-8 ({err}); rebuild the knowledge base") from err
    for lineno, line in enumerate(io.StringIO(text), start=1):
        if line.strip():
            try:
                items.append(KBItem.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
                # A line that parses but is not an item object (a list, a number) fails in from_dict.
                raise KBFormatError(f"{path}:{lineno}: corrupt item record ({err}); rebuild the knowledge base") from err
    return items


def _read_hashes(path: Path) -> list[Any]:
    """Read ``image_hashes.json``, naming the file when it is not a JSON list (the leakage guard needs it)."""
    try:
        hashes = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KBFormatError(f"{path} is not valid JSON ({err}); rebuild the knowledge base") from err
    if not isinstance(hashes, list):
        raise KBFormatError(f"{path} must hold a JSON list of image hashes, got {type(hashes).__name__}; rebuild the knowledge base")
    return hashes


def write_vectors(path: Path, image: np.ndarray, text: np.ndarray) -> None:
    """Write both vector matrices into one safetensors file."""
    save_file(
        {IMAGE_TENSOR: np.ascontiguousarray(image, np.float32), TEXT_TENSOR: np.ascontiguousarray(text, np.float32)},
        str(path),
        metadata={"format": FORMAT_NAME},
    )


def parse_vectors(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(image, text)`` vectors written by :func:`write_vectors`.

    float32 tensors come back as read-only views into ``data`` (no copy: a reload holds each vector
    once, not the file's bytes plus a parsed copy); anything else goes through safetensors.
    """
    views = _float32_views(data)
    if views is not None and {IMAGE_TENSOR, TEXT_TENSOR} <= set(views):
        return views[IMAGE_TENSOR], views[TEXT_TENSOR]
    try:
        tensors = load_safetensors(data)
    except Exception as err:  # safetensors raises its own SafetensorError (not exported) on bad bytes
        raise KBFormatError(f"{path} is not a readable safetensors file ({err}); rebuild the knowledge base") from err
    missing = {IMAGE_TENSOR, TEXT_TENSOR} - set(tensors)
    if missing:
        raise KBFormatError(f"{path} lacks tensors {sorted(missing)}; rebuild the knowledge base")
    return tensors[IMAGE_TENSOR], tensors[TEXT_TENSOR]


def _float32_views(data: bytes) -> dict[str, np.ndarray] | None:
    """The 2-d F32 tensors of a safetensors file as views into its bytes; ``None`` if any check fails.

    The format: an 8-byte little-endian header length, a JSON header of ``name -> {dtype, shape,
    data_offsets}``, then the data. Anything unexpected returns ``None`` and the caller falls back
    to safetensors itself (which then reports what is wrong).
    """
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        start = 8 + length
        out = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = (int(v) for v in entry["data_offsets"])
            shape = [int(v) for v in entry["shape"]]
            if entry["dtype"] != "F32" or len(shape) != 2 or end - begin != 4 * shape[0] * shape[1] or start + end > len(data):
                return None
            out[name] = np.frombuffer(data, dtype="<f4", count=shape[0] * shape[1], offset=start + begin).reshape(shape)
        return out
    except (struct.error, ValueError, KeyError, TypeError, AttributeError):
        return None


def make_manifest(
    *,
    encoder: dict[str, Any],
    dim: int,
    items: Sequence[KBItem],
    index: dict[str, Any],
    backend: dict[str, Any] | None = None,
    kb_uid: str | None = None,
) -> dict[str, Any]:
    """The manifest of a knowledge base: format, package version, encoder record, dim, counts, index."""
    sources: dict[str, int] = {}
    for item in items:
        sources[item.source] = sources.get(item.source, 0) + 1
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "encoder": encoder,
        "dim": dim,
        "count": len(items),
        "counts": {"items": len(items), "sources": sources},
        "index": index,
        "backend": backend or {"name": "faiss"},
        "kb_uid": kb_uid,
    }


def write_knowledge_base(
    target: Path,
    *,
    manifest: dict[str, Any],
    items: Sequence[KBItem],
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    image_hashes: Sequence[str],
    write_indexes: Mapping[str, Callable[[Path], None]],
    local_store: Path | None = None,
    expect: StoreVersion | None = None,
    lock_held: bool = False,
) -> dict[str, Any]:
    """Write a new version of a KB directory in place and commit it (see the module docstring).

    Args:
        target: The KB directory (new, empty, an existing KB, or holding only ``local_store``).
        manifest: The manifest; its ``files`` entry is set here.
        items: The pairs, row order.
        image_vectors: ``(n, dim)`` image vectors.
        text_vectors: ``(n, dim)`` text vectors.
        image_hashes: Content hashes, row order.
        write_indexes: Modality -> writer of its index file (faiss); empty for database backends.
        local_store: The backend's embedded store when it lies inside ``target`` (left alone).
        expect: The version the data was loaded from: write only if ``target`` still holds it
            (``None``: replace whatever it holds).
        lock_held: The caller already holds ``target``'s lock (``KnowledgeBase.updating``).

    Returns:
        The manifest as written (its ``revision`` one more than the folder's previous one).

    Raises:
        StoreLockedError: Another process is writing ``target``.
        ConcurrentUpdateError: ``expect`` is given and ``target`` holds another version now.
        FileExistsError: ``target`` is a non-empty directory that is not a knowledge base.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory; choose a directory path")
    _refuse_foreign(target, local_store)
    created = not target.exists()
    payload = items_bytes(items)  # fail on bad metadata before touching the disk
    with contextlib.nullcontext() if lock_held else folder_lock(target):
        current = _current_manifest(target)
        if expect is not None and (current is None or manifest_digest(current) != expect.digest):
            raise ConcurrentUpdateError(target, expect.revision, manifest_revision(current))
        manifest = {**manifest, "revision": manifest_revision(current) + 1}
        writer = VersionedWriter(target, MANIFEST_FILE, owns=is_data_file)
        try:
            path = writer.path("items", ITEMS_FILE)
            with naming_path("cannot write", path):
                _write_bytes(path, payload)
            path = writer.path("vectors", VECTORS_FILE)
            with naming_path("cannot write", path):
                write_vectors(path, image_vectors, text_vectors)
            path = writer.path("hashes", HASHES_FILE)
            with naming_path("cannot write", path):
                _write_bytes(path, json_record(list(image_hashes)))
            for name, write in write_indexes.items():
                path = writer.path(name, INDEX_FILES[name])
                with naming_path("cannot write", path):
                    write(path)
            record = writer.commit(manifest, json_record)
        except BaseException:
            writer.abort()
            if created:  # a first write that failed leaves no empty folder behind
                (target / LOCK_FILE).unlink(missing_ok=True)
                _rmdir_if_empty(target)
            raise
    remove_legacy_siblings(target)
    return json.loads(json_record(record))  # as a reader reads it back (tuples as lists), for StoreVersion.of


def _current_manifest(target: Path) -> dict[str, Any] | None:
    """The manifest ``target`` holds now (read under its lock), or ``None`` for a new folder."""
    if not (target / MANIFEST_FILE).is_file():
        return None
    try:
        return read_manifest(target)
    except KBFormatError:
        return None  # an unreadable manifest is replaced, as before; a compare-and-swap then fails


def _refuse_foreign(target: Path, local_store: Path | None) -> None:
    if not target.is_dir() or (target / MANIFEST_FILE).is_file():
        return
    store = Path(local_store).resolve() if local_store is not None else None
    foreign = [
        p.name for p in target.iterdir()
        if p.name != LOCK_FILE and not is_data_file(p.name) and not p.name.startswith(".")
        and (store is None or p.resolve() != store)
    ]
    if foreign:
        raise FileExistsError(
            f"{target} is a non-empty directory that is not a knowledge base (no {MANIFEST_FILE}; holds "
            f"{sorted(foreign)[:5]}); refusing to write into it. Choose a new or empty directory."
        )


def _write_bytes(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:  # a fresh tagged name: plain open, umask-honouring mode
        fh.write(data)


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def require_files(persist_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Raise naming every data file missing from a KB directory."""
    keys = dict(DATA_FILES)
    faiss_backend = (manifest.get("backend") or {}).get("name", "faiss") == "faiss"
    if faiss_backend and (manifest.get("index") or {}).get("kind", "flat") != "flat":
        keys.update(INDEX_FILES)  # a flat index has no file: it is rebuilt from the vectors
    names = [file_entry(manifest, key, default)[0] for key, default in keys.items()]
    missing = [name for name in names if not (persist_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{persist_dir} is missing {missing}; the directory is incomplete, rebuild it")


def read_file(persist_dir: Path, manifest: Mapping[str, Any], key: str) -> bytes:
    """The checked bytes of the manifest's ``key`` file (``items``, ``vectors``, ``hashes``, ``image``, ``text``)."""
    default = {**DATA_FILES, **INDEX_FILES}[key]
    return read_checked(persist_dir, manifest, key, default, manifest_name=MANIFEST_FILE)


def file_path(persist_dir: Path, manifest: Mapping[str, Any], key: str) -> Path:
    """Path of the manifest's ``key`` file, for messages."""
    return persist_dir / file_entry(manifest, key, {**DATA_FILES, **INDEX_FILES}[key])[0]


def read_knowledge_base(
    persist_dir: Path, manifest: dict[str, Any]
) -> tuple[list[KBItem], np.ndarray, np.ndarray, list[str]]:
    """Read ``(items, image vectors, text vectors, image hashes)`` of a KB directory and check counts."""
    items = parse_items(read_file(persist_dir, manifest, "items"), file_path(persist_dir, manifest, "items"))
    image, text = parse_vectors(read_file(persist_dir, manifest, "vectors"), file_path(persist_dir, manifest, "vectors"))
    hashes_path = file_path(persist_dir, manifest, "hashes")
    try:
        hashes = json.loads(read_file(persist_dir, manifest, "hashes").decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KBFormatError(f"{hashes_path} is not valid UTF-8 JSON ({err}); rebuild the knowledge base") from err
    if not isinstance(hashes, list) or len(hashes) != len(items):
        raise KBFormatError(f"{hashes_path} must list one image hash per item ({len(items)}); rebuild the knowledge base")
    if len(items) != manifest.get("count") or image.shape[0] != len(items) or text.shape[0] != len(items):
        raise KBFormatError(
            f"{persist_dir}: manifest says {manifest.get('count')} items but the files hold {len(items)} items and "
            f"{image.shape[0]}/{text.shape[0]} image/text vectors; the directory is inconsistent, rebuild it"
        )
    _check_finite(file_path(persist_dir, manifest, "vectors"), items, {"image": image, "text": text})
    return items, image, text, [str(h) for h in hashes]


def _check_finite(path: Path, items: Sequence[KBItem], vectors: Mapping[str, np.ndarray]) -> None:
    """Refuse NaN/inf vectors even in a file that matches its checksum (written corrupt, or resealed).

    faiss compares NaN to nothing: such a row would never be found, and a NaN in a flat index can
    poison every distance computed against it.
    """
    for name, matrix in vectors.items():
        bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))  # (n_bad,) row indices
        if bad.size:
            first = int(bad[0])
            raise KBFormatError(
                f"{path}: the {name} vector of item {items[first].id!r} (row {first}) has NaN or infinite values "
                f"({bad.size} of {len(items)} rows), although the file matches its recorded checksum; rebuild the "
                "knowledge base (build-kb), or re-add those items"
            )
