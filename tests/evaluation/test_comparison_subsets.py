"""``compare_rows(subsets_from=...)`` and ``ConsistencyReport.compare(subsets_from=...)``.

Hand-made rows of six cases for three systems: ``sys`` (compared), ``base`` (baseline) and
``ref`` (a third system whose consistency defines the subsets):

=====  ===========  ============  ============  ===========
case   sys correct  base correct  base consist  ref consist
=====  ===========  ============  ============  ===========
c1     1            0             yes           yes
c2     1            0             yes           no
c3     0            1             no            yes
c4     1            0             no            no
c5     1            0             yes           no
c6     1            1             no            yes
=====  ===========  ============  ============  ===========

Subsets by ``ref``: consistent {c1, c3, c6}, inconsistent {c2, c4, c5}.
Subsets by ``base``: consistent {c1, c2, c5}, inconsistent {c3, c4, c6}.
"""

from __future__ import annotations

import math

import pytest

from llama_index_lvlm_retriever.evaluation.comparison import PairedComparison, compare_rows
from llama_index_lvlm_retriever.evaluation.predictions import evaluate_predictions
from llama_index_lvlm_retriever.evaluation.records import CaseResult

IDS = ("c1", "c2", "c3", "c4", "c5", "c6")
SYS_CORRECT = (1, 1, 0, 1, 1, 1)
BASE_CORRECT = (0, 0, 1, 0, 0, 1)
BASE_CONSISTENT = (True, True, False, False, True, False)
REF_CONSISTENT = (True, False, True, False, False, True)
REF_CORRECT = (0, 0, 0, 0, 0, 0)  # must not matter: only ref's consistency is read


def _row(case_id: str, correct: int, consistent: bool) -> CaseResult:
    answer = "A" if correct else "B"
    return CaseResult(
        case_id=case_id, gold=("A",), prediction=(answer,), correct=bool(correct), probability=0.6,
        distribution=(0.6, 0.4) if correct else (0.4, 0.6), neighbour_ids=(), neighbour_labels=(),
        retrieval_scores=None, neighbour_distributions=((0.6, 0.4),), neighbour_predictions=((answer,),),
        neighbour_correct=(bool(correct),), consistent=consistent, agreement=1.0 if consistent else 0.5,
        vote_entropy=0.0 if consistent else 1.0, n_distinct=1 if consistent else 2, majority=(answer,),
    )


def _rows(correct: tuple[int, ...], consistent: tuple[bool, ...], ids: tuple[str, ...] = IDS) -> list[CaseResult]:
    return [_row(i, c, s) for i, c, s in zip(ids, correct, consistent)]


SYS = _rows(SYS_CORRECT, (True,) * 6)
BASE = _rows(BASE_CORRECT, BASE_CONSISTENT)
REF = _rows(REF_CORRECT, REF_CONSISTENT)


def _by_subset(comparisons: list[PairedComparison]) -> dict[str, PairedComparison]:
    assert [c.subset for c in comparisons] == ["all", "consistent", "inconsistent"]
    return {c.subset: c for c in comparisons}


def _check(c: PairedComparison, n: int, acc: float, base_acc: float, b: int, c_: int, p: float) -> None:
    assert c.n_cases == n
    assert c.accuracy == pytest.approx(acc)
    assert c.baseline_accuracy == pytest.approx(base_acc)
    assert c.difference.value == pytest.approx(acc - base_acc)
    assert (c.n_system_only, c.n_baseline_only) == (b, c_)
    assert c.p_value == pytest.approx(p)


