"""Shared fixtures. Tests never touch a model hub."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models on a shared 2-core machine: one intra-op thread is ~10-50x faster than oversubscribing.
torch.set_num_threads(1)

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402


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


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus standalone server (``milvus-server`` of ``pip install milvus``), one per session.

    Started on free ports with its data in a session tmp dir the first time a test asks for it,
    stopped (with its children) at the end. Skips when the command is not installed; fails, with the
    server log's tail, when it is installed but does not answer within 3 minutes.
    """
    from llama_index_lvlm_retriever.testing.milvus_server import (
        MilvusServer,
        MilvusServerError,
        find_command,
    )

    pytest.importorskip("pymilvus")
    if find_command() is None:
        pytest.skip("milvus-server is not installed (pip install milvus, part of the test extra)")
    server = MilvusServer(tmp_path_factory.mktemp("milvus-server"))
    try:
        server.start()
    except MilvusServerError as err:
        pytest.fail(f"the Milvus server for the backend tests did not start: {err}", pytrace=False)
    try:
        yield server.uri
    finally:
        server.stop()
