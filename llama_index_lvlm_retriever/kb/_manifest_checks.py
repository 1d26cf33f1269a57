"""Shape checks of a knowledge-base manifest, before any field of it is used.

``read_manifest`` checks the format name and version; this checks that every field the loader
reads has the JSON type it expects, and that file names stay inside the KB folder. A hand-edited or
foreign manifest then fails with one :class:`~llama_index_lvlm_retriever.errors.KBFormatError`
naming the file and the field, instead of an ``AttributeError`` deep in the encoder check.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from llama_index_lvlm_retriever.errors import KBFormatError

# Fields that, when present, must be JSON objects (the loader calls .get on them).
_OBJECT_FIELDS = ("encoder", "index", "backend", "files")
# Fields that, when present, must be integers (counts, vector size).
_INT_FIELDS = ("count", "dim")


def check_kb_manifest(manifest: Mapping[str, Any], persist_dir: Path, manifest_name: str = "manifest.json") -> None:
    """Raise :class:`KBFormatError` if a field of ``manifest`` has the wrong type or names a path outside.

    Args:
        manifest: The parsed manifest (format and version already checked).
        persist_dir: The KB folder, for messages and for the containment check of file names.
        manifest_name: The manifest's file name, for messages.

    Raises:
        KBFormatError: A field is not of its expected JSON type, the encoder's probe is not a pair
            of number lists, or a data file name is absolute or climbs out of the folder.
    """
    where = persist_dir / manifest_name
    fix = "restore the file or rebuild the knowledge base"
    for field in _OBJECT_FIELDS:
        value = manifest.get(field)
        if value is not None and not isinstance(value, Mapping):
            raise KBFormatError(f"{where}: field {field!r} must be a JSON object, got {type(value).__name__}; {fix}")
    for field in _INT_FIELDS:
        value = manifest.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise KBFormatError(f"{where}: field {field!r} must be a non-negative integer, got {value!r}; {fix}")
    backend = manifest.get("backend") or {}
    if not isinstance(backend.get("name", "faiss"), str):
        raise KBFormatError(f"{where}: backend 'name' must be a string, got {backend.get('name')!r}; {fix}")
    probe = (manifest.get("encoder") or {}).get("probe")
    if probe is not None and not _is_probe(probe):
        raise KBFormatError(f"{where}: encoder 'probe' must map 'image'/'text_embedding' to lists of numbers; {fix}")
    for key, entry in (manifest.get("files") or {}).items():
        # Format 2: {"name", "sha256", "size"}; format 1 and database backends: a plain name.
        name = entry.get("name") if isinstance(entry, Mapping) else entry
        if not isinstance(name, str) or not _is_plain_name(name):
            # A name such as "../other/vectors.safetensors" would read data from outside the folder.
            raise KBFormatError(f"{where}: files[{key!r}] = {entry!r} is not a file name inside {persist_dir}; {fix}")
        if isinstance(entry, Mapping) and not (
            isinstance(entry.get("sha256"), str) and isinstance(entry.get("size", 0), int)
        ):
            raise KBFormatError(f"{where}: files[{key!r}] = {entry!r} needs a 'sha256' string and an integer 'size'; {fix}")


def _is_probe(probe: Any) -> bool:
    if not isinstance(probe, Mapping):
        return False
    for key in ("image", "text_embedding"):
        value = probe.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            return False
    return True


def _is_plain_name(name: str) -> bool:
    parts = PurePath(name).parts
    return bool(name) and not PurePath(name).is_absolute() and ".." not in parts and "\\" not in name


__all__ = ["check_kb_manifest"]
