"""Versioned store folders: per-write file names, a manifest written last that lists them with sha256.

A write stages every data file of the new version under a name that carries a fresh generation tag
(``items.<gen>.jsonl``), then replaces the manifest atomically (the commit point) with one that names
those files and their SHA-256, and only then deletes the files of older versions and the leftovers
of killed writes. Hence:

- the folder always holds one complete, loadable version (the one its manifest names): a write
  killed at any point leaves the previous manifest and the previous files untouched;
- a reader takes the file names from the one manifest it read, so it can never mix the items of one
  write with the vectors of another; if a concurrent writer deletes those files under it, the
  manifest has changed and :func:`load_consistent` simply reads the new version;
- every file is checked against its recorded SHA-256 on load (:func:`read_checked`), so a modified,
  truncated or swapped file (``image`` index for ``text`` index) raises
  :class:`ChecksumMismatchError` naming it instead of giving silently different results.

Writers hold :func:`~llama_index_lvlm_retriever.storage.locking.folder_lock`; readers take no lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from llama_index_lvlm_retriever.errors import (
    ArtifactError,
    ChecksumMismatchError,
    MissingStoreFileError,
)
from llama_index_lvlm_retriever.storage.files import atomic_write_bytes, honour_umask, naming_path
from llama_index_lvlm_retriever.storage.locking import LOCK_FILE

logger = logging.getLogger(__name__)

FILES_KEY = "files"
"""Manifest key: logical file key -> ``{"name", "sha256", "size"}``."""
_GENERATION_HEX = 12
# atomic_write_bytes temps and old manifest temps; and ".tmpXXXXXX", the temp safetensors' save_file
# (Rust's tempfile crate) writes next to its target and renames: a kill mid-save leaves it behind.
_TEMP_LEFTOVER = re.compile(r"^(\..+\.tmp(-[0-9a-f]+)?|\.tmp[A-Za-z0-9]{6})$")
_LOAD_ATTEMPTS = 50

T = TypeVar("T")


def tagged_name(filename: str, generation: str) -> str:
    """``items.jsonl`` -> ``items.<generation>.jsonl`` (the tag goes before the first suffix)."""
    stem, dot, ext = filename.partition(".")
    return f"{stem}.{generation}{dot}{ext}"


def is_tagged(name: str, filename: str) -> bool:
    """Whether ``name`` is ``filename`` itself or a generation-tagged copy of it."""
    stem, dot, ext = filename.partition(".")
    pattern = rf"{re.escape(stem)}(\.[0-9a-f]+)?{re.escape(dot + ext)}"
    return re.fullmatch(pattern, name) is not None


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, streamed (vectors files can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (POSIX); not every platform can open a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class VersionedWriter:
    """Stages the files of one new version of a folder and commits them by replacing its manifest.

    Use under :func:`~llama_index_lvlm_retriever.storage.locking.folder_lock`; :meth:`abort` (or an
    exception before :meth:`commit`) leaves the folder's current version as it was.

    Args:
        folder: The store folder (exists).
        manifest_name: The manifest's file name (``manifest.json``, ``config.json``).
        owns: Whether a file name belongs to this store's data (old versions' files are deleted
            after a commit only when it says so; foreign files are left alone).
    """

    def __init__(self, folder: Path, manifest_name: str, owns: Callable[[str], bool]) -> None:
        self.folder = Path(folder)
        self.manifest_name = manifest_name
        self.generation = uuid.uuid4().hex[:_GENERATION_HEX]
        self._owns = owns
        self._staged: dict[str, str] = {}

    def path(self, key: str, filename: str) -> Path:
        """Where to write the new version's ``filename`` (recorded in the manifest under ``key``)."""
        name = tagged_name(filename, self.generation)
        self._staged[key] = name
        return self.folder / name

    def commit(self, manifest: Mapping[str, Any], encode: Callable[[Any], bytes]) -> dict[str, Any]:
        """Hash and fsync the staged files, replace the manifest (the commit point), clean up.

        Returns:
            The manifest as written (with its ``files`` entry).
        """
        files = {}
        for key, name in self._staged.items():
            path = self.folder / name
            with naming_path("cannot write", path):  # fsync reports a full disk or an I/O error late
                with path.open("rb") as fh:
                    os.fsync(fh.fileno())  # libraries (faiss, safetensors) do not sync what they write
                honour_umask(path)  # safetensors' save_file creates 0600 files whatever the umask
                files[key] = {"name": name, "sha256": sha256_file(path), "size": path.stat().st_size}
        record = {**manifest, FILES_KEY: files}
        atomic_write_bytes(self.folder / self.manifest_name, encode(record))
        fsync_dir(self.folder)
        remove_unreferenced(self.folder, keep={*self._staged.values(), self.manifest_name}, owns=self._owns)
        return record

    def abort(self) -> None:
        """Delete what this write staged."""
        for name in self._staged.values():
            (self.folder / name).unlink(missing_ok=True)


