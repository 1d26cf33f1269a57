"""Issue 19 item 8: file-system errors name the file and the item, image files are size-checked,
API misuses raise documented types with one-line messages, non-finite stored vectors are refused."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from llama_index_lvlm_retriever.data import images as images_module
from llama_index_lvlm_retriever.data.images import load_image
from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import (
    EmbeddingError,
    ImageLoadError,
    KBFormatError,
    LVLMRetrieverError,
    UsageError,
)
from llama_index_lvlm_retriever.heads import QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.kb import storage as kb_storage
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.storage import files as storage_files
from llama_index_lvlm_retriever.testing.colour import ColourEmbedding
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache


def _one_line_documented(err: BaseException) -> None:
    assert isinstance(err, LVLMRetrieverError) and "\n" not in str(err)


# ---------------------------------------------------------------------------- images


def test_an_oversized_image_file_is_refused_before_it_is_read(tmp_path: Path, stubs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "scan.png"
    with big.open("wb") as handle:  # sparse: 600 MiB on paper, nothing on disk
        handle.truncate(600 * 2**20)
    reads: list[Path] = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or original(self))
    with pytest.raises(ImageLoadError, match=rf"image file {big} is 600.0 MiB, over the 512 MiB limit \(MAX_IMAGE_FILE_BYTES\)"):
        load_image(big)
    assert big not in reads  # stat only: the file was never read into memory
    items = [KBItem(id="huge-scan", image_path=str(big), text="red"), KBItem(id="r", image_path=stubs.png(tmp_path / "r.png", (255, 0, 0)), text="red")]
    with pytest.raises(ImageLoadError, match=r"knowledge-base item 'huge-scan': image file .*scan.png is 600.0 MiB"):
        KnowledgeBase.build(items, ColourEmbedding(), show_progress=False)
    assert len(KnowledgeBase.build(items, ColourEmbedding(), show_progress=False, skip_bad=True)) == 1


def test_the_cap_is_an_argument_and_a_module_setting(tmp_path: Path, stubs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(stubs.png(tmp_path / "r.png", (255, 0, 0)))
    size = path.stat().st_size
    with pytest.raises(ImageLoadError, match=r"over the 0 MiB limit"):
        load_image(path, max_file_bytes=size - 1)
    assert load_image(path, max_file_bytes=size).size == (4, 4)
    monkeypatch.setattr(images_module, "MAX_IMAGE_FILE_BYTES", size - 1)
    with pytest.raises(ImageLoadError, match="MAX_IMAGE_FILE_BYTES"):
        load_image(path)


def test_an_unreadable_image_names_the_file_and_the_item(tmp_path: Path, stubs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(stubs.png(tmp_path / "r.png", (255, 0, 0)))

    def failing_read(self: Path) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(Path, "read_bytes", failing_read)
    with pytest.raises(ImageLoadError, match=rf"^knowledge-base item 'r': cannot read image file {path}: \[Errno 5\] Input/output error"):
        KnowledgeBase.build([KBItem(id="r", image_path=str(path), text="red")], ColourEmbedding(), show_progress=False)


# ---------------------------------------------------------------------------- stores


def test_a_full_disk_while_persisting_names_the_file(kb_dir: Path, stubs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kb = KnowledgeBase.from_persist_dir(kb_dir, stubs.ColourEmbedding())
    before = sorted(os.listdir(kb_dir))

    def full_disk(path: Path, *args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(kb_storage, "write_vectors", full_disk)
    with pytest.raises(OSError, match=rf"\[Errno 28\] cannot write {kb_dir}/vectors\.[0-9a-f]+\.safetensors: No space left on device") as info:
        kb.persist(kb_dir)
    assert info.value.errno == errno.ENOSPC and str(info.value.filename).startswith(str(kb_dir / "vectors."))
    assert sorted(os.listdir(kb_dir)) == before  # the old version stays, nothing half-written


def test_a_read_error_while_loading_names_the_file(kb_dir: Path, stubs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Path.read_bytes

    def failing_vectors(self: Path) -> bytes:
        if self.name.startswith("vectors."):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", failing_vectors)
    with pytest.raises(OSError, match=rf"\[Errno 5\] cannot read {kb_dir}/vectors\.[0-9a-f]+\.safetensors: Input/output error"):
        KnowledgeBase.from_persist_dir(kb_dir, stubs.ColourEmbedding())


def test_a_too_long_file_name_is_named(tmp_path: Path) -> None:
    target = tmp_path / ("x" * 300 + ".json")
    with pytest.raises(OSError, match=rf"cannot write {tmp_path}/x+\.json: File name too long") as info:
        storage_files.atomic_write_bytes(target, b"{}")
    assert info.value.errno == errno.ENAMETOOLONG


def test_a_feedback_shard_read_error_names_the_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
    from test_feedback import SMALL, FakeReader, build_world  # the feedback tests' stub world

    from llama_index_lvlm_retriever.training.feedback import collect_feedback

    cases, retriever = build_world(tmp_path / "world")
    collect_feedback(cases, retriever, FakeReader(), tmp_path / "fb", SMALL, show_progress=False)
    original = Path.read_bytes

    def failing_shard(self: Path) -> bytes:
        if self.suffix == ".safetensors":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", failing_shard)
    with pytest.raises(OSError, match=rf"\[Errno 5\] cannot read feedback shard {tmp_path}/fb/\S+\.safetensors: Input/output error"):
        FeedbackCache.from_persist_dir(tmp_path / "fb")


def test_non_finite_vectors_are_refused_even_with_a_matching_checksum(kb_dir: Path, stubs: Any) -> None:
    from conftest import rewrite_stored  # the reliability conftest's helpers

    kb = KnowledgeBase.from_persist_dir(kb_dir, stubs.ColourEmbedding())
    image = kb.image_vectors.copy()
    image[1, 0] = np.nan
    data = save_safetensors({kb_storage.IMAGE_TENSOR: image, kb_storage.TEXT_TENSOR: np.array(kb.text_vectors)}, metadata={"format": kb_storage.FORMAT_NAME})
    path = rewrite_stored(kb_dir, "vectors", data, reseal=True)
    with pytest.raises(KBFormatError, match=(
        rf"^{path}: the image vector of item 'g' \(row 1\) has NaN or infinite values \(1 of 3 rows\), although the "
        r"file matches its recorded checksum; rebuild the knowledge base"
    )):
        KnowledgeBase.from_persist_dir(kb_dir, stubs.ColourEmbedding())


# ---------------------------------------------------------------------------- API misuse


class _NaNForGreen(ColourEmbedding):
    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        vector = super()._get_image_embedding(img_file_path)
        return [float("nan")] * 3 if vector == [0.0, 255.0, 0.0] else vector


def test_api_misuses_raise_documented_one_line_errors(tmp_path: Path, stubs: Any) -> None:
    kb = stubs.build_kb(tmp_path)
    cases = [
        (lambda: LVLMAwareRetriever(kb, k_image=-1), UsageError, r"^invalid LVLMAwareRetriever settings: k_image: Input should be greater than or equal to 0 \(got -1\)$"),
        (lambda: LVLMAwareRetriever(kb, image_head=QueryHead(QueryHeadConfig(dim=3, kind="linear", out_dim=5))), UsageError,
         r"^image_head produces 5-d query vectors but the knowledge base indexes are 3-d"),
        (lambda: kb.search(np.ones((1, 3), np.float32), "image", -1), UsageError, r"^k must be a non-negative int, got -1$"),
        (lambda: KnowledgeBase.build([], ColourEmbedding()), UsageError, r"^knowledge base is empty: build\(\) got no items"),
        (lambda: KnowledgeBase.build(
            [KBItem(id="leaf", image_path=stubs.png(tmp_path / "g.png", (0, 255, 0)), text="green")], _NaNForGreen(), show_progress=False),
         EmbeddingError, r"^the embedding model returned non-finite image embeddings for item 'leaf' \(1 of 1 in its batch\)"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as info:
            call()
        _one_line_documented(info.value)
