"""Fixtures of the reliability tests: one tiny CLIP and a folder of images per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # _tiny: shared with the writer subprocesses

from llama_index_lvlm_retriever.embeddings import CLIPEmbedding  # noqa: E402
from llama_index_lvlm_retriever.testing import build_tiny_clip  # noqa: E402


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="session")
def embed(clip_dir: Path) -> CLIPEmbedding:
    return CLIPEmbedding.from_pretrained(clip_dir)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    import _tiny

    return _tiny.write_images(tmp_path_factory.mktemp("images"))
