"""LVLMDiagnosisQueryEngine: retrieve, read each neighbour with the LVLM, answer with a confidence.

One query runs the paper's inference (arXiv 2508.17394): a retriever finds image-text pairs for
the query image, :class:`~llama_index_lvlm_retriever.postprocessor.LVLMRerank` reads the query with
each pair, fuses the answers and reranks the pairs, and the engine returns the answer with its
probability, its support among the neighbours, the per-neighbour predictions and an abstain
recommendation when too few neighbours support the answer shown.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import Response
from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle

from llama_index_lvlm_retriever.aggregation import (
    DEFAULT_TEMPERATURE,
    AggregationMethod,
    RerankMethod,
)
from llama_index_lvlm_retriever.heads import QueryHead
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.postprocessor import (
    NO_IMAGE_MESSAGE,
    LVLMRerank,
    LVLMRerankResult,
    TextOnlyMode,
)
from llama_index_lvlm_retriever.readers.base import Reader
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.retriever.fusion import DEFAULT_HEAD_FUSION, HeadFusion

logger = logging.getLogger(__name__)

__all__ = ["LVLMDiagnosisQueryEngine"]


class LVLMDiagnosisQueryEngine(BaseQueryEngine):
    """Retriever + :class:`LVLMRerank` + reader as one LlamaIndex query engine.

    ``query(QueryBundle(question, image_path=...))`` returns a ``Response`` whose text is the answer
    in words, whose ``source_nodes`` are the reranked evidence and whose ``metadata`` holds the keys
    of :mod:`~llama_index_lvlm_retriever.outputs.metadata_keys`: the label, its probability, the aggregated
    distribution, the consistency statistics, the answer's support (``support``: the share of
    neighbours whose own prediction is the answer shown, and its retrieval-weighted form), the
    per-neighbour predictions (each with the head that found it) and ``abstain`` (``True`` when the
    support is below ``min_support``). ``consistent`` keeps its meaning: all neighbours agree.
    ``agreement`` is the *majority's* share, which can back another label than the answer under
    weighted aggregation; abstention never uses it. ``ConsistencyEvaluator`` evaluates these
    responses.

    Args:
        retriever: Any retriever returning (image) nodes for a ``QueryBundle`` with ``image_path``.
        rerank: The reading/aggregating postprocessor (it holds the reader).
        min_support: Recommend abstaining when the share of neighbours whose own prediction is the
            answer shown is below this, in ``(0, 1]``; the default 1.0 abstains unless every
            neighbour leads to the answer.
        callback_manager: LlamaIndex callback manager.

    Raises:
        ValueError: ``min_support`` outside ``(0, 1]``.

    Example:
        .. code-block:: python

            from llama_index.core.schema import QueryBundle
            from llama_index_lvlm_retriever.query_engine import LVLMDiagnosisQueryEngine

            engine = LVLMDiagnosisQueryEngine.from_defaults(knowledge_base=kb, reader=reader, top_n=2)
            response = engine.query(QueryBundle("Which DR grade?", image_path="eye.png"))
            print(response.response, response.metadata["probability"], response.metadata["abstain"])
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        rerank: LVLMRerank,
        *,
        min_support: float = 1.0,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if not 0.0 < min_support <= 1.0:
            raise ValueError(f"min_support must be in (0, 1], got {min_support!r}")
        if not isinstance(rerank, LVLMRerank):
            raise ValueError(f"rerank must be an LVLMRerank, got {type(rerank).__name__}")
        self._retriever = retriever
        self._rerank = rerank
        self._min_support = float(min_support)
        super().__init__(callback_manager=callback_manager or retriever.callback_manager)

    @classmethod
    def from_defaults(
        cls,
        *,
        reader: Reader,
        knowledge_base: KnowledgeBase | None = None,
        retriever: BaseRetriever | None = None,
        image_head: QueryHead | None = None,
        text_head: QueryHead | None = None,
        k_image: int = 2,
        k_text: int = 2,
        question_weight: float = 0.0,
        top_n: int | None = None,
        aggregation: AggregationMethod = "weighted",
        rerank_method: RerankMethod = "posterior",
        temperature: float = DEFAULT_TEMPERATURE,
        text_only: TextOnlyMode = "background",
        skip_unreadable: bool = False,
        head_fusion: HeadFusion = DEFAULT_HEAD_FUSION,
        min_support: float = 1.0,
        callback_manager: CallbackManager | None = None,
        exclude_self: bool = False,
        allow_other_kb: bool = False,
    ) -> LVLMDiagnosisQueryEngine:
        """Build the engine from a knowledge base (or a ready retriever) and a reader.

        Args:
            reader: The LVLM reader.
            knowledge_base: Builds an :class:`LVLMAwareRetriever` with the heads and ``k_*``.
            retriever: A ready retriever instead of ``knowledge_base`` (exclusive).
            image_head: Trained image head (``None`` = identity, standard RAG).
            text_head: Trained text head (``None`` = identity).
            k_image: Neighbours from the image head.
            k_text: Neighbours from the text head.
            question_weight: Weight of the question's embedding in the query vector.
            top_n: Evidence nodes kept after reranking (``None`` = all).
            aggregation: See :class:`LVLMRerank`.
            rerank_method: See :class:`LVLMRerank`.
            temperature: See :class:`LVLMRerank`.
            text_only: See :class:`LVLMRerank`.
            skip_unreadable: See :class:`LVLMRerank`.
            head_fusion: Per-head score normalisation of the built retriever (default ``"max"``).
            min_support: Abstain when the answer's support is below this.
            callback_manager: LlamaIndex callback manager.
            exclude_self: The built retriever drops KB pairs whose decoded image is the query
                image (a query taken from the KB does not retrieve itself).
            allow_other_kb: The built retriever uses heads even on a knowledge base sharing under
                half of their training items (see :class:`LVLMAwareRetriever`).

        Returns:
            The engine.

        Raises:
            ValueError: Both or neither of ``knowledge_base`` and ``retriever``; heads or ``k_*``
                given with a ready retriever.
        """
        if (knowledge_base is None) == (retriever is None):
            raise ValueError("pass exactly one of knowledge_base= or retriever= to from_defaults")
        if retriever is None:
            assert knowledge_base is not None  # checked above
            retriever = LVLMAwareRetriever(
                knowledge_base, image_head, text_head, k_image=k_image, k_text=k_text,
                question_weight=question_weight, head_fusion=head_fusion, callback_manager=callback_manager,
                exclude_self=exclude_self, allow_other_kb=allow_other_kb,
            )
        elif image_head is not None or text_head is not None:
            raise ValueError("image_head/text_head only apply with knowledge_base=; put them in your retriever")
        rerank = LVLMRerank(
            reader=reader, top_n=top_n, aggregation=aggregation, rerank_method=rerank_method,
            temperature=temperature, text_only=text_only, skip_unreadable=skip_unreadable,
        )
        return cls(retriever, rerank, min_support=min_support, callback_manager=callback_manager)

    @classmethod
    def class_name(cls) -> str:
        """Stable name of the component."""
        return "LVLMDiagnosisQueryEngine"

    @property
    def retriever(self) -> BaseRetriever:
        """The retriever."""
        return self._retriever

    @property
    def rerank(self) -> LVLMRerank:
        """The reading/reranking postprocessor."""
        return self._rerank

    @property
    def min_support(self) -> float:
        """Support of the answer under which the engine recommends abstaining."""
        return self._min_support

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}  # the reader's prompt is not a LlamaIndex prompt template

    def _query(self, query_bundle: QueryBundle) -> Response:
        self._check(query_bundle)
        nodes = self._retriever.retrieve(query_bundle)
        return self._respond(nodes, query_bundle)

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        self._check(query_bundle)
        nodes = await self._retriever.aretrieve(query_bundle)
        return await asyncio.to_thread(self._respond, nodes, query_bundle)

    @staticmethod
    def _check(query_bundle: QueryBundle) -> None:
        if not query_bundle.image_path:
            raise ValueError(NO_IMAGE_MESSAGE)

    def _respond(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> Response:
        if not nodes:
            raise ValueError(
                f"the retriever found no nodes for image {query_bundle.image_path!r}; check the knowledge base"
            )
        result = self._rerank.rerank(nodes, query_bundle)
        metadata = result.response_metadata(
            label_key=self._rerank.label_key,
            confidence_key=self._rerank.confidence_key,
            id_key=self._rerank.id_key,
            retrieval_score_key=self._rerank.retrieval_score_key,
        )
        # support is a ratio of small integers; the epsilon only absorbs float round-off
        abstain = result.support < self._min_support - 1e-12
        metadata[keys.ABSTAIN] = bool(abstain)
        text = _answer_text(result, metadata, abstain)
        return Response(response=text, source_nodes=result.nodes, metadata=metadata)


def _answer_text(result: LVLMRerankResult, metadata: dict[str, Any], abstain: bool) -> str:
    """The answer in words, with its probability and how many neighbours led to it."""
    if isinstance(result.answer, tuple):
        answer = ", ".join(result.answer) or "none of the labels"
    else:
        answer = result.answer
    k = len(metadata[keys.NEIGHBOURS])
    agree = round(result.support * k)
    text = (
        f"{answer} (probability {result.answer_probability:.2f}; {agree} of {k} retrieved neighbours lead to it, "
        f"{result.weighted_support:.0%} of the retrieval weight)"
    )
    if abstain:
        return f"Inconclusive: too few retrieved neighbours support the answer; most likely {text}. Consider abstaining."
    return text
