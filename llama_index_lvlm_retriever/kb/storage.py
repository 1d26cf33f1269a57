"""On-disk layout of a persisted knowledge base, written atomically as a whole directory.

A KB directory holds::

    manifest.json          format, package version, encoder record (+ probe), dim, counts, index
    items.jsonl            one KBItem per line (KBItem.to_dict), row order = vector order
    vectors.safetensors    tensors "image" and "text", (n, dim) float32, L2-normalised
    image_hashes.json      content hash of every image, row order
    image.faiss            faiss index over the image vectors   (faiss backend only)
    text.faiss             faiss index over the text vectors    (faiss backend only)

With the faiss backend the whole directory is written under a temp name and swapped in. With a
database backend (Milvus, Qdrant) the vectors' searchable copy lives in the database, whose local
store (a Milvus Lite ``.db``, a Qdrant folder) may sit inside the directory and must not be moved
while open; there the three data files carry a generation tag (``items.<gen>.jsonl``, ...), the
manifest names them and is replaced last, atomically, so a reader sees the old or the new
generation, never a mix.

Private module; :class:`~llama_index_lvlm_retriever.kb.KnowledgeBase` is the API.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import KBFormatError
from llama_index_lvlm_retriever.version import __version__

logger = logging.getLogger(__name__)

FORMAT_NAME = "llama-index-lvlm-retriever/knowledge-base"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ITEMS_FILE = "items.jsonl"
VECTORS_FILE = "vectors.safetensors"
HASHES_FILE = "image_hashes.json"
IMAGE_INDEX_FILE = "image.faiss"
TEXT_INDEX_FILE = "text.faiss"
INDEX_FILES = {"image": IMAGE_INDEX_FILE, "text": TEXT_INDEX_FILE}
IMAGE_TENSOR = "image"
TEXT_TENSOR = "text"


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh temp directory next to ``target``; on success it replaces ``target``.

    The new directory is built completely under a hidden temp name in the same parent (so the
    final rename stays on one filesystem), then swapped in: an existing ``target`` is renamed
    aside, the new one renamed in, and the old one deleted. An exception before the swap deletes
    the temp directory and leaves ``target`` untouched; a failed swap puts the old one back.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory; choose a directory path")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise FileExistsError(
            f"{target} is a non-empty directory that is not a knowledge base (no {MANIFEST_FILE}); "
            "refusing to replace it. Choose a new or empty directory."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _fsync_files(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    try:
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.rename(old, target)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_files(folder: Path) -> None:
    # Files written by libraries (faiss, safetensors) are not synced; do it before the rename so a
    # power loss cannot leave the new name pointing at empty files.
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def write_json(path: Path, obj: Any) -> None:
    """Write JSON (UTF-8, indented) and fsync it."""
    with path.open("w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


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
            "(or its write was interrupted); rebuild it with KnowledgeBase.persist."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KBFormatError(f"{path} is not valid JSON ({err}); rebuild the knowledge base") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise KBFormatError(f"{path} is not a knowledge-base manifest (format {FORMAT_NAME!r} expected)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise KBFormatError(
            f"{path} has format version {manifest.get('format_version')!r}; this package reads "
            f"version {FORMAT_VERSION}. Rebuild the knowledge base with this version."
        )
    return manifest


def write_items(path: Path, items: Sequence[KBItem]) -> None:
    """Write items as JSONL (row order), naming any item whose metadata is not JSON-serialisable."""
    with path.open("w", encoding="utf-8") as fh:
        for item in items:
            try:
                line = json.dumps(item.to_dict(), ensure_ascii=False)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"item {item.id!r} cannot be saved: its metadata is not JSON-serialisable ({err}); "
                    "keep metadata to strings, numbers, lists and dicts"
                ) from err
            fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_items(path: Path) -> list[KBItem]:
    """Read items written by :func:`write_items`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise KBFormatError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); rebuild the knowledge base") from err
    items: list[KBItem] = []
    for lineno, line in enumerate(lines, start=1):
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


def read_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(image, text)`` vectors written by :func:`write_vectors`."""
    try:
        tensors = load_file(str(path))
    except SafetensorError as err:
        raise KBFormatError(f"{path} is not a readable safetensors file ({err}); rebuild the knowledge base") from err
    missing = {IMAGE_TENSOR, TEXT_TENSOR} - set(tensors)
    if missing:
        raise KBFormatError(f"{path} lacks tensors {sorted(missing)}; rebuild the knowledge base")
    return tensors[IMAGE_TENSOR], tensors[TEXT_TENSOR]


def data_files(manifest: Mapping[str, Any]) -> dict[str, str]:
    """``{"items", "vectors", "hashes"}`` -> the file names this manifest's data is in."""
    files = manifest.get("files") or {}
    return {
        "items": str(files.get("items", ITEMS_FILE)),
        "vectors": str(files.get("vectors", VECTORS_FILE)),
        "hashes": str(files.get("hashes", HASHES_FILE)),
    }


