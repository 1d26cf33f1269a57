"""Storage guarantees of issue 12: checksums, umask, the write lock, leftovers, dtype in the manifest."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import _tiny
import numpy as np
import pytest

from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.heads import QueryHead
from llama_index_lvlm_retriever.heads.query_head import QueryHeadConfig
from llama_index_lvlm_retriever.kb import IndexConfig, KnowledgeBase
from llama_index_lvlm_retriever.storage.locking import LOCK_FILE, StoreLockedError, folder_lock
from llama_index_lvlm_retriever.storage.versioned import ChecksumMismatchError


def _files(kb_dir: Path) -> dict[str, str]:
    return {key: entry["name"] for key, entry in KnowledgeBase.read_manifest(kb_dir)["files"].items()}


def test_swapped_index_files_are_refused_naming_the_file(embed: CLIPEmbedding, images: list[Path], tmp_path: Path) -> None:
    hnsw = IndexConfig(kind="hnsw", hnsw_m=4)  # index files of its own (a flat index is rebuilt from the vectors)
    KnowledgeBase.build(_tiny.items("a", images), embed, index_config=hnsw, show_progress=False).persist(tmp_path / "kb")
    files = _files(tmp_path / "kb")
    image, text = tmp_path / "kb" / files["image"], tmp_path / "kb" / files["text"]
    image_bytes, text_bytes = image.read_bytes(), text.read_bytes()
    image.write_bytes(text_bytes)
    text.write_bytes(image_bytes)
    with pytest.raises(ChecksumMismatchError, match=re.escape(str(image)) + ".*does not match the SHA-256"):
        KnowledgeBase.from_persist_dir(tmp_path / "kb", embed)
    image.write_bytes(image_bytes)
    text.write_bytes(text_bytes[:-10])  # truncated
    with pytest.raises(ValueError, match=re.escape(files["text"]) + ".*modified, truncated or swapped"):
        KnowledgeBase.from_persist_dir(tmp_path / "kb", embed)
    text.write_bytes(text_bytes)
    assert len(KnowledgeBase.from_persist_dir(tmp_path / "kb", embed)) == _tiny.N_ITEMS


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_and_folders_honour_the_umask(umask: int, embed: CLIPEmbedding, images: list[Path], tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        _tiny.build("a", embed, images).persist(tmp_path / "kb")
        head = QueryHead(QueryHeadConfig(dim=16, kind="linear"))
        head.save_pretrained(tmp_path / "head")
    finally:
        os.umask(old)
    # 0o666 & ~0o022 = 0o644 (group/other can read); 0o666 & ~0o002 = 0o664 (group can write too).
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    for folder in (tmp_path / "kb", tmp_path / "head"):
        assert (folder.stat().st_mode & 0o777) == want_dir
        modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
        assert modes and set(modes.values()) == {want_file}, modes


def test_a_second_writer_gets_a_locked_error_naming_the_holder(embed: CLIPEmbedding, images: list[Path], tmp_path: Path) -> None:
    kb = _tiny.build("a", embed, images)
    kb.persist(tmp_path / "kb")
    before = {p.name: p.read_bytes() for p in (tmp_path / "kb").iterdir()}
    with folder_lock(tmp_path / "kb"):
        with pytest.raises(StoreLockedError, match=rf"kb is locked by another writer \(pid/host: {os.getpid()} "):
            _tiny.build("b", embed, images).persist(tmp_path / "kb")
        with pytest.raises(OSError, match="locked"):  # an OSError, so the CLI reports it in one line
            QueryHead(QueryHeadConfig(dim=4)).save_pretrained(tmp_path / "kb")
    assert {p.name: p.read_bytes() for p in (tmp_path / "kb").iterdir()} == before
    assert not (tmp_path / "kb" / LOCK_FILE).exists()  # released and removed


def test_a_lock_left_by_a_killed_writer_is_taken_over(embed: CLIPEmbedding, images: list[Path], tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from llama_index_lvlm_retriever.storage.locking import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(tmp_path / "kb")],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(StoreLockedError, match=f"pid/host: {holder.pid} "):
        _tiny.build("a", embed, images).persist(tmp_path / "kb")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "kb" / LOCK_FILE).read_text().split()[0] == str(holder.pid)  # the dead pid's file stays
    _tiny.build("a", embed, images).persist(tmp_path / "kb")  # ... and is taken over
    assert len(KnowledgeBase.from_persist_dir(tmp_path / "kb", embed)) == _tiny.N_ITEMS


def test_leftovers_of_killed_writes_are_cleaned_by_the_next_write(embed: CLIPEmbedding, images: list[Path], tmp_path: Path) -> None:
    kb_dir = tmp_path / "kb"
    _tiny.build("a", embed, images).persist(kb_dir)
    junk = [kb_dir / "items.0123456789ab.jsonl", kb_dir / "image.0123456789ab.faiss", kb_dir / ".manifest.json.x1y2.tmp"]
    junk.append(kb_dir / ".tmp369sZU")  # safetensors' save_file temp, killed mid-save
    for path in junk:
        path.write_bytes(b"half")
    for name in (".kb.tmp-1234", ".kb.old-abcd"):  # the format-1 swap's folders
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    (kb_dir / "notes.txt").write_text("mine")  # not ours: kept
    _tiny.build("b", embed, images).persist(kb_dir)
    assert sorted(os.listdir(tmp_path)) == ["kb"]
    assert sorted(os.listdir(kb_dir)) == sorted([*_files(kb_dir).values(), "manifest.json", "notes.txt"])
    assert KnowledgeBase.from_persist_dir(kb_dir, embed).items == _tiny.items("b", images)


def test_dtype_is_recorded_and_a_float16_kb_loads_with_the_same_model(clip_dir: Path, images: list[Path], tmp_path: Path) -> None:
    half = CLIPEmbedding.from_pretrained(clip_dir, dtype="float16")
    _tiny.build("a", half, images).persist(tmp_path / "kb")
    encoder = KnowledgeBase.read_manifest(tmp_path / "kb")["encoder"]
    assert encoder["dtype"] == "float16"
    full = CLIPEmbedding.from_pretrained(clip_dir)  # float32: another weights fingerprint, same model
    assert full.fingerprint() != encoder["fingerprint"]
    loaded = KnowledgeBase.from_persist_dir(tmp_path / "kb", full)
    assert len(loaded) == _tiny.N_ITEMS
    # Another model in float32 is still refused by the probe comparison, and the message names both dtypes.
    other = CLIPEmbedding.from_pretrained(_other_clip(tmp_path))
    with pytest.raises(ValueError, match=r"probe (image|text) embedding cosine .* built in float16, given float32"):
        KnowledgeBase.from_persist_dir(tmp_path / "kb", other)


def _other_clip(tmp_path: Path) -> Path:
    from llama_index_lvlm_retriever.testing import build_tiny_clip

    return build_tiny_clip(tmp_path / "other-clip", seed=7)


def test_manifest_lists_every_file_with_its_sha256(embed: CLIPEmbedding, images: list[Path], tmp_path: Path) -> None:
    import hashlib

    _tiny.build("a", embed, images).persist(tmp_path / "kb")
    manifest = json.loads((tmp_path / "kb" / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    for entry in manifest["files"].values():
        data = (tmp_path / "kb" / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"]
    assert np.isfinite(KnowledgeBase.from_persist_dir(tmp_path / "kb", embed).image_vectors).all()