def test_subsets_from_a_third_system() -> None:
    out = _by_subset(compare_rows("sys", SYS, "base", BASE, n_bootstrap=200, seed=0, subsets_from=REF))
    # all: sys 5/6, base 2/6; b = {c1, c2, c4, c5}, c = {c3}: p = 2 (1 + 5) / 2^5
    _check(out["all"], 6, 5 / 6, 2 / 6, 4, 1, 12 / 32)
    # ref-consistent {c1, c3, c6}: sys 1 0 1, base 0 1 1; b = {c1}, c = {c3}: p = min(1, 2 * 3/4) = 1
    _check(out["consistent"], 3, 2 / 3, 2 / 3, 1, 1, 1.0)
    # ref-inconsistent {c2, c4, c5}: sys 1 1 1, base 0 0 0; b = 3, c = 0: p = 2 / 2^3
    _check(out["inconsistent"], 3, 1.0, 0.0, 3, 0, 0.25)
    assert out["inconsistent"].difference.ci_low == pytest.approx(1.0)  # every resample: +1 on each case
    assert all(c.system == "sys" and c.baseline == "base" for c in out.values())


def test_default_subsets_are_the_baselines() -> None:
    default = _by_subset(compare_rows("sys", SYS, "base", BASE, n_bootstrap=200, seed=0))
    _check(default["all"], 6, 5 / 6, 2 / 6, 4, 1, 12 / 32)
    # base-consistent {c1, c2, c5}: sys 1 1 1, base 0 0 0
    _check(default["consistent"], 3, 1.0, 0.0, 3, 0, 0.25)
    # base-inconsistent {c3, c4, c6}: sys 0 1 1, base 1 0 1; b = {c4}, c = {c3}
    _check(default["inconsistent"], 3, 2 / 3, 2 / 3, 1, 1, 1.0)
    # subsets_from=baseline rows is the same comparison as the default, intervals included
    explicit = compare_rows("sys", SYS, "base", BASE, n_bootstrap=200, seed=0, subsets_from=BASE)
    assert explicit == list(default.values())


def test_subsets_from_must_match_case_ids() -> None:
    with pytest.raises(ValueError, match="subsets_from must hold the same cases"):
        compare_rows("sys", SYS, "base", BASE, n_bootstrap=10, subsets_from=REF[::-1])
    with pytest.raises(ValueError, match="subsets_from must hold the same cases"):
        compare_rows("sys", SYS, "base", BASE, n_bootstrap=10, subsets_from=REF[:5])
    other = _rows(REF_CORRECT, REF_CONSISTENT, ids=("c1", "c2", "c3", "c4", "c5", "x6"))
    with pytest.raises(ValueError, match="subsets_from must hold the same cases"):
        compare_rows("sys", SYS, "base", BASE, n_bootstrap=10, subsets_from=other)


def test_report_compare_subsets_from(task, predictions) -> None:
    # The shared fixture (tests/evaluation/conftest.py): aware is right on all but c5, closed-book
    # on c1 c3 c5; closed-book (k = 1) is consistent everywhere, rag only on c3 and c4.
    report = evaluate_predictions(predictions, task, baseline="rag", n_bootstrap=50, seed=0)
    by_rag = _by_subset(report.compare("aware", "closed-book", n_bootstrap=50, subsets_from="rag"))
    _check(by_rag["all"], 6, 5 / 6, 3 / 6, 3, 1, 2 * (1 + 4) / 16)  # b = {c2, c4, c6}, c = {c5}
    _check(by_rag["consistent"], 2, 1.0, 0.5, 1, 0, 1.0)  # {c3, c4}: b = {c4}
    # {c1, c2, c5, c6}: aware 1 1 0 1, closed-book 1 0 1 0; b = {c2, c6}, c = {c5}: p = 2 (1 + 3) / 8 -> 1
    _check(by_rag["inconsistent"], 4, 3 / 4, 2 / 4, 2, 1, 1.0)
    default = _by_subset(report.compare("aware", "closed-book", n_bootstrap=50))
    assert default["consistent"].n_cases == 6 and default["inconsistent"].n_cases == 0
    assert math.isnan(default["inconsistent"].accuracy)
    with pytest.raises(KeyError, match="unknown system 'nope'"):
        report.compare("aware", "closed-book", subsets_from="nope")
