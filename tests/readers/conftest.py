"""Fixtures of the reader tests: generated images, cases, KB pairs and tiny LVLM folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.testing import (
    build_tiny_idefics3,
    build_tiny_llava,
    build_tiny_qwen2_vl,
)


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread() -> Iterator[None]:
    # The tiny models do ~64-wide matmuls: with several test processes on 2 cores, OpenMP threads
    # spin against each other and a forward pass gets ~50x slower. One thread is also faster alone.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _noise_png(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reader_images")


@pytest.fixture(scope="session")
def cases(image_dir: Path) -> list[Case]:
    return [Case(id=f"case-{i}", image_path=_noise_png(image_dir / f"query{i}.png", seed=i)) for i in range(3)]


@pytest.fixture(scope="session")
def kb_items(image_dir: Path) -> list[KBItem]:
    captions = [
        "mild cardiomegaly with pulmonary vascular congestion",
        "fundus photograph with microaneurysms and dot blot hemorrhages",
        "dermoscopy of a pigmented lesion with an atypical network",
        "no acute cardiopulmonary process",
    ]
    return [
        KBItem(id=f"kb-{j}", image_path=_noise_png(image_dir / f"kb{j}.png", seed=100 + j), text=text, source="demo")
        for j, text in enumerate(captions)
    ]


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="session")
def idefics3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_idefics3(tmp_path_factory.mktemp("tiny_idefics3"))


@pytest.fixture(scope="session")
def qwen2_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"))
