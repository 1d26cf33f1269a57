"""LVLMAwareRetriever: query image (+ question) -> image head and text head -> merged image nodes.

The dual-head retriever of arXiv 2508.17394 as a LlamaIndex ``BaseRetriever``. The query image is
embedded once by the knowledge base's frozen encoder (optionally fused with the question's text
embedding, which the paper lacks); an *image head* maps it to a vector that searches the image index
and a *text head* maps it to one that searches the caption index. Either way the unit returned is the
whole knowledge-base pair: an ``ImageNode`` with the image path, the caption as text, and provenance
plus per-head scores in its metadata. Without trained heads (``None``) this is standard RAG.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_index.core.instrumentation as instrument
import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.instrumentation.events.retrieval import (
    RetrievalEndEvent,
    RetrievalStartEvent,
)
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import FilterCondition, MetadataFilters

from llama_index_lvlm_retriever.data.images import ImageInput
from llama_index_lvlm_retriever.errors import UsageError
from llama_index_lvlm_retriever.heads import QueryHead, check_head_fits, load_head
from llama_index_lvlm_retriever.heads.kb_match import check_head_kb
from llama_index_lvlm_retriever.kb import KnowledgeBase, SearchHit
from llama_index_lvlm_retriever.retriever._query_checks import check_finite_queries
from llama_index_lvlm_retriever.retriever.config import LVLMAwareRetrieverConfig
from llama_index_lvlm_retriever.retriever.fusion import DEFAULT_HEAD_FUSION, HeadFusion
from llama_index_lvlm_retriever.retriever.nodes import (
    HEAD_IMAGE,
    HEAD_TEXT,
    HEADS,
    merge_hits,
)
from llama_index_lvlm_retriever.retriever.query_inputs import (
    check_questions,
    embed_query_images,
    embed_query_texts,
    per_query,
    query_pixel_values,
    unit_rows,
)

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    from llama_index.core.embeddings import MultiModalEmbedding


dispatcher = instrument.get_dispatcher(__name__)

NO_IMAGE_MESSAGE = "LVLMAwareRetriever needs a query image: QueryBundle(query_str=..., image_path=...)"


class LVLMAwareRetriever(BaseRetriever):
    """Dual-head multimodal retriever: a query image in, knowledge-base image-caption pairs out.

    For each query image: embed it with the knowledge base's frozen encoder (fused with the
    question's text embedding when ``question_weight > 0``), apply ``image_head`` and search the
    image index for ``k_image`` neighbours, apply ``text_head`` and search the caption index for
    ``k_text`` neighbours, then merge. Each head's cosines are normalised first (``head_fusion``;
    default ``"max"``, the paper's rule: divided by that head's best score), because the text
    head's image->caption cosines (~0.1-0.3) live on another scale than the image head's (~0.9):
    without it the text head's neighbours would never carry weight. A pair found by both heads
    appears once, scored by its best fused head score, with both raw cosines in its metadata; nodes
    are ordered by fused score, best first.

    Nodes are ``ImageNode`` s: ``id_`` and metadata ``kb_id`` are the pair's id, ``text`` is the
    caption, ``image_path`` the image; metadata also holds ``source``, ``label`` (when known),
    ``heads`` (which heads found it), ``image_score``/``text_score`` and ``image_rank``/``text_rank``
    (1 = best) for the heads that found it, and ``kb_metadata`` (the pair's own metadata). The
    ``META_*`` constants of this module name these keys. Their content blocks are the image then the
    caption, so ``RetrieverQueryEngine.from_args(..., multimodal=True)`` shows both to a chat LLM.

    Args:
        knowledge_base: The pairs and their frozen image and text indexes; its ``embed_model``
            embeds the queries.
        image_head: Head for the image index; ``None`` is the identity (standard RAG).
        text_head: Head for the text index; ``None`` is the identity (standard RAG).
        k_image: Neighbours from the image head (the paper: 2); 0 disables the head.
        k_text: Neighbours from the text head (the paper: 2); 0 disables the head.
        question_weight: Weight of the question's text embedding in the query vector (0 = image only).
        head_fusion: Per-head score normalisation before merging (see
            :mod:`~llama_index_lvlm_retriever.retriever.fusion`): ``"max"``, ``"rank"``, ``"zscore"``
            or ``"none"``.
        exclude_self: Drop pairs whose decoded image equals the query image (needs the query image
            to be decodable by :func:`~llama_index_lvlm_retriever.data.images.load_image`).
        show_progress: Show progress bars while embedding query batches.
        filters: LlamaIndex ``MetadataFilters`` applied to every search (e.g. ``modality == "CT"``),
            pushed down into the knowledge base's backend; checked against its fields now.
            :meth:`retrieve_batch` and :meth:`search_heads` also take per-query filters (e.g.
            ``patient_id != <the query's patient>``), ANDed with these.
        allow_other_kb: Use trained heads on a knowledge base sharing under half the items they
            were trained on (see :mod:`~llama_index_lvlm_retriever.heads.kb_match`). Any other
            difference is warned about and recorded in :attr:`head_kb_events`.
        callback_manager: LlamaIndex callback manager.
        verbose: LlamaIndex verbose flag.

    A head may also be an image-input head (any module with ``needs_image = True``, such as
    :class:`~llama_index_lvlm_retriever.heads.EncoderQueryHead`, the paper's trainable
    image tower): the retriever then processes the query images with the knowledge base's embedding
    model (``embed_model.processor.image_processor``) and calls
    ``head.encode(embeddings, pixel_values=...)``. :meth:`search_heads` needs ``images=`` for it.

    Raises:
        UsageError: A setting is out of range, or a head's dimensions do not fit the knowledge
            base (one line naming it; a ``ValueError``).
        KBMismatchError: A head was trained on a knowledge base sharing under half its items with
            this one, and ``allow_other_kb`` is False.
        TypeError: A head is not a :class:`~llama_index_lvlm_retriever.heads.QueryHead` or an
            image-input head.

    Example:
        .. code-block:: python

            from llama_index.core.schema import QueryBundle
            from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
            from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever

            retriever = LVLMAwareRetriever.from_persist_dir(
                "kb/", CLIPEmbedding.from_pretrained("openai/clip-vit-base-patch16"),
                image_head_dir="heads/image", text_head_dir="heads/text",
            )
            nodes = retriever.retrieve(QueryBundle(query_str="Which DR grade?", image_path="eye.png"))
            for n in nodes:
                print(n.node.node_id, n.score, n.node.metadata["heads"], n.node.text[:60])
    """

    def __init__(
        self,
        knowledge_base: KnowledgeBase,
        image_head: QueryHead | None = None,
        text_head: QueryHead | None = None,
        *,
        k_image: int = 2,
        k_text: int = 2,
        question_weight: float = 0.0,
        head_fusion: HeadFusion = DEFAULT_HEAD_FUSION,
        exclude_self: bool = False,
        show_progress: bool = False,
        filters: MetadataFilters | None = None,
        allow_other_kb: bool = False,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        self._config = LVLMAwareRetrieverConfig(
            k_image=k_image,
            k_text=k_text,
            question_weight=question_weight,
            head_fusion=head_fusion,
            exclude_self=exclude_self,
            show_progress=show_progress,
            filters=filters,
            allow_other_kb=allow_other_kb,
        )
        if filters is not None and len(knowledge_base):
            knowledge_base.check_filters(filters)
        self._kb = knowledge_base
        self._image_head = check_head_fits("image_head", image_head, knowledge_base.dim, knowledge_base)
        self._text_head = check_head_fits("text_head", text_head, knowledge_base.dim, knowledge_base)
        events = ((name, check_head_kb(name, head, knowledge_base, allow_other_kb=allow_other_kb))
                  for name, head in (("image_head", self._image_head), ("text_head", self._text_head)))
        self._head_kb_events = {name: event for name, event in events if event is not None}
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def class_name(cls) -> str:
        """Stable name of the component."""
        return "LVLMAwareRetriever"

    @classmethod
    def from_persist_dir(
        cls,
        kb_dir: str | Path,
        embed_model: MultiModalEmbedding,
        image_head_dir: str | Path | None = None,
        text_head_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> LVLMAwareRetriever:
        """Load a persisted knowledge base and (optionally) trained heads.

        Args:
            kb_dir: Folder written by ``KnowledgeBase.persist``.
            embed_model: The encoder that built the knowledge base.
            image_head_dir: Folder written by ``QueryHead.save_pretrained``; ``None`` = identity.
            text_head_dir: Same, for the text head.
            **kwargs: Any other constructor argument (``k_image``, ``question_weight``,
                ``allow_other_kb``, ...).

        Returns:
            The retriever.
        """
        kb = KnowledgeBase.from_persist_dir(kb_dir, embed_model=embed_model)
        image_head = load_head(image_head_dir) if image_head_dir is not None else None
        text_head = load_head(text_head_dir) if text_head_dir is not None else None
        return cls(kb, image_head, text_head, **kwargs)

    @property
    def knowledge_base(self) -> KnowledgeBase:
        """The knowledge base searched."""
        return self._kb

    @property
    def image_head(self) -> QueryHead | None:
        """The image head (``None`` = identity)."""
        return self._image_head

    @property
    def text_head(self) -> QueryHead | None:
        """The text head (``None`` = identity)."""
        return self._text_head

    @property
    def head_kb_events(self) -> dict[str, dict[str, Any]]:
        """Heads used on a knowledge base other than their training one: head name -> the event.

        Each event (``trained_kb``, ``this_kb``, ``shared_share``, ``estimated``, ``allowed``) was
        warned about at construction; runs record them in their provenance. Empty when every
        trained head is used on the ids it was trained on.
        """
        return dict(self._head_kb_events)

    @property
    def config(self) -> LVLMAwareRetrieverConfig:
        """The validated settings."""
        return self._config

    @property
    def k_image(self) -> int:
        """Neighbours from the image head."""
        return self._config.k_image

    @property
    def k_text(self) -> int:
        """Neighbours from the text head."""
        return self._config.k_text

    @property
    def question_weight(self) -> float:
        """Weight of the question in the query vector."""
        return self._config.question_weight

    def embed_queries(self, images: Sequence[ImageInput], questions: Sequence[str] | None = None) -> np.ndarray:
        """Frozen query embeddings, fused with the questions, before any head.

        Args:
            images: Query images (paths, bytes, ``BytesIO`` or PIL images), embedded in one batch.
            questions: One question per image, or ``None``. Used only when ``question_weight > 0``;
                an empty question leaves its image embedding alone.

        Returns:
            float32 array ``(n, dim)``, rows L2-normalised.

        Raises:
            ValueError: ``questions`` does not have one entry per image.
        """
        images = list(images)
        check_questions(questions, len(images))
        if not images:
            return np.zeros((0, self._query_dim()), dtype=np.float32)
        model, progress = self._kb.embed_model, self._config.show_progress
        emb = unit_rows(embed_query_images(model, images, progress))  # (n, dim)
        weight = self._config.question_weight
        if weight > 0 and questions is not None:
            asked = [i for i, q in enumerate(questions) if q and q.strip()]
            if asked:
                text = unit_rows(embed_query_texts(model, [questions[i] for i in asked], progress))  # (m, dim)
                if text.shape[1] != emb.shape[1]:
                    raise ValueError(
                        f"question embeddings are {text.shape[1]}-d but image embeddings are "
                        f"{emb.shape[1]}-d; question fusion needs a dual encoder with one shared space"
                    )
                emb[asked] = unit_rows((1.0 - weight) * emb[asked] + weight * text)
        return emb

    def search_heads(
        self,
        query_embeddings: np.ndarray,
        k_image: int | None = None,
        k_text: int | None = None,
        *,
        exclude_ids: Sequence[Collection[str]] | None = None,
        exclude_hashes: Sequence[Collection[str]] | None = None,
        images: Sequence[ImageInput] | None = None,
        filters: MetadataFilters | Sequence[MetadataFilters | None] | None = None,
    ) -> dict[str, list[list[SearchHit]]]:
        """Run both heads on precomputed frozen query embeddings and search their indexes.

        This is the raw view the training loop needs (e.g. 50 candidates per head with their scores).

        Args:
            query_embeddings: Output of :meth:`embed_queries`, shape ``(n, dim)`` (or ``(dim,)``).
            k_image: Hits from the image head; ``None`` uses the retriever's ``k_image``.
            k_text: Hits from the text head; ``None`` uses the retriever's ``k_text``.
            exclude_ids: One collection of KB ids to skip per query.
            exclude_hashes: One collection of image content hashes to skip per query.
            images: The query images, one per embedding; needed only by an image-input head
                (``needs_image = True``).
            filters: ``MetadataFilters`` for all queries, or one (or ``None``) per query; ANDed with
                the retriever's ``filters`` and pushed down into the knowledge base's backend.

        Returns:
            ``{HEAD_IMAGE: hits, HEAD_TEXT: hits}`` where ``hits[i]`` lists query ``i``'s hits, best
            first (empty lists for a head whose k is 0).

        Raises:
            ValueError: Bad shapes, bad k, per-query lists of the wrong length, or an image-input
                head without ``images``.
        """
        settings = self._settings(k_image=k_image, k_text=k_text)
        queries = np.asarray(query_embeddings, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]  # (dim,) -> (1, dim)
        if queries.ndim != 2:
            raise ValueError(f"query_embeddings must have shape (n, dim), got {queries.shape}")
        check_finite_queries(queries, "query embedding")
        n = queries.shape[0]
        exclude_ids = per_query("exclude_ids", exclude_ids, n)
        exclude_hashes = per_query("exclude_hashes", exclude_hashes, n)
        query_filters = self._query_filters(filters, n)
        results: dict[str, list[list[SearchHit]]] = {}
        for name, head, k in (
            (HEAD_IMAGE, self._image_head, settings.k_image),
            (HEAD_TEXT, self._text_head, settings.k_text),
        ):
            if k == 0 or n == 0:
                results[name] = [[] for _ in range(n)]
                continue
            vectors = self._apply_head(name, head, queries, images)  # (n, kb dim)
            check_finite_queries(vectors, f"{name} head output")
            results[name] = self._kb.search(
                vectors, name, k, exclude_ids=exclude_ids, exclude_hashes=exclude_hashes, filters=query_filters
            )
        return results

    def _query_filters(
        self, filters: MetadataFilters | Sequence[MetadataFilters | None] | None, n: int
    ) -> list[MetadataFilters | None] | None:
        """Per-query filters, each ANDed with the retriever's own (``None`` when there are none)."""
        base = self._config.filters
        if filters is None:
            return None if base is None else [base] * n
        if isinstance(filters, MetadataFilters):
            filters = [filters] * n
        filters = list(filters)
        if len(filters) != n:
            raise ValueError(f"filters has {len(filters)} entries for {n} queries; pass one MetadataFilters (or None) per query")
        if base is None:
            return filters
        return [base if f is None else MetadataFilters(filters=[base, f], condition=FilterCondition.AND) for f in filters]

    @dispatcher.span
    def retrieve_batch(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str] | None = None,
        *,
        k_image: int | None = None,
        k_text: int | None = None,
        exclude_ids: Sequence[Collection[str]] | None = None,
        exclude_self: bool | None = None,
        filters: MetadataFilters | Sequence[MetadataFilters | None] | None = None,
    ) -> list[list[NodeWithScore]]:
        """Retrieve for many query images at once (one embedding batch, one search per head).

        Like :meth:`retrieve`, this fires a ``RetrievalStartEvent`` and a ``RetrievalEndEvent`` per
        query (with a ``QueryBundle(question, image_path)``) inside one instrumentation span, so
        tracing sees batch retrievals too; it skips the legacy callback-manager events and the
        recursive ``IndexNode`` expansion of ``retrieve``, which never apply to image pairs.

        Args:
            images: Query images (paths, bytes, ``BytesIO`` or PIL images).
            questions: One question per image, or ``None``.
            k_image: Override the image head's k for this call.
            k_text: Override the text head's k for this call.
            exclude_ids: One collection of KB ids to skip per query (e.g. the case's own pair).
            exclude_self: Override ``exclude_self`` for this call.
            filters: ``MetadataFilters`` for all queries, or one (or ``None``) per query, ANDed with
                the retriever's ``filters`` (e.g. each case's ``patient_id != <its patient>``).

        Returns:
            One node list per image, best first.

        Example:
            .. code-block:: python

                nodes_per_case = retriever.retrieve_batch(
                    ["a.png", "b.png"], ["Which grade?", "Which grade?"],
                    exclude_ids=[{"kb-17"}, set()],
                )
        """
        images = list(images)
        check_questions(questions, len(images))
        bundles = [
            QueryBundle(
                query_str=questions[i] if questions is not None else "",
                image_path=str(img) if isinstance(img, (str, Path)) else None,
            )
            for i, img in enumerate(images)
        ]
        for bundle in bundles:
            dispatcher.event(RetrievalStartEvent(str_or_query_bundle=bundle))
        results = self._retrieve_batch(
            images, questions, k_image=k_image, k_text=k_text, exclude_ids=exclude_ids, exclude_self=exclude_self,
            filters=filters,
        )
        for bundle, nodes in zip(bundles, results):
            dispatcher.event(RetrievalEndEvent(str_or_query_bundle=bundle, nodes=nodes))
        return results

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if not query_bundle.image_path:
            raise ValueError(NO_IMAGE_MESSAGE)
        return self._retrieve_batch([query_bundle.image_path], [query_bundle.query_str])[0]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # Embedding and faiss search are blocking CPU/GPU work: keep them off the event loop.
        return await asyncio.to_thread(self._retrieve, query_bundle)

    def _retrieve_batch(
        self,
        images: list[ImageInput],
        questions: Sequence[str] | None,
        *,
        k_image: int | None = None,
        k_text: int | None = None,
        exclude_ids: Sequence[Collection[str]] | None = None,
        exclude_self: bool | None = None,
        filters: MetadataFilters | Sequence[MetadataFilters | None] | None = None,
    ) -> list[list[NodeWithScore]]:
        settings = self._settings(k_image=k_image, k_text=k_text, exclude_self=exclude_self)
        n = len(images)
        exclude_ids = per_query("exclude_ids", exclude_ids, n)
        hashes = [[self._kb.content_hash_of(img)] for img in images] if settings.exclude_self else None
        embeddings = self.embed_queries(images, questions)  # (n, dim)
        check_finite_queries(embeddings, "query embedding", [_query_name(img, i) for i, img in enumerate(images)])
        hits = self.search_heads(
            embeddings, settings.k_image, settings.k_text, exclude_ids=exclude_ids, exclude_hashes=hashes,
            images=images, filters=filters,
        )
        return [merge_hits({name: hits[name][i] for name in HEADS}, settings.head_fusion) for i in range(n)]

    def _settings(self, **overrides: Any) -> LVLMAwareRetrieverConfig:
        values = self._config.model_dump(exclude={"filters"})
        values.update({key: value for key, value in overrides.items() if value is not None})
        return LVLMAwareRetrieverConfig(**values, filters=self._config.filters)

    def _query_dim(self) -> int:
        head = self._image_head or self._text_head
        return head.dim if head is not None else int(self._kb.dim)

    def _apply_head(
        self, name: str, head: QueryHead | None, queries: np.ndarray, images: Sequence[ImageInput] | None = None
    ) -> np.ndarray:
        if head is None:
            if queries.shape[1] != self._kb.dim:
                raise UsageError(
                    f"query embeddings are {queries.shape[1]}-d but the knowledge base is "
                    f"{self._kb.dim}-d; embed queries with the encoder that built it"
                )
            return unit_rows(queries)
        if queries.shape[1] != head.dim:
            raise UsageError(
                f"query embeddings are {queries.shape[1]}-d but the {name} head expects {head.dim}-d; "
                "the head was trained for another encoder"
            )
        if getattr(head, "needs_image", False):
            pixels = query_pixel_values(self._kb.embed_model, name, images, queries.shape[0])  # (n, C, H, W)
            return head.encode(queries, pixel_values=pixels)
        return head.encode(queries)


def _query_name(image: ImageInput, position: int) -> str:
    return f"query image {image}" if isinstance(image, (str, Path)) else f"query {position}"


__all__ = ["NO_IMAGE_MESSAGE", "LVLMAwareRetriever"]
