"""ConsistencyEvaluator on hand-made diagnosis responses, alone and under BatchEvalRunner."""

from __future__ import annotations

import math
from typing import Any

import pytest
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import Response
from llama_index.core.evaluation import BatchEvalRunner
from llama_index.core.schema import QueryBundle

from llama_index_lvlm_retriever.evaluation.consistency_evaluator import ConsistencyEvaluator
from llama_index_lvlm_retriever.outputs import metadata_keys as keys


def metadata(votes: list[tuple[str, str, float]], label: str, abstain: bool = False) -> dict[str, Any]:
    """Response metadata as LVLMDiagnosisQueryEngine writes it; votes are (kb_id, label, probability)."""
    k = len(votes)
    counts = {v: sum(1 for _, lab, _ in votes if lab == v) for _, v, _ in votes}
    return {
        keys.ANSWER: label,
        keys.PROBABILITY: 0.7,
        keys.DISTRIBUTION: {"grade 1": 0.3, "grade 2": 0.7},
        keys.CONSISTENT: len(counts) == 1,
        keys.AGREEMENT: max(counts.values()) / k,
        keys.VOTE_ENTROPY: 0.0,
        keys.N_DISTINCT: len(counts),
        keys.NEIGHBOURS: [
            {keys.NEIGHBOUR_KB_ID: kb, keys.NEIGHBOUR_PREDICTION: lab, keys.NEIGHBOUR_PROBABILITY: p} for kb, lab, p in votes
        ],
        keys.ABSTAIN: abstain,
    }


SPLIT = metadata([("kb1", "grade 2", 0.9), ("kb2", "grade 2", 0.8), ("kb3", "grade 1", 0.61), ("kb4", "grade 2", 0.7)], "grade 2")
UNANIMOUS = metadata([("kb1", "grade 2", 0.9), ("kb2", "grade 2", 0.8)], "grade 2")


def test_split_vote_response() -> None:
    result = ConsistencyEvaluator().evaluate_response(query="DR grade?", response=Response("grade 2", metadata=SPLIT))
    # 3 of 4 neighbours voted grade 2
    assert (result.score, result.passing, result.invalid_result) == (0.75, False, False)
    assert result.feedback == (
        "3 of 4 neighbours led to 'grade 2' (agreement 0.75); disagreeing: kb3 -> 'grade 1' (p=0.61)."
    )
    assert result.contexts == ["kb1", "kb2", "kb3", "kb4"]
    assert (result.query, result.response) == ("DR grade?", "grade 2")


def test_unanimous_and_threshold() -> None:
    result = ConsistencyEvaluator().evaluate_response(response=Response("grade 2", metadata=UNANIMOUS))
    assert (result.score, result.passing) == (1.0, True)
    assert result.feedback == "All 2 neighbours led to 'grade 2' (agreement 1.00)."
    lenient = ConsistencyEvaluator(min_agreement=0.75)
    assert lenient.evaluate_response(response=Response("grade 2", metadata=SPLIT)).passing is True
    strict = ConsistencyEvaluator(min_agreement=0.8)
    assert strict.evaluate_response(response=Response("grade 2", metadata=SPLIT)).passing is False


def test_multi_label_and_abstain_feedback() -> None:
    meta = metadata([("kb1", "x", 0.9)], "x", abstain=True)
    meta[keys.ANSWER] = ["y", "x"]
    meta[keys.NEIGHBOURS] = [
        {keys.NEIGHBOUR_KB_ID: "kb1", keys.NEIGHBOUR_PREDICTION: ["x", "y"], keys.NEIGHBOUR_PROBABILITY: 0.5},
        {keys.NEIGHBOUR_KB_ID: "kb2", keys.NEIGHBOUR_PREDICTION: ["x"], keys.NEIGHBOUR_PROBABILITY: 0.4},
    ]
    meta[keys.AGREEMENT], meta[keys.CONSISTENT] = 0.5, False
    result = ConsistencyEvaluator().evaluate_response(response=Response("x, y", metadata=meta))
    assert result.feedback == (
        "1 of 2 neighbours led to {'x', 'y'} (agreement 0.50); disagreeing: kb2 -> {'x'} (p=0.40). "
        "The engine abstained."
    )


def test_foreign_responses_are_invalid_not_errors() -> None:
    evaluator = ConsistencyEvaluator()
    plain = evaluator.evaluate_response(response=Response("grade 2"))
    assert plain.invalid_result and "carries no metadata" in plain.invalid_reason
    partial = evaluator.evaluate_response(response=Response("grade 2", metadata={keys.ANSWER: "grade 2"}))
    assert partial.invalid_result
    assert "lacks ['consistent', 'agreement', 'neighbours']" in partial.invalid_reason
    with pytest.raises(ValueError, match="needs the per-neighbour answers in the response metadata"):
        evaluator.evaluate(query="q", response="grade 2")
    with pytest.raises(ValueError, match=r"min_agreement must be in \(0, 1\] or None, got 0"):
        ConsistencyEvaluator(min_agreement=0)
    assert ConsistencyEvaluator.class_name() == "ConsistencyEvaluator"


class FakeDiagnosisEngine(BaseQueryEngine):
    """Answers every query with fixed metadata: 'split' queries get the split vote."""

    def __init__(self) -> None:
        super().__init__(callback_manager=None)

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}

    def _query(self, query_bundle: QueryBundle) -> Response:
        meta = SPLIT if "split" in query_bundle.query_str else UNANIMOUS
        return Response("grade 2", metadata=dict(meta))

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        return self._query(query_bundle)


@pytest.mark.filterwarnings("ignore:asyncio_module.. is deprecated:DeprecationWarning")  # inside llama-index-core
def test_batch_eval_runner_with_responses_and_a_query_engine() -> None:
    runner = BatchEvalRunner({"consistency": ConsistencyEvaluator()}, workers=2)
    responses = [Response("grade 2", metadata=SPLIT), Response("grade 2", metadata=UNANIMOUS)]
    results = runner.evaluate_responses(queries=["q1", "q2"], responses=responses)["consistency"]
    assert [r.score for r in results] == [0.75, 1.0]
    assert [r.passing for r in results] == [False, True]
    via_engine = runner.evaluate_queries(FakeDiagnosisEngine(), queries=["split case", "clear case", "split again"])
    scored = via_engine["consistency"]
    assert [r.score for r in scored] == [0.75, 1.0, 0.75]
    summary = ConsistencyEvaluator.summarize(scored + [ConsistencyEvaluator().evaluate_response(response=Response("x"))], "lvlm")
    # valid: 0.75, 1.0, 0.75 -> mean 2.5 / 3; consistent 1 of 3; one invalid
    assert summary["lvlm_agreement"] == pytest.approx(2.5 / 3)
    assert summary["lvlm_consistent_rate"] == pytest.approx(1 / 3)
    assert (summary["lvlm_n_valid"], summary["lvlm_invalid"]) == (3.0, 1.0)
    assert math.isnan(ConsistencyEvaluator.summarize([])["consistency_agreement"])
