"""ConsistencyEvaluator: a LlamaIndex evaluator of retrieval consistency for one diagnosis response.

It reads the metadata ``LVLMDiagnosisQueryEngine`` puts on its ``Response`` (keys in
:mod:`llama_index_lvlm_retriever.outputs.metadata_keys`) and needs no LLM: the score is the neighbours'
agreement, the response passes when they all led to the same answer, and the feedback names the
neighbours that disagreed. It works with ``BatchEvalRunner`` like any core evaluator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.response.schema import Response
from llama_index.core.evaluation.base import BaseEvaluator, EvaluationResult

from llama_index_lvlm_retriever.outputs import metadata_keys as keys

__all__ = ["ConsistencyEvaluator"]

_REQUIRED = (keys.ANSWER, keys.CONSISTENT, keys.AGREEMENT, keys.NEIGHBOURS)


class ConsistencyEvaluator(BaseEvaluator):
    """Scores how consistently the retrieved neighbours led the reader to the answer.

    ``score`` is the agreement (share of neighbours whose own answer is the majority answer),
    ``passing`` is whether every neighbour agreed (or, with ``min_agreement``, whether the
    agreement reaches it), and ``feedback`` names the disagreeing neighbours and their answers.
    A response without the query engine's metadata gives an ``invalid_result`` naming the missing
    keys, so one foreign response does not abort a batch run.

    Args:
        min_agreement: Pass when ``agreement >= min_agreement`` instead of requiring a unanimous
            vote; ``None`` (default) passes exactly the consistent responses.

    Raises:
        ValueError: ``min_agreement`` is outside ``(0, 1]``.

    Example:
        .. code-block:: python

            from llama_index.core.evaluation import BatchEvalRunner

            evaluator = ConsistencyEvaluator()
            result = evaluator.evaluate_response(query="DR grade?", response=engine.query(bundle))
            result.score, result.passing, result.feedback

            runner = BatchEvalRunner({"consistency": evaluator})
            results = runner.evaluate_responses(queries=questions, responses=responses)
            ConsistencyEvaluator.summarize(results["consistency"], name="lvlm_aware")
    """

    primary_metric = "agreement"
    greater_is_better = True

    def __init__(self, min_agreement: float | None = None) -> None:
        if min_agreement is not None and not 0.0 < min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in (0, 1] or None, got {min_agreement!r}")
        self._min_agreement = min_agreement

    @classmethod
    def class_name(cls) -> str:
        """Stable class name for serialisation."""
        return "ConsistencyEvaluator"

    @property
    def min_agreement(self) -> float | None:
        """The agreement threshold, or ``None`` for "unanimous"."""
        return self._min_agreement

    def _get_prompts(self) -> dict[str, Any]:
        return {}  # no LLM, no prompts

    def _update_prompts(self, prompts_dict: Mapping[str, Any]) -> None:
        return None

    def evaluate(
        self,
        query: str | None = None,
        response: str | None = None,
        contexts: Sequence[str] | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        """Evaluate from the query engine's response metadata (no LLM, so no event loop needed).

        Args:
            query: The question (echoed in the result).
            response: The response text (echoed in the result).
            contexts: Context strings (echoed; default: the neighbours' knowledge-base ids).
            metadata: ``Response.metadata`` of ``LVLMDiagnosisQueryEngine``.
            **kwargs: Ignored (accepted for ``BatchEvalRunner``'s keyword arguments).

        Returns:
            The evaluation result; ``invalid_result`` when ``metadata`` lacks required keys.

        Raises:
            ValueError: ``metadata`` is not given (strings alone carry no per-neighbour answers).
        """
        if metadata is None:
            raise ValueError(
                "ConsistencyEvaluator needs the per-neighbour answers in the response metadata; call "
                "evaluate_response(response=...) with a Response from LVLMDiagnosisQueryEngine, or pass metadata="
            )
        missing = [key for key in _REQUIRED if key not in metadata]
        if missing:
            return EvaluationResult(
                query=query,
                response=response,
                contexts=contexts,
                invalid_result=True,
                invalid_reason=(
                    f"response metadata lacks {missing}; evaluate responses of LVLMDiagnosisQueryEngine "
                    "(LVLMRerank writes these keys)"
                ),
            )
        neighbours = list(metadata[keys.NEIGHBOURS])
        agreement = float(metadata[keys.AGREEMENT])
        consistent = bool(metadata[keys.CONSISTENT])
        # agreement is a ratio of small integers; the epsilon only absorbs float round-off
        passing = consistent if self._min_agreement is None else agreement >= self._min_agreement - 1e-12
        if contexts is None:
            contexts = [str(n.get(keys.NEIGHBOUR_KB_ID, "?")) for n in neighbours]
        return EvaluationResult(
            query=query,
            response=response,
            contexts=contexts,
            passing=passing,
            score=agreement,
            feedback=_feedback(metadata, neighbours, agreement),
        )

    async def aevaluate(
        self,
        query: str | None = None,
        response: str | None = None,
        contexts: Sequence[str] | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        """Async form of :meth:`evaluate` (same arguments)."""
        return self.evaluate(query=query, response=response, contexts=contexts, metadata=metadata, **kwargs)

    def evaluate_response(
        self,
        query: str | None = None,
        response: Response | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        """Evaluate a ``Response`` of ``LVLMDiagnosisQueryEngine`` (reads ``response.metadata``).

        A missing response or metadata gives an ``invalid_result`` rather than an exception.
        """
        if response is None or not response.metadata:
            return EvaluationResult(
                query=query,
                response=None if response is None else response.response,
                invalid_result=True,
                invalid_reason="the response carries no metadata; evaluate responses of LVLMDiagnosisQueryEngine",
            )
        return self.evaluate(query=query, response=response.response, metadata=response.metadata, **kwargs)

    async def aevaluate_response(
        self,
        query: str | None = None,
        response: Response | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        """Async form of :meth:`evaluate_response` (what ``BatchEvalRunner`` calls)."""
        return self.evaluate_response(query=query, response=response, **kwargs)

    @staticmethod
    def summarize(results: Sequence[EvaluationResult], name: str = "consistency") -> dict[str, float]:
        """Flat metrics over many results: ``<name>_agreement``, ``<name>_consistent_rate``, ...

        Invalid results are counted (``<name>_invalid``) and left out of the means.

        Args:
            results: Results of this evaluator.
            name: Key prefix.

        Returns:
            ``{<name>_agreement, <name>_consistent_rate, <name>_n_valid, <name>_invalid}``; the
            means are NaN when no result is valid.
        """
        valid = [r for r in results if not r.invalid_result and r.score is not None]
        n = len(valid)
        return {
            f"{name}_agreement": sum(r.score for r in valid) / n if n else math.nan,
            f"{name}_consistent_rate": sum(bool(r.passing) for r in valid) / n if n else math.nan,
            f"{name}_n_valid": float(n),
            f"{name}_invalid": float(len(results) - n),
        }


def _feedback(metadata: Mapping[str, Any], neighbours: list[Mapping[str, Any]], agreement: float) -> str:
    answer = _label_text(metadata[keys.ANSWER])
    k = len(neighbours)
    abstain = " The engine abstained." if metadata.get(keys.ABSTAIN) else ""
    if k == 0:
        return f"No neighbour predictions were recorded for the answer {answer}.{abstain}"
    dissent = [n for n in neighbours if _label_text(n.get(keys.NEIGHBOUR_PREDICTION)) != answer]
    if not dissent:
        return f"All {k} neighbours led to {answer} (agreement {agreement:.2f}).{abstain}"
    parts = []
    for n in dissent:
        probability = n.get(keys.NEIGHBOUR_PROBABILITY)
        p = "" if probability is None else f" (p={float(probability):.2f})"
        parts.append(f"{n.get(keys.NEIGHBOUR_KB_ID, '?')} -> {_label_text(n.get(keys.NEIGHBOUR_PREDICTION))}{p}")
    return (
        f"{k - len(dissent)} of {k} neighbours led to {answer} (agreement {agreement:.2f}); "
        f"disagreeing: {', '.join(parts)}.{abstain}"
    )


def _label_text(label: Any) -> str:
    """Quote a label; a multi-label answer (list of names) reads as a sorted set."""
    if isinstance(label, (list, tuple, set, frozenset)):
        return "{" + ", ".join(repr(str(x)) for x in sorted(map(str, label))) + "}"
    return repr(str(label))
