"""Issue 12 "Found": each item reproduced through the Python API, and now a documented error.

One test per item, named after it. Every error must be of the documented type (see
``llama_index_lvlm_retriever.errors``), still a ``ValueError`` for old callers, and name the file,
case or option it is about. CLI exit codes and one-line output are in ``test_cli_errors.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llama_index_lvlm_retriever.data.cases import load_cases_jsonl
from llama_index_lvlm_retriever.data.loaders import load_kb_jsonl
from llama_index_lvlm_retriever.errors import (
    ArtifactError,
    ChecksumMismatchError,
    FeedbackCacheError,
    HeadFormatError,
    ImageLoadError,
    KBFormatError,
    QueryError,
)
from llama_index_lvlm_retriever.heads import QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.training.feedback import (
    FeedbackCache,
    FeedbackConfig,
    collect_feedback,
)

from .conftest import rewrite_stored, stored_file  # noqa: E402

SMALL = FeedbackConfig(n_candidates=2, shard_size=1, reader_batch_size=2)


def _half(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def _load(kb_dir: Path, stubs: Any) -> KnowledgeBase:
    return KnowledgeBase.from_persist_dir(kb_dir, embed_model=stubs.ColourEmbedding())


# ---------------------------------------------------------------- crashes with a traceback
@pytest.mark.parametrize("reseal", [False, True], ids=["checksum", "parser"])
def test_truncated_image_faiss(stubs: Any, hnsw_kb_dir: Path, reseal: bool) -> None:
    path = stored_file(hnsw_kb_dir, "image")
    rewrite_stored(hnsw_kb_dir, "image", _half(path), reseal=reseal)
    expected = r"is not a readable faiss index.*rebuild" if reseal else r"does not match the SHA-256"
    with pytest.raises(KBFormatError if reseal else ChecksumMismatchError, match=expected) as info:
        _load(hnsw_kb_dir, stubs)
    assert str(path) in str(info.value) and isinstance(info.value, ArtifactError)


@pytest.mark.parametrize("reseal", [False, True], ids=["checksum", "parser"])
def test_truncated_vectors_safetensors(stubs: Any, kb_dir: Path, reseal: bool) -> None:
    path = stored_file(kb_dir, "vectors")
    rewrite_stored(kb_dir, "vectors", _half(path), reseal=reseal)
    expected = r"is not a readable safetensors file" if reseal else r"does not match the SHA-256"
    with pytest.raises(KBFormatError if reseal else ChecksumMismatchError, match=expected) as info:
        _load(kb_dir, stubs)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("reseal", [False, True], ids=["checksum", "parser"])
def test_truncated_head_weights(tmp_path: Path, reseal: bool) -> None:
    folder = tmp_path / "head"
    QueryHead(QueryHeadConfig(dim=3, hidden_dim=4)).save_pretrained(folder)
    path = stored_file(folder, "weights", "config.json")
    rewrite_stored(folder, "weights", _half(path), reseal=reseal, manifest_name="config.json")
    expected = r"is not a readable safetensors file.*re-save" if reseal else r"does not match the SHA-256"
    with pytest.raises(HeadFormatError if reseal else ChecksumMismatchError, match=expected) as info:
        QueryHead.from_pretrained(folder)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("encoder", ["clip", ["clip"], 3])
def test_manifest_encoder_not_an_object(stubs: Any, kb_dir: Path, encoder: Any) -> None:
    path = kb_dir / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "encoder": encoder}))
    with pytest.raises(KBFormatError, match=r"manifest\.json: field 'encoder' must be a JSON object"):
        _load(kb_dir, stubs)
    with pytest.raises(KBFormatError, match="'encoder' must be a JSON object"):
        KnowledgeBase.read_manifest(kb_dir)  # what `lvlm-retriever info` reads


@pytest.fixture()
def feedback_dir(stubs: Any, world: Any, tmp_path: Path) -> Path:
    cases, retriever = world
    folder = tmp_path / "feedback"
    collect_feedback(cases, retriever, stubs.FixedReader(), folder, SMALL, show_progress=False)
    return folder


def _edit_manifest(folder: Path, edit: Any) -> None:
    path = folder / "manifest.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("heads"), r"'heads' must be a non-empty list"),
        (lambda m: m["shards"][0].pop("sha256"), r"shards\[0\]: 'sha256' must be 64 hex digits, got None"),
        (lambda m: m.update(heads=["image", "caption"]), r"unknown head\(s\) \['caption'\]"),
    ],
    ids=["missing-heads", "missing-sha256", "unknown-head"],
)
def test_feedback_manifest_missing_heads_or_sha256_or_unknown_head(feedback_dir: Path, edit: Any, message: str) -> None:
    assert len(FeedbackCache.from_persist_dir(feedback_dir)) == 2  # intact before the edit
    _edit_manifest(feedback_dir, edit)
    with pytest.raises(FeedbackCacheError, match=message) as info:
        FeedbackCache.from_persist_dir(feedback_dir)
    assert str(feedback_dir / "manifest.json") in str(info.value)


def test_device_cuda_on_cpu_only_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from llama_index_lvlm_retriever._devices import check_device_available
    from llama_index_lvlm_retriever.errors import DeviceUnavailableError, UsageError

    # Pretend to be a CPU-only build, so the test runs the same on a GPU machine.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match=r"device cuda:1: this torch installation has no usable CUDA GPU"):
        check_device_available("cuda:1")
    assert issubclass(DeviceUnavailableError, UsageError)
    check_device_available("cpu")
    check_device_available("auto")


# ---------------------------------------------------------------- handled poorly
def test_corrupt_image_hashes_json(stubs: Any, kb_dir: Path) -> None:
    path = rewrite_stored(kb_dir, "hashes", b'["abc", "de', reseal=True)
    with pytest.raises(KBFormatError, match=r"image_hashes\.[0-9a-f]+\.json is not valid") as info:
        _load(kb_dir, stubs)
    assert str(path) in str(info.value)
    rewrite_stored(kb_dir, "hashes", b'{"r": "abc"}', reseal=True)
    with pytest.raises(KBFormatError, match=r"image_hashes\.[0-9a-f]+\.json must (hold a JSON list|list one image hash)"):
        _load(kb_dir, stubs)
    rewrite_stored(kb_dir, "hashes", b"garbage", reseal=False)  # changed after the write: the checksum names it
    with pytest.raises(ChecksumMismatchError, match=r"image_hashes\.[0-9a-f]+\.json does not match"):
        _load(kb_dir, stubs)


def test_nan_query(stubs: Any, kb_dir: Path, tmp_path: Path) -> None:
    class NaNForBlue(stubs.ColourEmbedding):  # type: ignore[misc, name-defined]
        """NaN embedding for any image whose blue channel is 255 (an encoder gone wrong on one input)."""

        def _get_image_embedding(self, img_file_path: Any) -> list[float]:
            vector = super()._get_image_embedding(img_file_path)
            return [float("nan")] * 3 if vector[2] == 255 else vector

    kb = KnowledgeBase.from_persist_dir(kb_dir, embed_model=NaNForBlue())
    retriever = LVLMAwareRetriever(kb, k_image=2, k_text=2)
    fine = stubs.png(tmp_path / "red.png", (255, 0, 0))
    assert [n.node.node_id for n in retriever.retrieve_batch([fine])[0]][:1] == ["r"]
    blue = stubs.png(tmp_path / "blue.png", (0, 0, 255))
    # Before: faiss compared NaN to nothing and silently returned [] for this query.
    with pytest.raises(QueryError, match=rf"query embedding of query image {blue} has NaN"):
        retriever.retrieve_batch([fine, blue])
    with pytest.raises(QueryError, match=r"query 1 has NaN or infinite values \(1 of 2"):
        retriever.search_heads(np.array([[1.0, 0, 0], [np.inf, 0, 0]]), 1, 1)


def test_collect_feedback_with_a_missing_case_image(stubs: Any, world: Any, tmp_path: Path) -> None:
    cases, retriever = world
    broken = [*cases, type(cases[0])(id="q-lost", image_path=str(tmp_path / "lost.png"), labels=("a",))]
    with pytest.raises(ImageLoadError, match=r"case 'q-lost': image file not found: .*lost\.png \(1 of 3"):
        collect_feedback(broken, retriever, stubs.FixedReader(), tmp_path / "fb", SMALL, show_progress=False)
    assert not (tmp_path / "fb").exists()  # failed before any work


def test_relative_image_paths_survive_a_change_of_working_directory(stubs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Build from the project folder with paths relative to the JSONL and the JSONL relative to cwd.
    project = tmp_path / "project"
    stubs.png(project / "data" / "images" / "r.png", (255, 0, 0))
    stubs.png(project / "data" / "images" / "g.png", (0, 255, 0))
    (project / "data" / "kb.jsonl").write_text(
        '{"id": "r", "image_path": "images/r.png", "text": "red"}\n{"id": "g", "image_path": "images/g.png", "text": "green"}\n'
    )
    (project / "data" / "cases.jsonl").write_text('{"id": "c1", "image_path": "images/g.png", "answers": ["b"]}\n')
    monkeypatch.chdir(project)
    items = load_kb_jsonl("data/kb.jsonl")
    assert items[0].image_path == str(project / "data" / "images" / "r.png")  # absolute, not "data/images/r.png"
    assert load_cases_jsonl("data/cases.jsonl")[0].image_path == str(project / "data" / "images" / "g.png")
    KnowledgeBase.build(items, stubs.ColourEmbedding(), show_progress=False).persist("kb")
    # Use it from another folder: the stored paths still point at the images.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    kb = KnowledgeBase.from_persist_dir(project / "kb", embed_model=stubs.ColourEmbedding())
    assert all(Path(item.image_path).is_file() for item in kb.items)
    assert kb.content_hash_of(kb.items[0].image_path)  # the image decodes from here


def test_feedback_manifest_naming_a_file_outside_the_cache(feedback_dir: Path, tmp_path: Path) -> None:
    # A shard outside the folder with the right hash: before, it was read and trusted.
    shard = feedback_dir / "shard-00000.safetensors"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.safetensors").write_bytes(shard.read_bytes())
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()

    def escape(manifest: dict[str, Any]) -> None:
        manifest["shards"][0].update(name=os.path.join("..", "..", "outside", "evil"), sha256=digest)

    _edit_manifest(feedback_dir, escape)
    with pytest.raises(FeedbackCacheError, match=r"shards\[0\]: 'name' '\.\./\.\./outside/evil' is not a file name inside"):
        FeedbackCache.from_persist_dir(feedback_dir)


def test_kb_manifest_naming_a_file_outside_the_folder(stubs: Any, kb_dir: Path) -> None:
    _edit_manifest(kb_dir, lambda m: m.setdefault("files", {}).update(vectors="../other/vectors.safetensors"))
    with pytest.raises(KBFormatError, match=r"files\['vectors'\] = '\.\./other/vectors\.safetensors' is not a file name inside"):
        _load(kb_dir, stubs)
