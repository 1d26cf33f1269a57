"""SIGKILL at random points of every kind of write (issue 12): a loadable previous or new version remains,
and the rerun gives identical results.

Each kind forks this (already warmed-up) test process: the child does the write, the parent kills it
with SIGKILL after a random delay drawn over the write's measured duration, then checks the store
and, at the end, reruns the write to completion. Forking instead of starting a fresh interpreter per
kill keeps ``KILLS`` kills per kind within a few seconds. Kinds and what they stand for:

- ``build-kb``: ``KnowledgeBase.build(...).persist`` over an existing KB (what ``lvlm-retriever build-kb`` does);
- ``persist``: re-persisting a built KB (``KnowledgeBase.persist``);
- ``collect-feedback``: ``collect_feedback`` (resumable, shards + manifest last), then the rerun resumes;
- ``feedback-persist``: ``FeedbackCache.persist`` over an existing cache;
- ``train-retriever``: ``RetrieverFinetuneEngine.save`` of trained heads over an earlier save (both heads and
  the records are swapped in together), and a single head's ``save_pretrained`` over an older head;
- ``demo``: a ``StageCache.build`` stage write (the demo's cache; the whole demo is too slow to kill 10 times).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _tiny
import numpy as np
import pytest
import torch

from llama_index_lvlm_retriever.demo.pipeline import StageCache
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.heads import QueryHead
from llama_index_lvlm_retriever.heads.query_head import QueryHeadConfig
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.training.config import FeedbackConfig
from llama_index_lvlm_retriever.training.feedback import collect_feedback
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from test_feedback import FakeReader, build_world  # noqa: E402  (the feedback tests' stub world)

KILLS = 10


@pytest.fixture(autouse=True)
def _process_local_tqdm_lock() -> Any:
    """tqdm guards its bars with a lock that includes a multiprocessing semaphore shared with forked
    children (taken even by disabled bars); a child killed while holding it would leave this process
    waiting forever. The kill tests give tqdm a plain thread lock, which a fork copies instead."""
    import tqdm.auto
    import tqdm.std

    classes = (tqdm.std.tqdm, tqdm.auto.tqdm)
    saved = [cls.__dict__.get("_lock") for cls in classes]
    for cls in classes:
        cls.set_lock(threading.RLock())
    yield
    for cls, lock in zip(classes, saved):
        if lock is None:
            del cls._lock
        else:
            cls.set_lock(lock)


def _kill_at_random(write: Callable[[], Any], duration: float, rng: random.Random) -> bool:
    """Fork, run ``write`` in the child, SIGKILL it after a random delay; True when it finished first."""
    pid = os.fork()
    if pid == 0:  # child: do the write, never return into pytest
        try:
            write()
        finally:
            os._exit(0)
    time.sleep(rng.uniform(0.0, duration * 1.2))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status)


def _timed(write: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    write()
    return time.perf_counter() - t0


def _run_kills(write: Callable[[], Any], check: Callable[[], str], seed: int) -> dict[str, int]:
    """``KILLS`` killed writes, each followed by ``check`` (which returns what version it found)."""
    rng = random.Random(seed)
    duration = _timed(write)
    seen: dict[str, int] = {"finished": 0}
    for _ in range(KILLS):
        if _kill_at_random(write, duration, rng):
            seen["finished"] += 1
        found = check()
        seen[found] = seen.get(found, 0) + 1
    return seen


@pytest.fixture()
def versions(embed: CLIPEmbedding, images: list[Path]) -> dict[str, KnowledgeBase]:
    return {v: _tiny.build(v, embed, images) for v in _tiny.VERSIONS}


def _kb_check(
    kb_dir: Path, embed: CLIPEmbedding, versions: dict[str, KnowledgeBase], *, atol: float = 0.0
) -> Callable[[], str]:
    def check() -> str:
        return _tiny.check_one_version(KnowledgeBase.from_persist_dir(kb_dir, embed), versions, atol=atol)

    return check


def test_kill_build_kb(embed: CLIPEmbedding, images: list[Path], versions: dict[str, KnowledgeBase], tmp_path: Path) -> None:
    kb_dir = tmp_path / "kb"
    versions["a"].persist(kb_dir)
    # The child embeds "b" itself (after a fork its BLAS may run other thread counts): compare its
    # vectors to 1e-5, far below the distance between versions a and b.
    check = _kb_check(kb_dir, embed, versions, atol=1e-5)
    assert np.abs(versions["a"].image_vectors - versions["b"].image_vectors).max() > 1e-2  # still told apart
    seen = _run_kills(lambda: _tiny.build("b", embed, images).persist(kb_dir), check, seed=1)
    assert sum(seen.get(v, 0) for v in _tiny.VERSIONS) == KILLS, seen  # every kill left a or b, loadable
    _tiny.build("b", embed, images).persist(kb_dir)  # the rerun
    assert check() == "b"
    assert len(os.listdir(kb_dir)) == 4 and os.listdir(tmp_path) == ["kb"]  # leftovers cleaned: 3 data files + manifest


def test_kill_persist(embed: CLIPEmbedding, versions: dict[str, KnowledgeBase], tmp_path: Path) -> None:
    kb_dir = tmp_path / "kb"
    versions["a"].persist(kb_dir)
    state = {"n": 0}

    def write() -> None:  # alternate, so a kill lands on a replace of a by b or of b by a
        state["n"] += 1
        versions["ab"[state["n"] % 2]].persist(kb_dir)

    seen = _run_kills(write, _kb_check(kb_dir, embed, versions), seed=2)
    assert sum(seen.get(v, 0) for v in _tiny.VERSIONS) == KILLS, seen
    versions["b"].persist(kb_dir)
    assert _kb_check(kb_dir, embed, versions)() == "b" and len(os.listdir(kb_dir)) == 4


def test_kill_collect_feedback(tmp_path: Path) -> None:
    cases, retriever = build_world(tmp_path / "world")
    config = FeedbackConfig(n_candidates=3, shard_size=1, reader_batch_size=2)
    reference = collect_feedback(cases, retriever, FakeReader(), tmp_path / "reference", config, show_progress=False)
    folder = tmp_path / "fb"

    def check() -> str:
        if not (folder / "manifest.json").exists():
            return "unfinished"  # no previous version: nothing committed yet, the rerun resumes
        cache = FeedbackCache.from_persist_dir(folder)
        assert torch.equal(cache.gold_log_probs("image"), reference.gold_log_probs("image"))
        return "new"

    def write() -> None:
        collect_feedback(cases, retriever, FakeReader(), folder, config, show_progress=False)

    rng = random.Random(3)
    duration = _timed(lambda: collect_feedback(cases, retriever, FakeReader(), tmp_path / "timing", config, show_progress=False))
    seen: dict[str, int] = {}
    for _ in range(KILLS):
        _kill_at_random(write, duration, rng)
        found = check()
        seen[found] = seen.get(found, 0) + 1
        if found == "new":  # start the next kill from scratch so that kills land mid-collection too
            for path in folder.iterdir():
                path.unlink()
    collect_feedback(cases, retriever, FakeReader(), folder, config, show_progress=False)  # the rerun
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "reference").iterdir())
    assert all((folder / n).read_bytes() == (tmp_path / "reference" / n).read_bytes() for n in names)
    assert seen.get("unfinished", 0) > 0, seen  # some kills really landed mid-write


def test_kill_feedback_persist(tmp_path: Path) -> None:
    cases, retriever = build_world(tmp_path / "world")
    config = FeedbackConfig(n_candidates=3, shard_size=1, reader_batch_size=2)
    full = collect_feedback(cases, retriever, FakeReader(), tmp_path / "full", config, show_progress=False)
    small = full.select([0])
    folder = tmp_path / "fb"
    small.persist(folder)
    sizes = {1: "small", len(full): "full"}

    def check() -> str:
        return sizes[len(FeedbackCache.from_persist_dir(folder))]

    seen = _run_kills(lambda: full.persist(folder), check, seed=4)
    assert seen.get("small", 0) + seen.get("full", 0) == KILLS, seen
    full.persist(folder)
    again = FeedbackCache.from_persist_dir(folder)
    assert again.case_ids == full.case_ids and torch.equal(again.label_log_probs("text"), full.label_log_probs("text"))


def test_kill_train_retriever_head_save(tmp_path: Path) -> None:
    heads = {}
    for name, seed in (("old", 0), ("new", 1)):
        torch.manual_seed(seed)
        head = QueryHead(QueryHeadConfig(dim=16, kind="mlp"))
        for p in head.parameters():
            torch.nn.init.normal_(p, std=0.5)
        heads[name] = head
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    expected = {name: head.encode(x) for name, head in heads.items()}
    folder = tmp_path / "retriever" / "image_head"
    heads["old"].save_pretrained(folder)

    def check() -> str:
        out = QueryHead.from_pretrained(folder).encode(x)
        (match,) = [name for name, want in expected.items() if np.array_equal(out, want)]
        return match

    seen = _run_kills(lambda: heads["new"].save_pretrained(folder), check, seed=5)
    assert seen.get("old", 0) + seen.get("new", 0) == KILLS, seen
    heads["new"].save_pretrained(folder)
    assert check() == "new" and len(os.listdir(folder)) == 2


def test_kill_demo_stage_cache(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "seed0")

    def stage(version: str) -> Callable[[], None]:
        def write() -> None:
            with cache.build("feedback", version) as tmp:
                for i in range(20):
                    (tmp / f"part{i}.txt").write_text(version * 1000)

        return write

    stage("v1")()

    def check() -> str:
        found = [v for v in ("v1", "v2") if cache.done("feedback", v)]
        assert len(found) == 1, found
        assert {p.read_text() for p in cache.path("feedback").glob("part*.txt")} == {found[0] * 1000}
        return found[0]

    seen = _run_kills(stage("v2"), check, seed=6)
    assert seen.get("v1", 0) + seen.get("v2", 0) == KILLS, seen
    stage("v2")()
    assert check() == "v2" and sorted(os.listdir(tmp_path / "seed0")) == ["feedback"]  # no .feedback.tmp-*


def test_kill_train_retriever_save(tmp_path: Path) -> None:
    """The whole ``RetrieverFinetuneEngine.save`` (both heads + records), killed at random points."""
    from llama_index_lvlm_retriever.training import RetrieverFinetuneEngine, TrainerConfig

    cases, retriever = build_world(tmp_path / "world")
    config = FeedbackConfig(n_candidates=3, shard_size=2, reader_batch_size=4)
    feedback = collect_feedback(cases, retriever, FakeReader(), tmp_path / "fb", config, show_progress=False)
    engines = {}
    for name, seed in (("old", 0), ("new", 1)):
        engine = RetrieverFinetuneEngine(retriever, feedback, head="both", config=TrainerConfig(
            max_steps=4, batch_size=2, learning_rate=0.5, seed=seed, validation_fraction=0.0, show_progress=False))
        engine.finetune()
        engines[name] = engine
    x = np.random.default_rng(0).normal(size=(4, retriever.knowledge_base.dim)).astype(np.float32)

    def encodings(folder: Path) -> tuple[bytes, bytes]:
        from llama_index_lvlm_retriever.heads import load_head

        return tuple(load_head(folder / h).encode(x).tobytes() for h in ("image_head", "text_head"))  # type: ignore[return-value]

    out = tmp_path / "retriever"
    engines["old"].save(out)
    expected = {"old": encodings(out)}
    engines["new"].save(tmp_path / "reference")
    expected["new"] = encodings(tmp_path / "reference")
    assert expected["old"] != expected["new"]

    def check() -> str:
        got = encodings(out)  # both heads of one save, never one of each
        (match,) = [name for name, want in expected.items() if got == want]
        return match

    seen = _run_kills(lambda: engines["new"].save(out), check, seed=6)
    assert seen.get("old", 0) + seen.get("new", 0) == KILLS, seen
    engines["new"].save(out)  # the rerun
    assert check() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["fb", "reference", "retriever", "world"]
