"""Hand-written per-neighbour predictions shared by the evaluation tests.

Single-label fixture: labels A, B, C; six cases; three systems (mean aggregation: no retrieval
scores, so ``"weighted"`` is the plain mean of the neighbour rows).

=====  ====  =====================================  =========  ==========  ===========
case   gold  "rag" neighbour rows (votes)           rag pred   "aware"     closed-book
=====  ====  =====================================  =========  ==========  ===========
c1     A     rA, rA, rB (A A B)                     A  right   rA x3   A   rA  A right
c2     B     rA, B9 (A B: a 1-1 tie)                B  right   rB x2   B   rA  A wrong
c3     C     B8 (one neighbour)                     B  wrong   rC x3   C   rC  C right
c4     A     rA, rA, rA (all A)                     A  right   rA x3   A   rB  B wrong
c5     B     rC, rC, rB (C C B)                     C  wrong   rC x3   C!  rB  B right
c6     C     C9, rA, rB (C A B: a 1-1-1 tie)        C  right   rC x3   C   rA  A wrong
=====  ====  =====================================  =========  ==========  ===========

"aware" is consistent on every case (one wrong answer, c5); "rag" is consistent on c3 and c4 only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from llama_index_lvlm_retriever.evaluation.records import CasePrediction

LABELS = ("A", "B", "C")
GOLD = {"c1": "A", "c2": "B", "c3": "C", "c4": "A", "c5": "B", "c6": "C"}

RA = [0.8, 0.1, 0.1]
RB = [0.1, 0.8, 0.1]
RC = [0.1, 0.1, 0.8]
B9 = [0.05, 0.9, 0.05]
B8 = [0.15, 0.8, 0.05]
C9 = [0.05, 0.05, 0.9]

RAG_ROWS = {
    "c1": [RA, RA, RB],
    "c2": [RA, B9],
    "c3": [B8],
    "c4": [RA, RA, RA],
    "c5": [RC, RC, RB],
    "c6": [C9, RA, RB],
}
# Knowledge-base labels of rag's neighbours (None = unlabelled; c6 has none labelled).
RAG_NEIGHBOUR_LABELS = {
    "c1": ("A", "A", "B"),
    "c2": ("A", "B"),
    "c3": ("B",),
    "c4": ("A", "A", None),
    "c5": ("C", "C", "B"),
    "c6": (None, None, None),
}
AWARE_ROWS = {
    "c1": [RA] * 3,
    "c2": [RB] * 2,
    "c3": [RC] * 3,
    "c4": [RA] * 3,
    "c5": [RC] * 3,
    "c6": [RC] * 3,
}
CLOSED_BOOK_ROWS = {"c1": [RA], "c2": [RA], "c3": [RC], "c4": [RB], "c5": [RB], "c6": [RA]}


@dataclass(frozen=True)
class FakeTask:
    """The two fields of ``TaskSpec`` the evaluator reads."""

    labels: tuple[str, ...]
    multi_label: bool = False


def _predictions(rows: dict[str, list[list[float]]], with_neighbours: bool) -> list[CasePrediction]:
    out = []
    for case_id, dists in rows.items():
        k = len(dists)
        out.append(
            CasePrediction(
                case_id=case_id,
                gold=(GOLD[case_id],),
                distributions=np.array(dists),
                neighbour_ids=tuple(f"{case_id}-n{j}" for j in range(k)) if with_neighbours else (),
                neighbour_labels=RAG_NEIGHBOUR_LABELS[case_id] if with_neighbours else (),
            )
        )
    return out


@pytest.fixture
def task() -> FakeTask:
    return FakeTask(LABELS)


@pytest.fixture
def predictions() -> dict[str, list[CasePrediction]]:
    """closed-book, rag, aware (in that order); rag is the natural baseline."""
    return {
        "closed-book": _predictions(CLOSED_BOOK_ROWS, with_neighbours=False),
        "rag": _predictions(RAG_ROWS, with_neighbours=True),
        "aware": _predictions(AWARE_ROWS, with_neighbours=False),
    }


@pytest.fixture
def multi_label_predictions() -> tuple[FakeTask, dict[str, list[CasePrediction]]]:
    """Labels x, y. m1 gold {x}: rows -> {x}, {x}; m2 gold {x, y}: rows -> {x, y}, {x}; m3 gold {}: one row -> {}."""
    preds = [
        CasePrediction("m1", ("x",), np.array([[0.9, 0.2], [0.7, 0.4]])),
        CasePrediction("m2", ("x", "y"), np.array([[0.8, 0.6], [0.6, 0.3]])),
        CasePrediction("m3", (), np.array([[0.2, 0.1]])),
    ]
    return FakeTask(("x", "y"), multi_label=True), {"ml": preds}
