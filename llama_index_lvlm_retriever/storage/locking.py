"""One writer per folder: an advisory lock file that names its holder.

Every store that can be rewritten (knowledge base, saved head, feedback cache, demo stage cache)
takes :func:`folder_lock` around its write, so a second writer gets :class:`StoreLockedError` naming
the holder instead of racing the first one into a raw ``FileNotFoundError``/``ENOTEMPTY``. A caller
that must hold a folder across a whole load-modify-write cycle (``KnowledgeBase.updating``, ``kb add``)
passes ``wait=`` seconds to queue behind the current holder instead of failing at once.

The lock is ``fcntl.flock`` on ``<folder>/.lock``: the kernel drops it when the holder dies (even by
SIGKILL), so a lock left by a dead process is simply taken over by the next writer, with no pid
guessing. The holder writes ``<pid> <host>`` into the file for the error message and unlinks it on
release; a locker re-checks after ``flock`` that the file it locked is still the one at the path,
so an unlink racing a new locker cannot give two holders. Readers never lock: they rely on the
manifest-last write (see :mod:`~llama_index_lvlm_retriever.storage.versioned`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from llama_index_lvlm_retriever.errors import StoreLockedError

LOCK_FILE = ".lock"
_POLL_S = 0.05  # how often a waiting locker retries; flock has no timed wait


@contextlib.contextmanager
def folder_lock(folder: str | Path, *, wait: float = 0.0) -> Iterator[Path]:
    """Hold the write lock of ``folder`` (created if missing) for the ``with`` body.

    Args:
        folder: The store folder.
        wait: Seconds to wait for another holder to release it (0: fail at once).

    Raises:
        StoreLockedError: Another live process holds it (still, after ``wait`` seconds).
    """
    import fcntl  # POSIX only; imported here so that importing the package works everywhere

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise StoreLockedError(folder, holder) from None
            time.sleep(_POLL_S)
            continue
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder unlinked the file we locked: lock the new one instead
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield folder
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
    return "unknown"


__all__ = ["LOCK_FILE", "StoreLockedError", "folder_lock"]
