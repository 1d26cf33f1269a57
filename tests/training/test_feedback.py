"""Feedback collection on a hand-computable knowledge base with a deterministic fake reader.

The stub encoder embeds a solid-colour image as its RGB colour and a caption as its counts of the
words red/green/blue, so every retrieval score is a cosine between small integer vectors.

    id  image colour    image vector          caption          text vector      label
    r   (255, 0, 0)     (1, 0, 0)             "red red green"  (2, 1, 0)/sqrt5  a
    y   (255, 255, 0)   (1, 1, 0)/sqrt2       "blue"           (0, 0, 1)        b
    g   (0, 255, 0)     (0, 1, 0)             "red green"      (1, 1, 0)/sqrt2  b
    c   (0, 255, 255)   (0, 1, 1)/sqrt2       "green"          (0, 1, 0)        c
    b   (0, 64, 255)    (0, .2434, .9699)     "green blue"     (0, 1, 1)/sqrt2  c

Cases (a head's exact ties are broken by the pair's other-modality cosine with the query, then the
id; u = 255/|(255, 0, 128)| = .8937, v = 128/|(255, 0, 128)| = .4486):
    "y"  the KB's own pair (same id, same file), gold b, query (1, 1, 0)/sqrt2; y is excluded by id.
         image: g .7071, r .7071, c .5          text: g 1, r 3/sqrt10, c .7071
         (the image tie: g's caption has cosine 1 with the query, r's 3/sqrt10)
    "q1" a copy of g's pixels under another id, gold c, query (0, 1, 0); g is excluded by hash.
         image: c .7071, y .7071, b .2434       text: c 1, b .7071, r 1/sqrt5
         (the image tie: c's caption has cosine 1 with the query, y's 0)
    "q2" colour (255, 0, 128), gold a, query (u, 0, v); nothing excluded.
         image: r u, y u/sqrt2, b .9699 v       text: r 2u/sqrt5, g u/sqrt2, y v

The fake reader answers the candidate's own label with probability 0.7 and each other label with
0.15, so log P(gold | c) is log .7 when the candidate's label is the gold label, else log .15.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.heads import QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.tasks import TaskSpec
from llama_index_lvlm_retriever.testing.colour import ColourEmbedding
from llama_index_lvlm_retriever.training.feedback import (
    FeedbackCache,
    FeedbackConfig,
    collect_feedback,
)

S2 = math.sqrt(2.0)
LABELS = ["a", "b", "c"]
LOG_HIT, LOG_MISS = math.log(0.7), math.log(0.15)
KB_ROWS = [
    ("r", (255, 0, 0), "red red green", "a"),
    ("y", (255, 255, 0), "blue", "b"),
    ("g", (0, 255, 0), "red green", "b"),
    ("c", (0, 255, 255), "green", "c"),
    ("b", (0, 64, 255), "green blue", "c"),
]


TASK = TaskSpec(name="fake-task", labels=tuple(LABELS), question="Which label? Answer {options}.")


class FakeReader(Reader):
    """Deterministic reader: P(candidate's label) = .7, every other label .15 (3 labels).

    ``fail_on_call`` raises ``exception`` from that (1-based) call, like a crash or Ctrl-C midway.
    """

    def __init__(
        self,
        model_name: str = "fake-reader",
        *,
        task: TaskSpec = TASK,
        fail_on_call: int | None = None,
        exception: type[BaseException] = RuntimeError,
    ) -> None:
        self.model_name = model_name
        self.task = task
        self.fail_on_call = fail_on_call
        self.exception = exception
        self.calls: list[int] = []  # pairs per call

    def score(
        self,
        cases: Sequence[Case],
        candidates: Sequence[Sequence[KBItem | None]],
        *,
        show_progress: bool = False,
    ) -> ReaderScores:
        k = check_inputs(cases, candidates)
        self.calls.append(len(cases))
        if self.fail_on_call is not None and len(self.calls) >= self.fail_on_call:
            raise self.exception("reader died midway")
        n_labels = self.task.n_labels
        out = np.empty((len(cases), k, n_labels), dtype=np.float64)
        for i, row in enumerate(candidates):
            for j, item in enumerate(row):
                assert item is not None and item.label is not None
                probs = np.full(n_labels, 0.15)
                probs[self.task.label_index(item.label)] = 0.7
                out[i, j] = np.log(probs)
        return ReaderScores(log_probs=out, labels=self.task.labels, multi_label=self.task.multi_label)


def _png(path: Path, colour: tuple[int, int, int]) -> str:
    if not path.exists():
        Image.new("RGB", (4, 4), colour).save(path)
    return str(path)


def build_world(folder: Path, *, k: int = 1) -> tuple[list[Case], LVLMAwareRetriever]:
    """The KB, retriever and cases of the module docstring (also used by the torchrun script)."""
    folder.mkdir(parents=True, exist_ok=True)
    items = [
        KBItem(id=i, image_path=_png(folder / f"{i}.png", colour), text=text, source="stub", label=label)
        for i, colour, text, label in KB_ROWS
    ]
    kb = KnowledgeBase.build(items, ColourEmbedding(), show_progress=False)
    cases = [
        Case(id="y", image_path=str(folder / "y.png"), labels=("b",)),
        Case(id="q1", image_path=_png(folder / "green-copy.png", (0, 255, 0)), labels=("c",)),
        Case(id="q2", image_path=_png(folder / "purple.png", (255, 0, 128)), labels=("a",)),
    ]
    return cases, LVLMAwareRetriever(kb, k_image=k, k_text=k)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Case], LVLMAwareRetriever]:
    return build_world(tmp_path_factory.mktemp("world"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


SMALL = FeedbackConfig(n_candidates=3, shard_size=1, reader_batch_size=2)


def test_cached_contents_match_hand_computation(world: Any, tmp_path: Path) -> None:
    cases, retriever = world
    reader = FakeReader()
    cache = collect_feedback(cases, retriever, reader, tmp_path / "fb", SMALL, show_progress=False)
    assert isinstance(cache, FeedbackCache) and len(cache) == 3 and cache.case_ids == ["y", "q1", "q2"]
    assert cache.heads == ("image", "text") and cache.n_candidates == 3 and cache.labels == LABELS
    # Frozen query embeddings: the normalised colours.
    u, v = 255 / math.hypot(255, 128), 128 / math.hypot(255, 128)
    np.testing.assert_allclose(cache.query_embeddings.numpy(), [[1 / S2, 1 / S2, 0], [0, 1, 0], [u, 0, v]], atol=1e-6)
    b_green, b_blue = 64 / math.hypot(64, 255), 255 / math.hypot(64, 255)  # b's image vector
    pos = {i: p for p, (i, *_rest) in enumerate(KB_ROWS)}  # r 0, y 1, g 2, c 3, b 4
    expected = {
        "image": [["g", "r", "c"], ["c", "y", "b"], ["r", "y", "b"]],
        "text": [["g", "r", "c"], ["c", "b", "r"], ["r", "g", "y"]],
    }
    expected_scores = {
        "image": [[1 / S2, 1 / S2, 0.5], [1 / S2, 1 / S2, b_green], [u, u / S2, b_blue * v]],
        "text": [[1.0, 3 / math.sqrt(10), 1 / S2], [1.0, 1 / S2, 1 / math.sqrt(5)], [2 * u / math.sqrt(5), u / S2, v]],
    }
    gold = ["b", "c", "a"]
    label_of = {i: lab for i, _c, _t, lab in KB_ROWS}
    for head in ("image", "text"):
        assert cache.candidate_ids(head) == expected[head]
        assert cache.candidate_positions(head).tolist() == [[pos[i] for i in row] for row in expected[head]]
        np.testing.assert_allclose(cache.retrieval_scores(head).numpy(), expected_scores[head], atol=1e-6)
        # log .7 where the candidate's label is the case's gold label, else log .15.
        want_gold = [[LOG_HIT if label_of[i] == g else LOG_MISS for i in row] for row, g in zip(expected[head], gold)]
        np.testing.assert_allclose(cache.gold_log_probs(head).numpy(), want_gold, atol=1e-6)
        assert cache.label_log_probs(head).shape == (3, 3, 3)
        np.testing.assert_allclose(cache.label_log_probs(head).exp().sum(-1).numpy(), np.ones((3, 3)), atol=1e-6)
        assert cache.mask(head).all()
    # A candidate both heads return is scored once: y has 3 distinct candidates, q1 and q2 have 4.
    assert sum(reader.calls) == 11
    # k = 1 per head (the retriever's): y: g(b) twice; q1: c(c) twice; q2: r(a) twice.
    assert cache.disagree().tolist() == [False, False, False]
    # k = 3: q2's image list r(a), y(b), b(c) disagrees too.
    assert cache.disagree(k=3).tolist() == [True, True, True]
    manifest = json.loads((tmp_path / "fb" / "manifest.json").read_text())
    assert manifest["case_ids"] == ["y", "q1", "q2"] and manifest["n_candidates"] == 3
    assert manifest["reader"]["model_name"] == "fake-reader" and manifest["task"]["labels"] == LABELS
    assert manifest["retriever"]["knowledge_base"]["n_items"] == 5
    assert [s["name"] for s in manifest["shards"]] == ["shard-00000", "shard-00001", "shard-00002"]


def test_short_candidate_lists_are_masked(world: Any, tmp_path: Path) -> None:
    cases, retriever = world
    cache = collect_feedback(
        cases, retriever, FakeReader(), tmp_path / "fb", FeedbackConfig(n_candidates=6, heads=("text",)),
        show_progress=False,
    )
    # 5 KB items; y and q1 each lose one to exclusion.
    assert cache.mask("text").sum(dim=1).tolist() == [4, 4, 5]
    assert cache.candidate_positions("text")[0, 4:].tolist() == [-1, -1]
    assert cache.gold_log_probs("text")[0, 4:].tolist() == [0.0, 0.0]
    assert [len(row) for row in cache.candidate_ids("text")] == [4, 4, 5]
    with pytest.raises(KeyError, match="no candidates for head 'image'"):
        cache.mask("image")


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_interrupted_collection_resumes_to_identical_files(
    world: Any, tmp_path: Path, exception: type[BaseException]
) -> None:
    cases, retriever = world
    full_reader = FakeReader()
    collect_feedback(cases, retriever, full_reader, tmp_path / "full", SMALL, show_progress=False)
    assert full_reader.calls == [2, 1, 2, 2, 2, 2]  # 3 + 4 + 4 pairs, at most 2 per call, per shard

    # Calls 1-2 finish shard 0; call 4 dies inside shard 1 (a crash, or Ctrl-C).
    with pytest.raises(exception, match="died midway"):
        collect_feedback(
            cases, retriever, FakeReader(fail_on_call=4, exception=exception), tmp_path / "resumed", SMALL,
            show_progress=False,
        )
    names = set(os.listdir(tmp_path / "resumed"))
    assert {"shard-00000.safetensors", "shard-00000.json", "collection.json"} <= names
    assert "manifest.json" not in names and "shard-00001.json" not in names
    with pytest.raises(FileNotFoundError, match="has not finished; rerun collect_feedback"):
        FeedbackCache.from_persist_dir(tmp_path / "resumed")

    # The rerun may change batch sizes (e.g. after running out of memory): still the same run.
    second = FakeReader()
    rerun = SMALL.model_copy(update={"reader_batch_size": 3})
    collect_feedback(cases, retriever, second, tmp_path / "resumed", rerun, show_progress=False)
    assert second.calls == [3, 1, 3, 1]  # shard 0 skipped; shards 1 and 2 have 4 pairs each
    assert _files(tmp_path / "resumed") == _files(tmp_path / "full")

    # A finished cache is returned as is, without calling the reader.
    third = FakeReader()
    collect_feedback(cases, retriever, third, tmp_path / "resumed", SMALL, show_progress=False)
    assert third.calls == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_TORCHRUN_SCRIPT = """
import importlib.util, os, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("feedback_test_module", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
spec.loader.exec_module(module)
cases, retriever = module.build_world(Path(sys.argv[2]))
reader = module.FakeReader()
module.collect_feedback(cases, retriever, reader, sys.argv[3], module.SMALL, show_progress=False)
Path(sys.argv[4], "rank" + os.environ["RANK"] + ".txt").write_text(str(sum(reader.calls)))
"""


def test_two_process_torchrun_equals_one_process(world: Any, tmp_path: Path) -> None:
    cases, retriever = world
    collect_feedback(cases, retriever, FakeReader(), tmp_path / "one", SMALL, show_progress=False)
    script = tmp_path / "collect.py"
    script.write_text(_TORCHRUN_SCRIPT)
    data = Path(cases[0].image_path).parent  # the same image files, so the same KB
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(script), str(Path(__file__).resolve()), str(data), str(tmp_path / "two"), str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)  # a hang guard: a loaded machine takes minutes
    assert done.returncode == 0, done.stderr[-3000:]
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    # The work was shared: rank 0 scored shards 0 and 2 (3 + 4 pairs), rank 1 shard 1 (4 pairs).
    assert (tmp_path / "rank0.txt").read_text() == "7" and (tmp_path / "rank1.txt").read_text() == "4"


def test_cache_made_with_another_reader_or_retriever_is_refused(world: Any, tmp_path: Path) -> None:
    cases, retriever = world
    folder = tmp_path / "fb"
    collect_feedback(cases, retriever, FakeReader(), folder, SMALL, show_progress=False)
    with pytest.raises(ValueError, match=r"another reader.*'fake-reader'.*'other-reader'"):
        collect_feedback(cases, retriever, FakeReader("other-reader"), folder, SMALL, show_progress=False)
    with pytest.raises(ValueError, match=r"scored by another reader.*'fake-reader'.*'other-reader'"):
        FeedbackCache.from_persist_dir(folder, reader=FakeReader("other-reader"))
    # Same KB, a trained text head: another retriever.
    head = QueryHead(QueryHeadConfig(dim=3, kind="linear", alpha=0.5))
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]))
    other = LVLMAwareRetriever(retriever.knowledge_base, text_head=head, k_image=1, k_text=1)
    with pytest.raises(ValueError, match=r"another retriever.*text head identity.*text head linear"):
        FeedbackCache.from_persist_dir(folder, retriever=other)
    with pytest.raises(ValueError, match=r"another retriever.*text_head"):
        collect_feedback(cases, other, FakeReader(), folder, SMALL, show_progress=False)
    # Other settings or cases: named too.
    with pytest.raises(ValueError, match=r"other settings or cases.*n_candidates"):
        collect_feedback(cases, retriever, FakeReader(), folder, FeedbackConfig(n_candidates=2, shard_size=1,
                         reader_batch_size=2), show_progress=False)
    # The right pair loads.
    assert len(FeedbackCache.from_persist_dir(folder, retriever=retriever, reader=FakeReader())) == 3


def test_bad_gold_label_names_the_case_and_label_set(world: Any, tmp_path: Path) -> None:
    cases, retriever = world
    bad = [*cases[:2], Case(id="q9", image_path=cases[2].image_path, labels=("z",))]
    with pytest.raises(ValueError, match=r"case 'q9' has gold label 'z'.*'fake-task'.*\['a', 'b', 'c'\]"):
        collect_feedback(bad, retriever, FakeReader(), tmp_path / "fb", SMALL, show_progress=False)
    unlabelled = [Case(id="q0", image_path=cases[2].image_path)]
    with pytest.raises(ValueError, match="case 'q0' has no gold label"):
        collect_feedback(unlabelled, retriever, FakeReader(), tmp_path / "fb", SMALL, show_progress=False)
    two = [Case(id="q3", image_path=cases[2].image_path, labels=("a", "b"))]
    with pytest.raises(ValueError, match="case 'q3' has 2 gold labels.*single-label"):
        collect_feedback(two, retriever, FakeReader(), tmp_path / "fb", SMALL, show_progress=False)
    dup = [cases[0], cases[0]]
    with pytest.raises(ValueError, match="case id 'y' appears more than once"):
        collect_feedback(dup, retriever, FakeReader(), tmp_path / "fb", SMALL, show_progress=False)


def test_empty_feedback_is_an_error(world: Any, tmp_path: Path) -> None:
    cases, retriever = world
    with pytest.raises(ValueError, match="got no cases, so the feedback cache would be empty"):
        collect_feedback([], retriever, FakeReader(), tmp_path / "fb", SMALL)
    cache = collect_feedback(cases, retriever, FakeReader(), tmp_path / "fb", SMALL, show_progress=False)
    with pytest.raises(ValueError, match=r"feedback cache \(in memory\)|is empty \(0 cases\)"):
        cache.select([])
    with pytest.raises(FileNotFoundError, match="feedback cache directory not found"):
        FeedbackCache.from_persist_dir(tmp_path / "nowhere")


def test_select_split_and_persist_round_trip(world: Any, tmp_path: Path) -> None:
    cases, retriever = world
    cache = collect_feedback(cases, retriever, FakeReader(), tmp_path / "fb", SMALL, show_progress=False)
    train, val = cache.split(1 / 3, seed=0)
    assert len(train) == 2 and len(val) == 1
    assert sorted(train.case_ids + val.case_ids) == sorted(cache.case_ids)
    sub = cache.select([2, 0])
    assert sub.case_ids == ["q2", "y"]
    assert sub.candidate_ids("text") == [cache.candidate_ids("text")[2], cache.candidate_ids("text")[0]]
    sub.persist(tmp_path / "sub", shard_size=5)
    again = FeedbackCache.from_persist_dir(tmp_path / "sub", retriever=retriever, reader=FakeReader())
    assert again.case_ids == ["q2", "y"]
    for head in ("image", "text"):
        for name in ("candidate_positions", "retrieval_scores", "gold_log_probs", "label_log_probs", "mask"):
            assert torch.equal(getattr(again, name)(head), getattr(sub, name)(head))
        assert again.candidate_ids(head) == sub.candidate_ids(head)
    assert torch.equal(again.query_embeddings, sub.query_embeddings)
    assert again.disagree().tolist() == [False, False]
    assert again.disagree(k=3).tolist() == [True, True]
    with pytest.raises(ValueError, match="need at least 1 validation and 1 training case"):
        cache.split(0.01)


def test_multi_label_gold_is_the_probability_of_the_exact_set(world: Any, tmp_path: Path) -> None:
    cases, retriever = world
    task = TaskSpec(name="multi", labels=tuple(LABELS), multi_label=True, question="Is {label} present?")

    class PresenceReader(FakeReader):
        """Per-label presence: P(candidate's label present) = .7, any other .15 (independent)."""

    multi_cases = [Case(id=c.id, image_path=c.image_path, labels=lab) for c, lab in zip(cases, [("a", "b"), ("c",), ("a",)])]
    cache = collect_feedback(
        multi_cases, retriever, PresenceReader(task=task), tmp_path / "fb",
        FeedbackConfig(n_candidates=1, heads=("image",)), show_progress=False,
    )
    # Case y, top image candidate g (label b): gold {a, b} -> log(.15) + log(.7) + log(1 - .15).
    assert cache.gold_log_probs("image")[0, 0].item() == pytest.approx(math.log(0.15 * 0.7 * 0.85), abs=1e-5)
    # Case q1, top image candidate c (label c): gold {c} -> log(1 - .15) + log(1 - .15) + log(.7).
    assert cache.gold_log_probs("image")[1, 0].item() == pytest.approx(math.log(0.85 * 0.85 * 0.7), abs=1e-5)
    assert cache.multi_label and cache.predictions("image")[0, 0].tolist() == [False, True, False]


def test_corrupt_or_foreign_cache_files_are_reported(world: Any, tmp_path: Path) -> None:
    cases, retriever = world
    folder = tmp_path / "fb"
    collect_feedback(cases, retriever, FakeReader(), folder, SMALL, show_progress=False)
    manifest_path, shard = folder / "manifest.json", folder / "shard-00001.safetensors"
    good_manifest, good_shard = manifest_path.read_bytes(), shard.read_bytes()

    shard.write_bytes(good_shard[:-1] + bytes([good_shard[-1] ^ 1]))
    with pytest.raises(ValueError, match="shard-00001.safetensors does not match the hash"):
        FeedbackCache.from_persist_dir(folder)
    shard.unlink()
    with pytest.raises(ValueError, match="lacks shard file shard-00001.safetensors"):
        FeedbackCache.from_persist_dir(folder)
    shard.write_bytes(good_shard)

    record = json.loads(good_manifest)
    manifest_path.write_text(json.dumps({**record, "format": "something-else"}))
    with pytest.raises(ValueError, match="is not a feedback-cache manifest"):
        FeedbackCache.from_persist_dir(folder)
    manifest_path.write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        FeedbackCache.from_persist_dir(folder)
    manifest_path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        FeedbackCache.from_persist_dir(folder)
    with pytest.raises(ValueError, match="manifest.json is not valid JSON.*collect again"):
        collect_feedback(cases, retriever, FakeReader(), folder, SMALL, show_progress=False)
    manifest_path.write_bytes(good_manifest)
    assert len(FeedbackCache.from_persist_dir(folder)) == 3


class _BrokenReader(FakeReader):
    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault

    def score(
        self,
        cases: Sequence[Case],
        candidates: Sequence[Sequence[KBItem | None]],
        *,
        show_progress: bool = False,
    ) -> ReaderScores:
        scores = super().score(cases, candidates)
        if self.fault == "shape":
            return ReaderScores(log_probs=scores.log_probs[:, :, :2])
        log_probs = scores.log_probs.copy()
        log_probs[-1, 0, 0] = np.nan
        return ReaderScores(log_probs=log_probs)


def test_reader_output_is_checked(world: Any, tmp_path: Path) -> None:
    cases, retriever = world
    with pytest.raises(ValueError, match=r"_BrokenReader.score returned log_probs of shape \(2, 1, 2\).*\(2, 1, 3\)"):
        collect_feedback(cases, retriever, _BrokenReader("shape"), tmp_path / "a", SMALL, show_progress=False)
    # The first call scores (y, g) and (y, r); the NaN sits in its last row.
    with pytest.raises(ValueError, match="NaN log-probabilities for case 'y' with candidate 'r'"):
        collect_feedback(cases, retriever, _BrokenReader("nan"), tmp_path / "b", SMALL, show_progress=False)
