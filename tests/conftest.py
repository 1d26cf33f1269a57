"""Shared fixtures. Tests never touch a model hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models on a shared 2-core machine: one intra-op thread is ~10-50x faster than oversubscribing.
torch.set_num_threads(1)

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def tensorboard_scalars() -> Callable[[Path], dict[str, list[tuple[int, float]]]]:
    """Reads every scalar series of the TensorBoard event files under a folder: tag -> [(step, value)].

    Skips the test when tensorboard (the ``tensorboard`` extra) is not installed.
    """
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(folder: Path) -> dict[str, list[tuple[int, float]]]:
        scalars: dict[str, list[tuple[int, float]]] = {}
        for events in sorted(Path(folder).rglob("events.out.tfevents.*")):
            accumulator = EventAccumulator(str(events.parent))
            accumulator.Reload()
            for tag in accumulator.Tags()["scalars"]:
                scalars[tag] = [(e.step, e.value) for e in accumulator.Scalars(tag)]
        return scalars

    return read
