"""What the retriever returns: node metadata keys, the captioned image node, the head merge.

Private module of :mod:`llama_index_lvlm_retriever.retriever`, which re-exports the public names
(the ``HEAD_*`` and ``META_*`` constants); read node metadata through those constants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import BaseContentBlock, TextBlock
from llama_index.core.schema import BaseNode, ImageNode, MetadataMode, NodeWithScore

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.retriever.fusion import (
    DEFAULT_HEAD_FUSION,
    HeadFusion,
    fuse_head_scores,
)

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    from llama_index_lvlm_retriever.kb import SearchHit

# Head names; each is also the ``modality`` of the index that head searches.
HEAD_IMAGE = "image"
HEAD_TEXT = "text"
HEADS: tuple[str, ...] = (HEAD_IMAGE, HEAD_TEXT)

# Node metadata keys written by the retriever (read them through these names, not literals).
META_KB_ID = "kb_id"
META_SOURCE = "source"
META_LABEL = "label"
META_HEADS = "heads"
META_HEAD = "head"
META_IMAGE_SCORE = "image_score"
META_TEXT_SCORE = "text_score"
META_IMAGE_RANK = "image_rank"
META_TEXT_RANK = "text_rank"
META_KB_METADATA = "kb_metadata"
SCORE_KEYS: dict[str, str] = {HEAD_IMAGE: META_IMAGE_SCORE, HEAD_TEXT: META_TEXT_SCORE}
RANK_KEYS: dict[str, str] = {HEAD_IMAGE: META_IMAGE_RANK, HEAD_TEXT: META_TEXT_RANK}

# Bookkeeping the LLM should not read; source and label stay visible as short provenance.
_EXCLUDED_LLM_KEYS = [
    META_KB_ID,
    META_HEADS,
    META_HEAD,
    META_IMAGE_SCORE,
    META_TEXT_SCORE,
    META_IMAGE_RANK,
    META_TEXT_RANK,
    META_KB_METADATA,
]
# Embedding text is the caption alone.
_EXCLUDED_EMBED_KEYS = [*_EXCLUDED_LLM_KEYS, META_SOURCE, META_LABEL]


class CaptionedImageNode(ImageNode):
    """An ``ImageNode`` whose content blocks carry its caption after the image.

    ``ImageNode.get_content_blocks`` (llama-index-core 0.14) returns metadata and the image only, so
    a multimodal synthesizer would never see the caption; the pair is the retrieval unit here.
    It serialises as an ``ImageNode`` (same type tag), so a docstore reloads it as a plain one.
    """

    def get_content_blocks(self, metadata_mode: MetadataMode = MetadataMode.NONE) -> list[BaseContentBlock]:
        blocks = list(super().get_content_blocks(metadata_mode))
        if self.text:
            blocks.append(TextBlock(text=self.text))
        return blocks


def node_head(node: BaseNode) -> str | None:
    """The retriever head whose (fused) score a node carries, or ``None`` for nodes of other retrievers."""
    head = node.metadata.get(META_HEAD)
    return None if head is None else str(head)


def merge_hits(per_head: dict[str, list[SearchHit]], fusion: HeadFusion = DEFAULT_HEAD_FUSION) -> list[NodeWithScore]:
    """Merge per-head hit lists by KB id, scored by the best fused head score; raw scores are kept.

    Each head's scores are normalised first (:func:`~llama_index_lvlm_retriever.retriever.fusion.fuse_head_scores`),
    so a text-head hit competes with an image-head hit on one scale. Equal fused scores are ordered by
    raw cosine (of the head giving the fused score), then by id; within a head the knowledge base has
    already ordered ties (``kb/tie_order.py``).
    """
    items: dict[str, KBItem] = {}
    scores: dict[str, dict[str, float]] = {}
    fused: dict[str, dict[str, float]] = {}
    ranks: dict[str, dict[str, int]] = {}
    for head in HEADS:
        hits = per_head.get(head, [])
        normalised = fuse_head_scores([hit.score for hit in hits], fusion)  # (n_head,)
        for rank, (hit, value) in enumerate(zip(hits, normalised), start=1):
            item_id = hit.item.id
            items.setdefault(item_id, hit.item)
            scores.setdefault(item_id, {})[head] = float(hit.score)
            fused.setdefault(item_id, {})[head] = float(value)
            ranks.setdefault(item_id, {})[head] = rank
    # Best fused score first. Fused ties (under "max" each head's best is 1.0) go to the higher raw
    # cosine of the tied head(s), so an identical image (1.0) precedes a 0.44 caption hit; then the id.
    order = sorted(items, key=lambda i: (-max(fused[i].values()), -_tied_raw(scores[i], fused[i]), i))
    return [to_node(items[i], scores[i], ranks[i], fused[i]) for i in order]


def _tied_raw(scores: dict[str, float], fused: dict[str, float]) -> float:
    """The best raw cosine among the heads that give a node its (best) fused score."""
    best = max(fused.values())
    return max(scores[head] for head, value in fused.items() if value == best)


def to_node(
    item: KBItem, scores: dict[str, float], ranks: dict[str, int], fused: dict[str, float] | None = None
) -> NodeWithScore:
    """One knowledge-base pair as a scored node; ``scores``/``ranks`` hold the heads that found it.

    The node's score is the best fused score (``fused``; the raw scores when ``None``); metadata
    ``heads`` lists the heads that found it; ``head`` is the one whose fused score it carries.
    """
    fused = dict(scores) if fused is None else fused
    metadata: dict[str, Any] = {
        META_KB_ID: item.id,
        META_SOURCE: item.source,
        META_HEADS: [head for head in HEADS if head in scores],
        # The head whose fused score the node carries; HEADS order breaks ties.
        META_HEAD: max((head for head in HEADS if head in scores), key=lambda h: fused[h]),
    }
    if item.label is not None:
        metadata[META_LABEL] = item.label
    for head in HEADS:
        if head in scores:
            metadata[SCORE_KEYS[head]] = scores[head]
            metadata[RANK_KEYS[head]] = ranks[head]
    if item.metadata:
        metadata[META_KB_METADATA] = dict(item.metadata)
    # An empty source would show the LLM a bare "source: " line.
    excluded_llm = _EXCLUDED_LLM_KEYS if item.source else [*_EXCLUDED_LLM_KEYS, META_SOURCE]
    node = CaptionedImageNode(
        id_=item.id,
        text=item.text,
        image_path=item.image_path,
        metadata=metadata,
        excluded_llm_metadata_keys=list(excluded_llm),
        excluded_embed_metadata_keys=list(_EXCLUDED_EMBED_KEYS),
    )
    return NodeWithScore(node=node, score=max(fused.values()))
