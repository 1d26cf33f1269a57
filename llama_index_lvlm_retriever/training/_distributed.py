"""Tiny helpers so the same training code runs in one process or under ``torchrun``.

``torchrun`` sets ``RANK``/``WORLD_SIZE`` (and the rendezvous address) in the environment. When a
process group is already initialised we use it; when the environment says ``WORLD_SIZE > 1`` and
none is, we start a CPU-friendly ``gloo`` group ourselves (and tear it down when done), so callers
need no distributed boilerplate. With one process every helper is a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch.distributed as dist

logger = logging.getLogger(__name__)

_ENV_RANK = "RANK"
_ENV_WORLD_SIZE = "WORLD_SIZE"


@dataclass(frozen=True)
class _DistContext:
    """Who this process is: its rank and how many processes share the work."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that merges and writes shared files)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process (so barriers and broadcasts are needed)."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every process (no-op with one process)."""
        if self.active:
            dist.barrier()

    def broadcast(self, value: object) -> object:
        """Rank 0's ``value`` on every rank (picklable Python objects; no-op with one process)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_ok(self, ok: bool) -> bool:
        """Whether every process reports ``ok`` (one failure makes every process see ``False``)."""
        if not self.active:
            return ok
        flags: list[object] = [None] * self.world_size
        dist.all_gather_object(flags, bool(ok))
        return all(bool(flag) for flag in flags)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer; unset it or fix it") from err


@contextmanager
def _distributed_context() -> Iterator[_DistContext]:
    """Yield this process's rank and world size, starting a gloo group when needed.

    Uses an initialised ``torch.distributed`` group when there is one; otherwise, when ``WORLD_SIZE``
    is above 1 (``torchrun``), initialises ``gloo`` from the environment and destroys it on exit.
    """
    if dist.is_available() and dist.is_initialized():
        yield _DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())
        return
    world_size = _env_int(_ENV_WORLD_SIZE, 1)
    if world_size <= 1:
        yield _DistContext(rank=0, world_size=1)
        return
    if not dist.is_available():  # pragma: no cover - depends on the torch build
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but this torch build has no torch.distributed; "
            "run one process or install a torch build with distributed support"
        )
    # gloo works on CPU and GPU hosts alike; the work here is I/O and Python, not collectives.
    dist.init_process_group(backend="gloo")
    logger.info("started a gloo process group: rank %d of %d", dist.get_rank(), dist.get_world_size())
    try:
        yield _DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())
    finally:
        dist.destroy_process_group()
