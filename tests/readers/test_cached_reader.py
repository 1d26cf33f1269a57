"""CachedReader: each (case id, candidate id) pair goes through the wrapped reader once.

The fake reader scores a pair with raw log-likelihoods derived from a CRC of ``case|candidate|label``
(deterministic, different for every pair) and records every pair it is asked about, call by call.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs
from llama_index_lvlm_retriever.readers.cached import CachedReader
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.tasks import TaskSpec, get_task

TASK = TaskSpec(name="grade", labels=("g0", "g1", "g2"), question="Which grade? Answer {options}.")
Pair = tuple[str, str | None]


def _raw(case_id: str, candidate_id: str | None, label: int) -> float:
    # repr: the closed-book slot (None) and a KB item with id "None" score differently.
    return -(zlib.crc32(f"{case_id}|{candidate_id!r}|{label}".encode()) % 1000) / 100.0


class CountingReader(Reader):
    """Deterministic per-pair scores; ``calls`` holds the pairs of every ``score`` call.

    Args:
        with_raw: Return ``raw_log_likelihoods`` (like HFLVLMReader) or not (like LLM readers).
        unparsed: Candidate ids whose answers are marked unparseable (``parsed`` is then returned).
    """

    def __init__(self, with_raw: bool = True, unparsed: frozenset[str] | None = None) -> None:
        self.task = TASK
        self.model_name = "counting-reader"
        self.with_raw = with_raw
        self.unparsed = unparsed
        self.calls: list[list[Pair]] = []

    def score(
        self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem | None]], *, show_progress: bool = False
    ) -> ReaderScores:
        k = check_inputs(cases, candidates)
        pairs = [[(case.id, None if c is None else c.id) for c in row] for case, row in zip(cases, candidates)]
        self.calls.append([pair for row in pairs for pair in row])
        raw = np.array([[[_raw(ci, cj, lab) for lab in range(3)] for ci, cj in row] for row in pairs]).reshape(
            len(cases), k, 3
        )
        log_probs = raw - np.log(np.exp(raw).sum(axis=-1, keepdims=True))
        parsed = None
        if self.unparsed is not None:
            parsed = np.array([[cj not in self.unparsed for _, cj in row] for row in pairs], dtype=bool).reshape(
                len(cases), k
            )
        return ReaderScores(
            log_probs=log_probs,
            raw_log_likelihoods=raw if self.with_raw else None,
            parsed=parsed,
            labels=TASK.labels,
            case_ids=tuple(case.id for case in cases),
            candidate_ids=tuple(tuple(cj for _, cj in row) for row in pairs),
        )


CASES = [Case(id=f"c{i}", image_path=f"c{i}.png") for i in range(3)]
ITEMS = {name: KBItem(id=name, image_path=f"{name}.png", text=f"about {name}") for name in ("a", "b", "c", "d", "None")}


def _rows(*names: str | None) -> list[KBItem | None]:
    return [None if name is None else ITEMS[name] for name in names]


def _assert_same(got: ReaderScores, want: ReaderScores) -> None:
    np.testing.assert_array_equal(got.log_probs, want.log_probs)
    if want.raw_log_likelihoods is None:
        assert got.raw_log_likelihoods is None
    else:
        np.testing.assert_array_equal(got.raw_log_likelihoods, want.raw_log_likelihoods)
    if want.parsed is None:
        assert got.parsed is None
    else:
        np.testing.assert_array_equal(got.parsed, want.parsed)
    assert got.case_ids == want.case_ids
    assert got.candidate_ids == want.candidate_ids
    assert (got.labels, got.multi_label) == (want.labels, want.multi_label)


def test_scores_equal_the_wrapped_readers() -> None:
    reader, reference = CountingReader(), CountingReader()
    cached = CachedReader(reader)
    assert (cached.task, cached.model_name) == (TASK, "counting-reader")
    candidates = [_rows("a", "b"), _rows("b", "c"), _rows("d", None)]
    got = cached.score(CASES, candidates)
    _assert_same(got, reference.score(CASES, candidates))
    assert got.candidate_ids == (("a", "b"), ("b", "c"), ("d", None))
    # The cached values are the reader's: e.g. case c1 with "c", label g2.
    assert got.raw_log_likelihoods[1, 1, 2] == _raw("c1", "c", 2)
    assert got.predictions() == reference.score(CASES, candidates).predictions()


def test_second_identical_call_is_free_and_overlap_is_one_batched_call() -> None:
    reader = CountingReader()
    cached = CachedReader(reader)
    candidates = [_rows("a", "b"), _rows("b", "c"), _rows("d", None)]
    first = cached.score(CASES, candidates)
    assert (cached.misses, cached.hits, len(cached), len(reader.calls)) == (6, 0, 6, 1)
    second = cached.score(CASES, candidates)
    assert (cached.misses, cached.hits, len(reader.calls)) == (6, 6, 1)  # 0 pairs sent
    _assert_same(second, first)
    # Overlapping call: c0 keeps a and gets new c; c1 gets a new a and keeps c; new case c3 x (a, b).
    cases = [CASES[0], CASES[1], Case(id="c3", image_path="c3.png")]
    overlapping = [_rows("a", "c"), _rows("a", "c"), _rows("a", "b")]
    got = cached.score(cases, overlapping)
    assert len(reader.calls) == 2  # one batched call for all new pairs
    assert reader.calls[1] == [("c0", "c"), ("c1", "a"), ("c3", "a"), ("c3", "b")]
    assert (cached.misses, cached.hits, len(cached)) == (10, 8, 10)
    _assert_same(got, CountingReader().score(cases, overlapping))


def test_duplicate_pairs_in_one_call_are_scored_once() -> None:
    reader = CountingReader()
    cached = CachedReader(reader)
    cases = [CASES[0], CASES[0], CASES[1]]
    candidates = [_rows("a", "a"), _rows("a", "b"), _rows("a", "a")]
    got = cached.score(cases, candidates)
    assert reader.calls == [[("c0", "a"), ("c0", "b"), ("c1", "a")]]
    assert (cached.misses, cached.hits) == (3, 3)
    _assert_same(got, CountingReader().score(cases, candidates))
    np.testing.assert_array_equal(got.log_probs[0, 0], got.log_probs[1, 0])


def test_closed_book_is_cached_under_none() -> None:
    reader = CountingReader()
    cached = CachedReader(reader)
    closed = cached.score_closed_book(CASES[:2])
    _assert_same(closed, CountingReader().score_closed_book(CASES[:2]))
    assert closed.candidate_ids == ((None,), (None,))
    assert reader.calls == [[("c0", None), ("c1", None)]]
    # A KB item whose id is the string "None" is a different pair from the closed-book slot.
    with_item = cached.score(CASES[:2], [_rows("None"), _rows("None")])
    assert reader.calls[1] == [("c0", "None"), ("c1", "None")]
    assert not np.array_equal(with_item.log_probs, closed.log_probs)
    # Mixed rows: every pair is now in memory.
    mixed = cached.score(CASES[:2], [_rows(None, "None"), _rows("None", None)])
    assert len(reader.calls) == 2 and (cached.misses, cached.hits) == (4, 4)
    np.testing.assert_array_equal(mixed.log_probs[0, 0], closed.log_probs[0, 0])
    np.testing.assert_array_equal(mixed.log_probs[1, 0], with_item.log_probs[1, 0])
    assert mixed.candidate_ids == ((None, "None"), ("None", None))
    cached.score_closed_book(CASES[:2])
    assert len(reader.calls) == 2 and cached.hits == 6


def test_clear_forgets() -> None:
    reader = CountingReader()
    cached = CachedReader(reader)
    candidates = [_rows("a"), _rows("b")]
    cached.score(CASES[:2], candidates)
    cached.clear()
    assert len(cached) == 0
    again = cached.score(CASES[:2], candidates)
    assert len(reader.calls) == 2 and reader.calls[1] == [("c0", "a"), ("c1", "b")]
    assert (cached.misses, cached.hits) == (4, 0)  # the counters are cumulative, not reset
    _assert_same(again, CountingReader().score(CASES[:2], candidates))


def test_parsed_and_missing_raw_are_preserved() -> None:
    reader = CountingReader(with_raw=False, unparsed=frozenset({"b"}))
    cached = CachedReader(reader)
    candidates = [_rows("a", "b"), _rows("b", "c")]
    first = cached.score(CASES[:2], candidates)
    assert first.raw_log_likelihoods is None
    np.testing.assert_array_equal(first.parsed, [[True, False], [False, True]])
    assert first.predictions()[0][1] == "" and first.predictions()[1][0] == ""
    # From memory plus one new pair: the flags follow their pairs.
    candidates = [_rows("b", "d"), _rows("c", "b")]
    got = cached.score(CASES[:2], candidates)
    assert reader.calls[1] == [("c0", "d")]
    np.testing.assert_array_equal(got.parsed, [[False, True], [True, False]])
    _assert_same(got, CountingReader(with_raw=False, unparsed=frozenset({"b"})).score(CASES[:2], candidates))


def test_mismatched_inputs_raise_like_the_wrapped_reader() -> None:
    reader = CountingReader()
    cached = CachedReader(reader)
    bad_inputs = [
        (CASES[:2], [_rows("a")], "got 2 cases but 1 candidate lists"),
        (CASES[:2], [_rows("a"), _rows("a", "b")], "case 'c1' has 2 candidates but case 'c0' has 1"),
        (CASES[:1], [["a"]], "candidate of type str is not a KBItem"),
        (CASES[:1], [[]], "k = 0 candidates per case"),
    ]
    for cases, candidates, message in bad_inputs:
        with pytest.raises(ValueError, match=message):
            reader.score(cases, candidates)
        with pytest.raises(ValueError, match=message):
            cached.score(cases, candidates)
    assert len(reader.calls) == 0 and (cached.misses, cached.hits, len(cached)) == (0, 0, 0)


def test_no_cases_give_empty_scores() -> None:
    reader = CountingReader()
    want = reader.score([], [])
    got = CachedReader(reader).score([], [])
    assert got.log_probs.shape == want.log_probs.shape == (0, 0, 3)
    assert got.case_ids == () and got.candidate_ids == ()
    assert reader.calls == [[], []]  # the wrapped reader answered an empty call, with no pairs


def test_hf_reader_with_no_cases(llava_dir: Path) -> None:
    reader = HFLVLMReader.from_pretrained(llava_dir, get_task("breastmnist"))
    got = CachedReader(reader).score([], [])
    assert got.log_probs.shape == reader.score([], []).log_probs.shape


def test_against_the_tiny_hf_reader(llava_dir: Path, cases: list[Case], kb_items: list[KBItem]) -> None:
    reader = HFLVLMReader.from_pretrained(llava_dir, get_task("breastmnist"))
    cached = CachedReader(reader)
    two = cases[:2]
    candidates = [kb_items[:3], [kb_items[2], None, kb_items[0]]]
    want = reader.score(two, candidates)
    got = cached.score(two, candidates)
    assert got.case_ids == want.case_ids and got.candidate_ids == want.candidate_ids
    np.testing.assert_allclose(got.log_probs, want.log_probs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.raw_log_likelihoods, want.raw_log_likelihoods, rtol=0, atol=1e-9)
    assert got.parsed is None and got.labels == want.labels
    # Served from memory the second time (the wrapped model is not called: 0 misses added).
    again = cached.score(two, candidates)
    assert (cached.misses, cached.hits) == (6, 6)
    np.testing.assert_array_equal(again.log_probs, got.log_probs)
