"""Fixtures of the reliability tests.

Storage tests share one tiny CLIP and a folder of images per session (``_tiny`` also serves the
writer subprocesses). Error tests use deterministic stubs: a colour encoder, a fixed reader, a
small world.

The encoder embeds a solid-colour image as its RGB colour and a caption as counts of the words
red/green/blue, so a knowledge base builds and persists in milliseconds without any model.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from llama_index.core.embeddings import MultiModalEmbedding
from PIL import Image

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.kb import IndexConfig, KnowledgeBase
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.tasks import TaskSpec
from llama_index_lvlm_retriever.testing import build_tiny_clip
from llama_index_lvlm_retriever.testing.colour import ColourEmbedding

sys.path.insert(0, str(Path(__file__).parent))  # _tiny: shared with the writer subprocesses

KB_ROWS = [
    ("r", (255, 0, 0), "red red green", "a"),
    ("g", (0, 255, 0), "red green", "b"),
    ("b", (0, 64, 255), "green blue", "c"),
]
TASK = TaskSpec(name="colour-task", labels=("a", "b", "c"), question="Which label? Answer {options}.")


class FixedReader(Reader):
    """P(candidate's own label) = .7, every other label .15."""

    model_name = "fixed-reader"
    task = TASK

    def score(
        self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem | None]], *, show_progress: bool = False
    ) -> ReaderScores:
        k = check_inputs(cases, candidates)
        out = np.full((len(cases), k, 3), np.log(0.15))
        for i, row in enumerate(candidates):
            for j, item in enumerate(row):
                assert item is not None and item.label is not None
                out[i, j, TASK.label_index(item.label)] = np.log(0.7)
        return ReaderScores(log_probs=out, labels=TASK.labels, multi_label=False)


def png(path: Path, colour: tuple[int, int, int]) -> str:
    """A 4x4 solid-colour PNG at ``path`` (created once); returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        Image.new("RGB", (4, 4), colour).save(path)
    return str(path)


def build_kb(folder: Path, embed_model: MultiModalEmbedding | None = None, index_config: IndexConfig | None = None) -> KnowledgeBase:
    items = [
        KBItem(id=i, image_path=png(folder / f"{i}.png", colour), text=text, source="stub", label=label)
        for i, colour, text, label in KB_ROWS
    ]
    return KnowledgeBase.build(items, embed_model or ColourEmbedding(), index_config=index_config, show_progress=False)


@pytest.fixture()
def kb_dir(tmp_path: Path) -> Path:
    """A freshly persisted three-pair knowledge base (its own copy per test: tests damage it)."""
    out = tmp_path / "kb"
    build_kb(tmp_path / "images").persist(out)
    return out


@pytest.fixture()
def hnsw_kb_dir(tmp_path: Path) -> Path:
    """Like ``kb_dir`` with HNSW indexes, whose index files are stored (a flat index has none)."""
    out = tmp_path / "hnsw-kb"
    build_kb(tmp_path / "images", index_config=IndexConfig(kind="hnsw", hnsw_m=4)).persist(out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Case], LVLMAwareRetriever]:
    folder = tmp_path_factory.mktemp("world")
    kb = build_kb(folder)
    cases = [
        Case(id="q-red", image_path=png(folder / "q-red.png", (250, 10, 0)), labels=("a",)),
        Case(id="q-green", image_path=png(folder / "q-green.png", (10, 250, 0)), labels=("b",)),
    ]
    return cases, LVLMAwareRetriever(kb, k_image=1, k_text=1)


@pytest.fixture(scope="session")
def stubs() -> SimpleNamespace:
    """The stub classes and helpers of this module (pytest's importlib mode cannot import conftest)."""
    return SimpleNamespace(ColourEmbedding=ColourEmbedding, FixedReader=FixedReader, png=png, build_kb=build_kb)


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


def stored_file(folder: Path, key: str, manifest_name: str = "manifest.json") -> Path:
    """The file a store's manifest names under ``files[key]`` (names carry a per-write tag)."""
    entry = json.loads((folder / manifest_name).read_text())["files"][key]
    return folder / (entry["name"] if isinstance(entry, dict) else entry)


def rewrite_stored(folder: Path, key: str, data: bytes, *, reseal: bool, manifest_name: str = "manifest.json") -> Path:
    """Overwrite a stored file; ``reseal`` also records its new SHA-256, as if it had been written corrupt.

    Without ``reseal`` the checksum catches the change; with it the load reaches the file's own
    parser, which must still fail with a documented error naming the file.
    """
    path = stored_file(folder, key, manifest_name)
    path.write_bytes(data)
    if reseal:
        manifest_path = folder / manifest_name
        manifest = json.loads(manifest_path.read_text())
        manifest["files"][key].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        manifest_path.write_text(json.dumps(manifest))
    return path
