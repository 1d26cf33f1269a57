"""The tie order of a head's hits (kb/tie_order.py): score with a 1e-6 tolerance, the other modality, the id."""

from __future__ import annotations

import numpy as np

from llama_index_lvlm_retriever.kb.tie_order import TIE_EPS, needs_deeper_search, tie_order


def test_ties_go_by_the_other_modality_then_the_id() -> None:
    scores = np.array([0.5, 0.9, 0.9 - TIE_EPS / 2, 0.9, 0.7])  # b, c, d tie (c within the tolerance)
    other = np.array([0.0, 0.1, 0.3, 0.1, 0.9])
    assert tie_order(scores, other, ["a", "b", "c", "d", "e"]) == [2, 1, 3, 4, 0]  # c (0.3), then b < d by id
    assert tie_order(np.array([0.9, 0.8]), np.array([0.0, 1.0]), ["x", "y"]) == [0, 1]  # no tie: score decides
    assert tie_order(np.zeros(0), np.zeros(0), []) == []


def test_a_deeper_search_is_asked_only_while_the_cut_may_split_a_tie() -> None:
    pos = {c: i for i, c in enumerate("abcde")}
    assert needs_deeper_search([("a", 0.9), ("b", 0.5), ("c", 0.5)], pos, set(), 2, 3)
    assert not needs_deeper_search([("a", 0.9), ("b", 0.5), ("c", 0.4)], pos, set(), 2, 3)
    assert not needs_deeper_search([("a", 0.9), ("b", 0.5)], pos, set(), 2, 3)  # the backend had no more
    # "a" is excluded: the 2nd kept hit is c (0.5), tied with the last fetched d.
    assert needs_deeper_search([("a", 0.9), ("b", 0.6), ("c", 0.5), ("d", 0.5)], pos, {0}, 2, 4)
    assert not needs_deeper_search([("a", 0.9), ("b", 0.6), ("c", 0.5), ("d", 0.4)], pos, {0}, 2, 4)