def remove_unreferenced(folder: Path, *, keep: set[str], owns: Callable[[str], bool]) -> list[str]:
    """Delete the store's files not in ``keep`` and temp leftovers of killed writes; return their names."""
    removed = []
    for path in folder.iterdir():
        name = path.name
        if name in keep or name == LOCK_FILE or not path.is_file():
            continue
        if owns(name) or _TEMP_LEFTOVER.match(name):
            path.unlink(missing_ok=True)
            removed.append(name)
    if removed:
        logger.debug("removed %d old or leftover files from %s: %s", len(removed), folder, sorted(removed))
    return removed


def file_entry(manifest: Mapping[str, Any], key: str, default: str) -> tuple[str, str | None]:
    """``(file name, sha256 or None)`` of ``key`` in a manifest; older manifests give ``default``/no hash."""
    entry = (manifest.get(FILES_KEY) or {}).get(key, default)
    if isinstance(entry, Mapping):
        name, digest = str(entry.get("name", default)), entry.get("sha256")
    else:
        name, digest = str(entry), None  # format 1: plain names (database backends) or nothing
    if Path(name).name != name or name in ("", ".", ".."):
        raise ArtifactError(
            f"the manifest names file {name!r} for {key!r}, which is not a plain file name in the folder; "
            "write the folder again"
        )
    return name, (str(digest) if digest else None)


def read_checked(folder: Path, manifest: Mapping[str, Any], key: str, default: str, *, manifest_name: str) -> bytes:
    """The bytes of the manifest's ``key`` file, checked against its recorded SHA-256.

    Raises:
        FileNotFoundError: The file is missing.
        ChecksumMismatchError: Its SHA-256 differs from the recorded one.
    """
    name, expected = file_entry(manifest, key, default)
    path = folder / name
    with naming_path("cannot read", path):  # keeps the type: a vanished file is still FileNotFoundError
        data = path.read_bytes()
    if expected is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != expected:
            raise ChecksumMismatchError(
                f"{path} does not match the SHA-256 recorded in {folder / manifest_name} (expected {expected[:16]}..., "
                f"got {got[:16]}...): the file was modified, truncated or swapped with another after it was written. "
                "Restore the original file or write the folder again."
            )
    return data


def load_consistent(manifest_path: Path, load: Callable[[], T], *, attempts: int = _LOAD_ATTEMPTS) -> T:
    """Run ``load`` until it reads one complete version.

    ``load`` reads the manifest and the files it names. If a file is missing or fails its checksum
    *and the manifest changed meanwhile*, a concurrent writer replaced the version under us: read
    again. If the manifest did not change, the failure is real and is raised.
    """
    for attempt in range(attempts):
        before = _read_or_none(manifest_path)
        try:
            return load()
        except (FileNotFoundError, ChecksumMismatchError):
            if attempt == attempts - 1 or _read_or_none(manifest_path) == before:
                raise
            logger.debug("%s changed while loading (a concurrent write); reading the new version", manifest_path)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def json_record(obj: Any) -> bytes:
    """Indented UTF-8 JSON with a trailing newline (the KB manifest's historical format)."""
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


__all__ = [
    "FILES_KEY",
    "ChecksumMismatchError",
    "MissingStoreFileError",
    "VersionedWriter",
    "file_entry",
    "fsync_dir",
    "is_tagged",
    "json_record",
    "load_consistent",
    "read_checked",
    "remove_unreferenced",
    "sha256_file",
    "tagged_name",
]
