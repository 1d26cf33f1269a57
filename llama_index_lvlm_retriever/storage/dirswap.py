"""Replacing a whole folder by a finished temp folder, with recovery from a kill mid-swap.

For artifacts that are folders written by other libraries (``save_pretrained`` of a CLIP model,
the demo's stage folders) and are not read concurrently. POSIX cannot rename a folder over a
non-empty one, so the swap is two renames: the current folder aside to ``.<name>.old-<tag>``,
the new one in. A kill between them leaves no folder at the path but a complete previous one
aside; :func:`restore_previous` (called by readers that find the path missing) renames it back,
and :func:`remove_leftovers` (called by the next writer, under its lock) deletes ``.<name>.tmp-*``
and ``.<name>.old-*`` folders of killed writes. Stores read while being rewritten (knowledge
bases, heads, feedback caches) use :mod:`~llama_index_lvlm_retriever.storage.versioned` instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from llama_index_lvlm_retriever.storage.files import make_temp_dir
from llama_index_lvlm_retriever.storage.versioned import fsync_dir

logger = logging.getLogger(__name__)


def _aside(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)


def replace_directory(tmp: Path, target: Path) -> None:
    """Make the finished folder ``tmp`` the folder at ``target`` (see the module docstring)."""
    old: Path | None = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.rename(old, target)  # put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def restore_previous(target: Path) -> bool:
    """If ``target`` is missing because a swap was killed midway, rename the previous folder back."""
    if target.exists():
        return False
    for old in reversed(_aside(target)):  # the newest one aside is the one the killed swap moved
        try:
            os.rename(old, target)
        except OSError:
            continue  # someone else restored it first
        logger.warning("restored %s from %s (a write was interrupted between its two renames)", target, old)
        return True
    return False


def remove_leftovers(target: Path) -> None:
    """Delete the temp and aside folders of killed writes of ``target`` (call under the write lock)."""
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for path in target.parent.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def swapped_directory(target: str | Path) -> Iterator[Path]:
    """Write a folder whole: yield a fresh temp sibling, then swap it in for ``target``.

    The previous folder is restored if a killed swap left it aside, leftovers of killed writes are
    removed, and on an exception the temp folder is deleted and ``target`` stays as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_previous(target)
    remove_leftovers(target)
    tmp = make_temp_dir(target.parent, f".{target.name}.tmp-")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, target)


__all__ = ["remove_leftovers", "replace_directory", "restore_previous", "swapped_directory"]
