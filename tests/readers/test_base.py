from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs
from llama_index_lvlm_retriever.tasks import TaskSpec, get_task


class _FixedReader(Reader):
    """Scores label ``len(candidate.text) % L`` with probability 1/2, the rest evenly."""

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.calls: list[list[list[str | None]]] = []

    def score(
        self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem | None]], *, show_progress: bool = False
    ) -> ReaderScores:
        k = check_inputs(cases, candidates)
        self.calls.append([[None if c is None else c.id for c in row] for row in candidates])
        n_labels = self.task.n_labels
        probs = np.full((len(cases), k, n_labels), 0.5 / (n_labels - 1))
        for i, row in enumerate(candidates):
            for j, item in enumerate(row):
                probs[i, j, 0 if item is None else len(item.text) % n_labels] = 0.5
        return ReaderScores(log_probs=np.log(probs), labels=self.task.labels)


def test_closed_book_and_predict_go_through_score() -> None:
    reader = _FixedReader(get_task("retinamnist"))
    cases = [Case(id="a", image_path="a.png"), Case(id="b", image_path="b.png")]
    closed = reader.score_closed_book(cases)
    assert closed.shape == (2, 1, 5) and reader.calls[-1] == [[None], [None]]
    items = [KBItem(id="x", image_path="", text="abc"), KBItem(id="y", image_path="", text="abcdefg")]
    # len("abc") % 5 = 3, len("abcdefg") % 5 = 2
    assert reader.predict(cases, [items, items[::-1]]) == [["3", "2"], ["2", "3"]]


def test_predictions_single_label_argmax_first_on_ties() -> None:
    log_probs = np.log(np.array([[[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]]]))
    scores = ReaderScores(log_probs=log_probs, labels=("a", "b", "c"))
    assert scores.predictions() == [["b", "a"]]
    np.testing.assert_allclose(scores.probs.sum(-1), 1.0)


def test_predictions_multi_label_threshold_and_unparsed() -> None:
    p_yes = np.array([[[0.9, 0.5, 0.1], [0.2, 0.3, 0.4]], [[0.6, 0.7, 0.51], [0.99, 0.0, 0.0]]])
    parsed = np.array([[True, True], [True, False]])
    with np.errstate(divide="ignore"):  # log(0) = -inf is a legal log-probability
        log_p = np.log(p_yes)
    scores = ReaderScores(log_probs=log_p, parsed=parsed, labels=("a", "b", "c"), multi_label=True)
    # P >= 0.5 is "present"; a pair with an unparseable answer predicts "".
    assert scores.predictions() == [["a|b", ""], ["a|b|c", ""]]
    assert ReaderScores(log_probs=log_p[:1, :1], labels=("a", "b", "c"), multi_label=True).predictions() == [["a|b"]]


def test_reader_scores_validate_shapes() -> None:
    good = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"log_probs must be \(n_cases, k, n_labels\), got shape \(2, 3\)"):
        ReaderScores(log_probs=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"raw_log_likelihoods has shape \(2, 3\), expected \(2, 3, 4\)"):
        ReaderScores(log_probs=good, raw_log_likelihoods=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"parsed has shape \(3,\), expected \(2, 3\)"):
        ReaderScores(log_probs=good, parsed=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="3 label names for 4 label columns"):
        ReaderScores(log_probs=good, labels=("a", "b", "c"))
    with pytest.raises(ValueError, match="1 case ids for 2 cases"):
        ReaderScores(log_probs=good, case_ids=("a",))
    with pytest.raises(ValueError, match="carry no label names"):
        ReaderScores(log_probs=good).predictions()


def test_check_inputs_errors() -> None:
    cases = [Case(id="a", image_path="a.png"), Case(id="b", image_path="b.png")]
    item = KBItem(id="x", image_path="", text="t")
    assert check_inputs(cases, [[item, None], [None, item]]) == 2
    assert check_inputs([], []) == 0
    with pytest.raises(ValueError, match="got 2 cases but 1 candidate lists"):
        check_inputs(cases, [[item]])
    with pytest.raises(ValueError, match="case 'b' has 1 candidates but case 'a' has 2"):
        check_inputs(cases, [[item, item], [item]])
    with pytest.raises(ValueError, match="case 'a': candidate of type str is not a KBItem"):
        check_inputs(cases[:1], [["x.png"]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="k = 0 candidates per case"):
        check_inputs(cases, [[], []])


def test_ascore_defaults_to_score_in_a_thread() -> None:
    import asyncio

    reader = _FixedReader(get_task("breastmnist"))
    cases = [Case(id="a", image_path="a.png")]
    scores = asyncio.run(reader.ascore(cases, [[None]]))
    assert scores.log_probs[0, 0].tolist() == pytest.approx([math.log(0.5), math.log(0.5)])
