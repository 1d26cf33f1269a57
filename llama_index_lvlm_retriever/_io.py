"""Atomic file writes: every artifact the package persists goes through here.

A file is written to a temp name in its target folder, fsynced, then ``os.replace``d into place,
so a crash leaves either the old file or the new one, never half of one. ``mkstemp``/``mkdtemp``
create 0600/0700 entries whatever the umask; :func:`honour_umask` gives them the mode a plain
``open``/``mkdir`` would have, so colleagues on shared storage can read what we write.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

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


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating the parent folder); returns the path."""
    path = Path(path)
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
