"""Atomic file writes: every artifact the package persists goes through here.

A file is written to a temp name in its target folder, fsynced, then ``os.replace``d into place,
so a crash leaves either the old file or the new one, never half of one. ``mkstemp``/``mkdtemp``
create 0600/0700 entries whatever the umask; :func:`honour_umask` gives them the mode a plain
``open``/``mkdir`` would have, so colleagues on shared storage can read what we write.

:func:`naming_path` makes every ``OSError`` of a read or write say what was done to which file:
``write()`` reports ``[Errno 28] No space left on device`` without a file name, and a user of a
KB, image or feedback store must see which one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llama_index_lvlm_retriever.errors import LVLMRetrieverError

_UMASK_LINE = "Umask:"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (threads may be writing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(_UMASK_LINE):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS): the classic set-and-restore
    os.umask(mask)
    return mask


def honour_umask(path: str | Path, *, directory: bool = False) -> None:
    """Give a ``mkstemp``/``mkdtemp`` entry the mode ``open``/``mkdir`` would: 0o666/0o777 minus umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh hidden folder in ``parent`` (``mkdtemp``) with umask-honouring permissions."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    honour_umask(tmp, directory=True)
    return tmp


def named_os_error(err: OSError, action: str, path: str | Path) -> OSError:
    """A copy of ``err`` (same type and errno) whose message says ``action`` and names ``path``.

    Example:
        >>> str(named_os_error(OSError(28, "No space left on device"), "cannot write", "/kb/vectors.safetensors"))
        "[Errno 28] cannot write /kb/vectors.safetensors: No space left on device: '/kb/vectors.safetensors'"
    """
    reason = err.strerror or str(err)
    try:
        named = type(err)(err.errno, f"{action} {path}: {reason}", str(path))
    except TypeError:  # an OSError subclass with another constructor
        named = OSError(err.errno, f"{action} {path}: {reason}", str(path))
    return named


@contextlib.contextmanager
def naming_path(action: str, path: str | Path) -> Iterator[None]:
    """Re-raise any ``OSError`` inside as :func:`named_os_error` (``action`` + ``path``), same type.

    Our own errors that are also ``OSError`` (a locked store, a missing store file) already name
    their folder and pass through unchanged.
    """
    try:
        yield
    except OSError as err:
        if isinstance(err, LVLMRetrieverError):
            raise
        raise named_os_error(err, action, path) from err


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating the parent folder); returns the path.

    Raises:
        OSError: The write failed (disk full, no permission, name too long): the message names ``path``.
    """
    path = Path(path)
    with naming_path("cannot write", path):
        return _atomic_write_bytes(path, data)


def _atomic_write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            honour_umask(tmp)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_bytes(obj: Any) -> bytes:
    """Deterministic, human-readable JSON bytes (sorted keys, so reruns write identical files)."""
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (sorted keys off, trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")