def require_files(persist_dir: Path, manifest: Mapping[str, Any] | None = None) -> None:
    """Raise naming every data file missing from a KB directory."""
    manifest = manifest or {}
    names = tuple(data_files(manifest).values())
    if (manifest.get("backend") or {}).get("name", "faiss") == "faiss":
        names += (IMAGE_INDEX_FILE, TEXT_INDEX_FILE)
    missing = [name for name in names if not (persist_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{persist_dir} is missing {missing}; the directory is incomplete, rebuild it")


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
) -> None:
    """Write every file of a KB directory into a temp directory, then swap it in atomically."""
    with atomic_directory(target) as tmp:
        write_items(tmp / ITEMS_FILE, items)
        write_vectors(tmp / VECTORS_FILE, image_vectors, text_vectors)
        write_json(tmp / HASHES_FILE, list(image_hashes))
        for name, write in write_indexes.items():
            write(tmp / INDEX_FILES[name])
        write_json(tmp / MANIFEST_FILE, manifest)  # last: its presence marks a complete KB


def write_knowledge_base_in_place(
    target: Path,
    *,
    manifest: dict[str, Any],
    items: Sequence[KBItem],
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    image_hashes: Sequence[str],
    local_store: Path | None = None,
) -> None:
    """Write a database-backed KB directory without moving it (see the module docstring).

    Args:
        target: The KB directory (new, empty, an existing KB, or holding only ``local_store``).
        manifest: The manifest; its ``files`` entry is set here.
        items: The pairs, row order.
        image_vectors: ``(n, dim)`` image vectors.
        text_vectors: ``(n, dim)`` text vectors.
        image_hashes: Content hashes, row order.
        local_store: The backend's embedded store when it lies inside ``target`` (left alone).
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory; choose a directory path")
    if target.is_dir() and not (target / MANIFEST_FILE).is_file():
        foreign = [p.name for p in target.iterdir() if local_store is None or p.resolve() != Path(local_store).resolve()]
        if foreign:
            raise FileExistsError(
                f"{target} is a non-empty directory that is not a knowledge base (no {MANIFEST_FILE}; holds "
                f"{sorted(foreign)[:5]}); refusing to write into it. Choose a new or empty directory."
            )
    target.mkdir(parents=True, exist_ok=True)
    generation = uuid.uuid4().hex[:8]
    files = {
        "items": f"items.{generation}.jsonl",
        "vectors": f"vectors.{generation}.safetensors",
        "hashes": f"image_hashes.{generation}.json",
    }
    written = [target / name for name in files.values()]
    try:
        write_items(target / files["items"], items)
        write_vectors(target / files["vectors"], image_vectors, text_vectors)
        _fsync_files_named(target, [files["vectors"]])
        write_json(target / files["hashes"], list(image_hashes))
        tmp_manifest = target / f".{MANIFEST_FILE}.tmp-{generation}"
        written.append(tmp_manifest)
        write_json(tmp_manifest, {**manifest, "files": files})
        os.replace(tmp_manifest, target / MANIFEST_FILE)  # the commit point: old or new generation
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    _fsync_dir(target)
    stale = [
        p for p in target.iterdir()
        if p.is_file() and p.name not in files.values() and p.name != MANIFEST_FILE and _is_data_file(p.name)
    ]
    for path in stale:
        path.unlink(missing_ok=True)


def _is_data_file(name: str) -> bool:
    return any(
        name == default or (name.startswith(default.split(".")[0] + ".") and name.endswith("." + default.rsplit(".", 1)[1]))
        for default in (ITEMS_FILE, VECTORS_FILE, HASHES_FILE, IMAGE_INDEX_FILE, TEXT_INDEX_FILE)
    )


def _fsync_files_named(folder: Path, names: Sequence[str]) -> None:
    for name in names:
        with (folder / name).open("rb") as fh:
            os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable (POSIX); not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_knowledge_base(
    persist_dir: Path, manifest: dict[str, Any]
) -> tuple[list[KBItem], np.ndarray, np.ndarray, list[str]]:
    """Read ``(items, image vectors, text vectors, image hashes)`` of a KB directory and check counts."""
    files = data_files(manifest)
    items = read_items(persist_dir / files["items"])
    image, text = read_vectors(persist_dir / files["vectors"])
    hashes = _read_hashes(persist_dir / files["hashes"])
    if len(items) != manifest.get("count") or not isinstance(hashes, list):
        raise KBFormatError(
            f"{persist_dir}: manifest says {manifest.get('count')} items but {ITEMS_FILE} has "
            f"{len(items)}; the directory is inconsistent, rebuild it"
        )
    return items, image, text, [str(h) for h in hashes]
