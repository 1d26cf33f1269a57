"""No lost updates (issue 19): concurrent ``kb add`` runs serialise; a stale ``persist`` fails loudly.

Two ``lvlm-retriever kb add`` processes of 150 new pairs each into one 60-pair KB used to both print
"210 total" and leave 210 (one side's pairs gone). The CLI now holds the KB's lock from load to
persist (``KnowledgeBase.updating``), so the second run waits and adds onto the first's result;
through the API, a ``persist`` into a folder that another process persisted since this KB was loaded
raises ``ConcurrentUpdateError`` (a compare-and-swap on the manifest) and writes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llama_index_lvlm_retriever.cli import main
from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.errors import ConcurrentUpdateError, StoreLockedError
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.kb.backends import MilvusBackendConfig, QdrantBackendConfig
from llama_index_lvlm_retriever.storage.locking import folder_lock

BASE, EACH = 60, 150


def _pairs(folder: Path, prefix: str, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` JSONL rows with distinct 32x32 noise images (relative paths, as a user's file has)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"{prefix}{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / name)
        rows.append({"id": f"{prefix}{i}", "image_path": name, "text": f"finding {prefix} {i}", "source": prefix})
    return rows


def _jsonl(folder: Path, prefix: str, n: int, seed: int) -> Path:
    path = folder / f"{prefix}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _pairs(folder, prefix, n, seed)))
    return path


def test_two_concurrent_kb_adds_keep_every_item(clip_dir: Path, embed: CLIPEmbedding, tmp_path: Path) -> None:
    kb_dir = tmp_path / "kb"
    base = _jsonl(tmp_path / "base", "base", BASE, 0)
    assert main(["build-kb", "--items", str(base), "--embed-model", str(clip_dir), "--out", str(kb_dir), "--no-progress"]) == 0
    adds = [_jsonl(tmp_path / name, name, EACH, seed) for name, seed in (("left", 1), ("right", 2))]
    code = "import sys; from llama_index_lvlm_retriever.cli import main; raise SystemExit(main(sys.argv[1:]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, "kb", "add", "--kb", str(kb_dir), "--items", str(items), "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for items in adds
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-2000:]
    totals = sorted(int(out.split("(")[1].split()[0]) for out, _ in outputs)  # "added 150 items (N total, ...)"
    assert totals == [BASE + EACH, BASE + 2 * EACH]  # the second run saw the first's items
    kb = KnowledgeBase.from_persist_dir(kb_dir, embed)
    ids = [item.id for item in kb.items]
    assert len(kb) == BASE + 2 * EACH == 360
    assert set(ids) == {f"{p}{i}" for p, n in (("base", BASE), ("left", EACH), ("right", EACH)) for i in range(n)}
    hits = kb.search(kb.image_vectors[[0, BASE, len(kb) - 1]], "image", 1)  # the index holds all 360 too
    assert [h[0].item.id for h in hits] == [ids[0], ids[BASE], ids[-1]]
    assert KnowledgeBase.read_manifest(kb_dir)["revision"] == 3  # build, then one write per add


def _items(folder: Path, prefix: str, n: int, seed: int) -> list[KBItem]:
    return [KBItem(id=r["id"], image_path=str(folder / r["image_path"]), text=r["text"], source=r["source"])
            for r in _pairs(folder, prefix, n, seed)]


def test_a_stale_persist_raises_and_writes_nothing(embed: CLIPEmbedding, tmp_path: Path) -> None:
    kb_dir = tmp_path / "kb"
    KnowledgeBase.build(_items(tmp_path / "base", "base", 6, 0), embed, show_progress=False).persist(kb_dir)
    first = KnowledgeBase.from_persist_dir(kb_dir, embed)
    second = KnowledgeBase.from_persist_dir(kb_dir, embed)
    first.add(_items(tmp_path / "x", "x", 3, 1), show_progress=False)
    first.persist(kb_dir)
    second.add(_items(tmp_path / "y", "y", 2, 2), show_progress=False)
    before = {p.name: p.read_bytes() for p in kb_dir.iterdir()}
    with pytest.raises(ConcurrentUpdateError, match=r"kb changed after this process loaded it \(revision 1, now 2\).*nothing was written"):
        second.persist(kb_dir)
    assert {p.name: p.read_bytes() for p in kb_dir.iterdir()} == before
    first.add(_items(tmp_path / "z", "z", 1, 3), show_progress=False)
    first.persist(kb_dir)  # the writer that won goes on: it compares with what it wrote itself
    assert len(KnowledgeBase.from_persist_dir(kb_dir, embed)) == 10
    second.persist(tmp_path / "elsewhere")  # another folder: no version to compare with
    assert len(KnowledgeBase.from_persist_dir(tmp_path / "elsewhere", embed)) == 8


def test_updating_waits_for_the_lock_and_persists_on_exit(embed: CLIPEmbedding, tmp_path: Path) -> None:
    kb_dir = tmp_path / "kb"
    KnowledgeBase.build(_items(tmp_path / "base", "base", 4, 0), embed, show_progress=False).persist(kb_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from llama_index_lvlm_retriever.storage.locking import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.readline()", str(kb_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(StoreLockedError, match=f"pid/host: {holder.pid} "):
        with KnowledgeBase.updating(kb_dir, embed, wait=0):
            pass
    holder.stdin.write("go\n")
    holder.stdin.flush()
    with KnowledgeBase.updating(kb_dir, embed, wait=120) as kb:  # waits for the holder to let go
        kb.add(_items(tmp_path / "x", "x", 2, 1), show_progress=False)
    assert holder.wait() == 0
    assert len(KnowledgeBase.from_persist_dir(kb_dir, embed)) == 6
    with pytest.raises(KeyError, match="no knowledge-base item with id 'nope'"):
        with KnowledgeBase.updating(kb_dir, embed) as kb:
            kb.delete(["x0"])
            kb.delete(["nope"])
    assert len(KnowledgeBase.from_persist_dir(kb_dir, embed)) == 6  # an error inside: nothing persisted
    with folder_lock(kb_dir):  # released: the lock can be taken at once
        pass
    with pytest.raises(FileNotFoundError, match="knowledge-base directory not found"):
        with KnowledgeBase.updating(tmp_path / "missing", embed):
            pass
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("name", ["milvus", "qdrant"])
def test_database_rows_are_not_touched_for_a_stale_folder(name: str, embed: CLIPEmbedding, tmp_path: Path) -> None:
    pytest.importorskip("pymilvus" if name == "milvus" else "qdrant_client")
    kb_dir = tmp_path / "kb"
    backend = MilvusBackendConfig(uri=str(kb_dir / "kb.db")) if name == "milvus" else QdrantBackendConfig(path=str(kb_dir / "qdrant"))
    built = KnowledgeBase.build(_items(tmp_path / "base", "base", 4, 0), embed, backend=backend, show_progress=False)
    built.persist(kb_dir)
    first = KnowledgeBase.from_persist_dir(kb_dir, embed)  # one client per store and process: both share it
    second = KnowledgeBase.from_persist_dir(kb_dir, embed)
    first.add(_items(tmp_path / "x", "x", 2, 1), show_progress=False)
    first.persist(kb_dir)
    for change in (
        lambda: second.add(_items(tmp_path / "y", "y", 1, 2), show_progress=False),
        lambda: second.delete(["base0"]),
        lambda: second.upsert(_items(tmp_path / "y", "y", 1, 2), show_progress=False),
    ):
        with pytest.raises(ConcurrentUpdateError, match=r"revision 1, now 2"):
            change()
    assert first._indexes["image"].ntotal == first._indexes["text"].ntotal == 6  # the rows are as first left them
    first.close()
    again = KnowledgeBase.from_persist_dir(kb_dir, embed)
    assert len(again) == 6
    again.close()


def test_a_negative_lock_wait_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = _jsonl(tmp_path / "items", "n", 1, 0)
    assert main(["kb", "add", "--kb", str(tmp_path / "kb"), "--items", str(items), "--lock-wait", "-1"]) == 2
    assert "--lock-wait must be >= 0 seconds, got -1.0" in capsys.readouterr().err
    assert main(["kb", "delete", "--kb", str(tmp_path / "kb"), "--ids", "n0", "--lock-wait", "-5"]) == 2
    assert "--lock-wait must be >= 0 seconds, got -5.0" in capsys.readouterr().err
