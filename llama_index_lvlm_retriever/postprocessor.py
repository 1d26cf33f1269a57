"""LVLMRerank: read every retrieved node with the LVLM, aggregate, check consistency and rerank.

The paper (arXiv 2508.17394) reads the query image once per retrieved image-text pair and fuses
the per-neighbour label distributions; the neighbours' disagreement (*inconsistent retrieval
predictions*) is a signal in itself. This postprocessor does that for nodes from any retriever:
all arithmetic comes from :mod:`llama_index_lvlm_retriever.aggregation`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import llama_index.core.instrumentation as instrument
import numpy as np
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, ImageNode, NodeWithScore, QueryBundle

from llama_index_lvlm_retriever.aggregation import (
    DEFAULT_TEMPERATURE,
    AggregationMethod,
    ConsistencyStats,
    RerankMethod,
    aggregate,
    answer_support,
    consistency,
    label_set_probability,
    neighbour_prediction,
    predict_label,
    predict_label_set,
    rerank_scores,
)
from llama_index_lvlm_retriever.data.images import ImageLoadError, load_image
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.readers.base import Reader
from llama_index_lvlm_retriever.retriever.nodes import META_KB_ID, META_LABEL, node_head

logger = logging.getLogger(__name__)
dispatcher = instrument.get_dispatcher(__name__)

__all__ = [
    "META_LVLM_CONFIDENCE",
    "META_LVLM_DISTRIBUTION",
    "META_LVLM_LABEL",
    "META_LVLM_RERANK_SCORE",
    "META_RETRIEVAL_SCORE",
    "NO_IMAGE_MESSAGE",
    "LVLMRerank",
    "LVLMRerankResult",
    "TextOnlyMode",
]

# Default node-metadata keys the postprocessor writes (each is a Field, so users can rename them).
META_LVLM_LABEL = "lvlm_label"
META_LVLM_DISTRIBUTION = "lvlm_distribution"
META_LVLM_CONFIDENCE = "lvlm_confidence"
META_RETRIEVAL_SCORE = "retrieval_score"
META_LVLM_RERANK_SCORE = "lvlm_rerank_score"

NO_IMAGE_MESSAGE = "LVLMRerank needs the query image: QueryBundle(query_str=question, image_path=...)"

TextOnlyMode = Literal["background", "closed_book", "skip"]


@dataclass(frozen=True)
class LVLMRerankResult:
    """Everything one rerank computed for a case.

    Args:
        nodes: The reranked nodes (best first, at most ``top_n``), metadata filled in.
        read_nodes: Every node the reader saw, in rerank order (before the ``top_n`` cut).
        labels: The task's label names (order of ``distribution``).
        distribution: ``(L,)`` aggregated distribution (multi-label: per-label ``P(yes)``).
        answer: Predicted label name (multi-label: tuple of names).
        answer_probability: Aggregated probability of ``answer`` (multi-label: of the set, labels
            independent).
        stats: The neighbours' consistency (``stats.agreement`` is the *majority's* share).
        support: Share of the read neighbours whose own prediction is ``answer`` (unweighted).
        weighted_support: The same share weighted by the neighbours' retrieval weights.
        skipped: ``(node id, reason)`` of the nodes left out (unreadable or text-only with
            ``text_only="skip"``).
    """

    nodes: list[NodeWithScore]
    read_nodes: list[NodeWithScore]
    labels: tuple[str, ...]
    distribution: np.ndarray
    answer: str | tuple[str, ...]
    answer_probability: float
    stats: ConsistencyStats
    support: float = 1.0
    weighted_support: float = 1.0
    skipped: tuple[tuple[str, str], ...] = ()

    def response_metadata(
        self, *, label_key: str, confidence_key: str, id_key: str, retrieval_score_key: str = "retrieval_score"
    ) -> dict[str, Any]:
        """The ``Response.metadata`` dict (keys of :mod:`~llama_index_lvlm_retriever.outputs.metadata_keys`).

        Args:
            label_key: Node metadata key holding each node's predicted label.
            confidence_key: Node metadata key holding the reader's confidence in it.
            id_key: Node metadata key of the knowledge-base id (node id when absent).
            retrieval_score_key: Node metadata key holding each node's retrieval score.

        Returns:
            JSON-serialisable metadata; ``ABSTAIN`` is left to the caller.
        """
        neighbours = [
            {
                keys.NEIGHBOUR_KB_ID: _node_kb_id(n.node, id_key),
                keys.NEIGHBOUR_HEAD: node_head(n.node),
                keys.NEIGHBOUR_RETRIEVAL_SCORE: n.node.metadata.get(retrieval_score_key),
                keys.NEIGHBOUR_PREDICTION: n.node.metadata[label_key],
                keys.NEIGHBOUR_PROBABILITY: n.node.metadata[confidence_key],
                keys.NEIGHBOUR_KB_LABEL: _node_kb_label(n.node),
            }
            for n in self.read_nodes
        ]
        answer = list(self.answer) if isinstance(self.answer, tuple) else self.answer
        return {
            keys.ANSWER: answer,
            keys.PROBABILITY: self.answer_probability,
            keys.DISTRIBUTION: dict(zip(self.labels, (float(x) for x in self.distribution))),
            keys.CONSISTENT: self.stats.consistent,
            keys.AGREEMENT: float(self.stats.agreement),
            keys.SUPPORT: float(self.support),
            keys.WEIGHTED_SUPPORT: float(self.weighted_support),
            keys.VOTE_ENTROPY: float(self.stats.vote_entropy),
            keys.N_DISTINCT: int(self.stats.n_distinct),
            keys.NEIGHBOURS: neighbours,
        }


class LVLMRerank(BaseNodePostprocessor):
    """Reads the query image with each retrieved node, fuses the answers and reranks the nodes.

    For a ``QueryBundle`` with ``image_path`` (the question is ``query_str``), the reader scores the
    task's labels once per node, in one batched call. Each node's metadata then gets the reader's
    predicted label, its label distribution, its confidence and the original retrieval score.
    The case-level answer aggregates the per-node distributions (``aggregation``: ``"weighted"`` =
    retrieval-softmax-weighted average at ``temperature``, the paper's fusion; ``"majority"``;
    ``"most_confident"``); the nodes are reordered by ``rerank_method`` (``"posterior"``: the
    posterior of each node given the answer, proportional to retrieval weight x reader probability
    of the answer; ``"reader"``; ``"retrieval"``) and the best ``top_n`` are kept, their score
    replaced by the rerank score.

    Nodes without an image (``TextNode`` s, or image nodes with no ``image_path``) are read
    according to ``text_only``: ``"background"`` shows their text without a retrieved image,
    ``"closed_book"`` reads the query alone in their slot, ``"skip"`` leaves them out. A node whose
    image is missing or unreadable raises a ``ValueError`` naming it, or is skipped with a warning
    when ``skip_unreadable=True``. Nodes from ``MultiModalVectorStoreIndex`` need no ``kb_id``: the
    node id stands in.

    :meth:`rerank` returns the full :class:`LVLMRerankResult` (answer, consistency); inside a
    ``RetrieverQueryEngine`` only the nodes travel on, and ``LVLMDiagnosisQueryEngine`` exposes the
    rest.

    Args:
        reader: The reader (any :class:`~llama_index_lvlm_retriever.readers.base.Reader`).
        top_n: Nodes kept after reranking (``None`` keeps all).
        aggregation: How the per-node distributions become one answer.
        rerank_method: Score the nodes are reordered by.
        temperature: Softmax temperature over retrieval scores (divides them).
        text_only: How nodes without an image are read.
        skip_unreadable: Skip nodes whose image cannot be read instead of raising.
        id_key, label_key, distribution_key, confidence_key, retrieval_score_key, rerank_score_key:
            Node metadata keys read (``id_key``) and written (the others).

    Raises:
        ValueError: A setting is out of range (the message echoes it).

    Example:
        .. code-block:: python

            from llama_index.core.schema import QueryBundle
            from llama_index_lvlm_retriever.postprocessor import LVLMRerank

            rerank = LVLMRerank(reader=reader, top_n=2)
            bundle = QueryBundle(query_str="Which DR grade?", image_path="eye.png")
            result = rerank.rerank(retriever.retrieve(bundle), bundle)
            result.answer, result.stats.consistent, [n.node.node_id for n in result.nodes]
    """

    top_n: int | None = Field(default=None, gt=0, description="Nodes kept after reranking (None = all).")
    aggregation: AggregationMethod = Field(default="weighted", description="Aggregation of the per-node distributions.")
    rerank_method: RerankMethod = Field(default="posterior", description="Score the nodes are reordered by.")
    temperature: float = Field(default=DEFAULT_TEMPERATURE, gt=0, description="Softmax temperature over retrieval scores.")
    text_only: TextOnlyMode = Field(default="background", description="How nodes without an image are read.")
    skip_unreadable: bool = Field(default=False, description="Skip nodes whose image is unreadable instead of raising.")
    id_key: str = Field(default=META_KB_ID, description="Metadata key of the knowledge-base id (node id if absent).")
    label_key: str = Field(default=META_LVLM_LABEL, description="Metadata key written: predicted label.")
    distribution_key: str = Field(default=META_LVLM_DISTRIBUTION, description="Metadata key written: label distribution.")
    confidence_key: str = Field(default=META_LVLM_CONFIDENCE, description="Metadata key written: reader confidence.")
    retrieval_score_key: str = Field(default=META_RETRIEVAL_SCORE, description="Metadata key written: original retrieval score.")
    rerank_score_key: str = Field(default=META_LVLM_RERANK_SCORE, description="Metadata key written: rerank score.")

    _reader: Reader = PrivateAttr()

    def __init__(self, reader: Reader, **kwargs: Any) -> None:
        if not isinstance(reader, Reader):
            raise ValueError(f"reader must be a Reader (e.g. HFLVLMReader), got {type(reader).__name__}")
        super().__init__(**kwargs)
        self._reader = reader

    @classmethod
    def class_name(cls) -> str:
        """Stable name of the component."""
        return "LVLMRerank"

    @property
    def reader(self) -> Reader:
        """The reader that scores each (query, node) pair."""
        return self._reader

    def _written_keys(self) -> list[str]:
        return [self.label_key, self.distribution_key, self.confidence_key, self.retrieval_score_key, self.rerank_score_key]

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return self.rerank(nodes, query_bundle).nodes

    @dispatcher.span
    def rerank(self, nodes: Sequence[NodeWithScore], query_bundle: QueryBundle | None) -> LVLMRerankResult:
        """Read, aggregate and rerank; the public form of ``postprocess_nodes`` with all results.

        Args:
            nodes: Retrieved nodes (any retriever), best first.
            query_bundle: The question (``query_str``) and the query image (``image_path``).

        Returns:
            The :class:`LVLMRerankResult`.

        Raises:
            ValueError: No query bundle or no query image, no nodes left to read, a node whose image
                is missing or unreadable (without ``skip_unreadable``).
        """
        if query_bundle is None or not query_bundle.image_path:
            raise ValueError(NO_IMAGE_MESSAGE)
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=list(nodes), top_n=self.top_n or len(nodes), model_name=_reader_name(self._reader))
        )
        kept, candidates, skipped = self._candidates(nodes)
        if not kept:
            raise ValueError(
                f"LVLMRerank got {len(nodes)} nodes but none can be read (skipped: {list(skipped)}); "
                "retrieve image nodes, or set text_only='background'"
            )
        case = Case(id=_case_id(query_bundle), image_path=str(query_bundle.image_path), question=query_bundle.query_str or "")
        # The legacy callback event too, as the core rerankers fire it (tracing handlers listen to either).
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: list(nodes),
                EventPayload.MODEL_NAME: _reader_name(self._reader),
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n or len(nodes),
            },
        ) as event:
            scores = self._reader.score([case], [candidates])
            result = self._finish(
                kept, scores.probs[0], scores.labels or tuple(self._reader.task.labels), scores.multi_label, tuple(skipped)
            )
            event.on_end(payload={EventPayload.NODES: result.nodes})
        dispatcher.event(ReRankEndEvent(nodes=result.nodes))
        return result

    def _candidates(
        self, nodes: Sequence[NodeWithScore]
    ) -> tuple[list[NodeWithScore], list[KBItem | None], list[tuple[str, str]]]:
        """The nodes to read and their reader candidates; unreadable/skipped nodes with reasons."""
        kept: list[NodeWithScore] = []
        candidates: list[KBItem | None] = []
        skipped: list[tuple[str, str]] = []
        for n in nodes:
            node = n.node
            image_path = node.image_path if isinstance(node, ImageNode) else None
            item_id = _node_kb_id(node, self.id_key)
            if not image_path:
                if isinstance(node, ImageNode) and (node.image or node.image_url):
                    reason = "its image is inline/URL only; give it an image_path"
                    if not self.skip_unreadable:
                        raise ValueError(f"node {node.node_id!r}: {reason} or set skip_unreadable=True")
                    logger.warning("skipping node %r: %s", node.node_id, reason)
                    skipped.append((node.node_id, reason))
                    continue
                if self.text_only == "skip":
                    skipped.append((node.node_id, "text-only node (text_only='skip')"))
                    continue
                kept.append(n)
                text = node.get_content()
                candidates.append(None if self.text_only == "closed_book" else KBItem(id=item_id, image_path="", text=text))
                continue
            try:
                load_image(image_path, name=f"node {node.node_id!r}")
            except (ImageLoadError, OSError) as err:
                if not self.skip_unreadable:
                    raise ValueError(
                        f"node {node.node_id!r}: image {image_path!r} cannot be read ({err}); fix the file "
                        "or set skip_unreadable=True"
                    ) from err
                logger.warning("skipping node %r: image %r cannot be read (%s)", node.node_id, image_path, err)
                skipped.append((node.node_id, f"unreadable image {image_path!r}"))
                continue
            kept.append(n)
            candidates.append(KBItem(id=item_id, image_path=str(image_path), text=node.get_content()))
        return kept, candidates, skipped

    def _finish(
        self,
        nodes: list[NodeWithScore],
        probs: np.ndarray,
        labels: tuple[str, ...],
        multi_label: bool,
        skipped: tuple[tuple[str, str], ...],
    ) -> LVLMRerankResult:
        """Aggregate the ``(k, L)`` probabilities, write node metadata and reorder."""
        retrieval = [n.score for n in nodes]
        if any(s is None for s in retrieval):
            logger.debug("some nodes have no retrieval score; retrieval weights are uniform")
            scores: np.ndarray | None = None
        else:
            scores = np.asarray(retrieval, dtype=np.float64)  # (k,)
        distribution = aggregate(probs, scores, self.aggregation, self.temperature, multi_label)  # (L,)
        stats = consistency(probs, multi_label)
        answer_index: int | tuple[int, ...]
        if multi_label:
            answer_index = predict_label_set(distribution)
            answer: str | tuple[str, ...] = tuple(labels[i] for i in answer_index)
            answer_probability = label_set_probability(distribution, answer_index)
        else:
            answer_index = predict_label(distribution)
            answer = labels[answer_index]
            answer_probability = float(distribution[answer_index])
        node_scores = rerank_scores(probs, scores, answer_index, self.rerank_method, self.temperature, multi_label)  # (k,)
        support, weighted_support = answer_support(probs, answer_index, scores, self.temperature, multi_label)
        out: list[NodeWithScore] = []
        for n, p, score, retrieval_score in zip(nodes, probs, node_scores, retrieval):
            label, confidence = neighbour_prediction(p, labels, multi_label)
            n.node.metadata.update(
                {
                    self.label_key: label,
                    self.distribution_key: dict(zip(labels, (float(x) for x in p))),
                    self.confidence_key: confidence,
                    self.retrieval_score_key: None if retrieval_score is None else float(retrieval_score),
                    self.rerank_score_key: float(score),
                }
            )
            _exclude_keys(n.node, self._written_keys())
            out.append(NodeWithScore(node=n.node, score=float(score)))
        # Stable sort: equal rerank scores keep the retriever's order.
        order = sorted(range(len(out)), key=lambda i: -node_scores[i])
        ranked = [out[i] for i in order]
        return LVLMRerankResult(
            nodes=ranked[: self.top_n] if self.top_n is not None else ranked,
            read_nodes=ranked,
            labels=labels,
            distribution=distribution,
            answer=answer,
            answer_probability=answer_probability,
            stats=stats,
            support=support,
            weighted_support=weighted_support,
            skipped=skipped,
        )


def _node_kb_label(node: BaseNode) -> str | None:
    """The knowledge-base pair's own label (``None`` where the KB has none)."""
    label = node.metadata.get(META_LABEL)
    return None if label is None else str(label)


def _node_kb_id(node: BaseNode, id_key: str) -> str:
    """The knowledge-base id of a node: its ``id_key`` metadata, else its node id."""
    value = node.metadata.get(id_key)
    return str(value) if value is not None else node.node_id


def _exclude_keys(node: BaseNode, written: list[str]) -> None:
    """Keep our bookkeeping out of embeddings and of the LLM's context."""
    for excluded in (node.excluded_embed_metadata_keys, node.excluded_llm_metadata_keys):
        excluded.extend(k for k in written if k not in excluded)


def _case_id(query_bundle: QueryBundle) -> str:
    return str(query_bundle.image_path)


def _reader_name(reader: Reader) -> str:
    return str(getattr(reader, "model_name", "") or type(reader).__name__)
