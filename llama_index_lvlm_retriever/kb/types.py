"""Records of the knowledge base: search hits, index settings and the encoder-mismatch error.

Kept apart from :class:`~llama_index_lvlm_retriever.kb.knowledge_base.KnowledgeBase` so that the
vector backends (``kb/backends/``) can use them without importing the knowledge base itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llama_index.core.bridge.pydantic import BaseModel, ConfigDict, Field

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import EncoderMismatchError

Modality = Literal["image", "text"]
MODALITIES: tuple[str, ...] = ("image", "text")


@dataclass(frozen=True)
class SearchHit:
    """One search result.

    Args:
        item: The retrieved image-text pair.
        score: Inner product of the normalised query and item vectors (a cosine in ``[-1, 1]``).
        position: The item's row in the knowledge base.
    """

    item: KBItem
    score: float
    position: int


class IndexConfig(BaseModel):
    """Which faiss index each modality uses (all inner product over normalised vectors).

    ``flat`` is exact and right up to a few hundred thousand pairs; ``ivf`` and ``hnsw`` are
    approximate and faster on large knowledge bases.

    The search settings trade recall for latency. Their defaults are chosen by recall: on 100,000
    unclustered 512-d embedding-like vectors (``benchmarks/ann_recall.py``: one Gaussian with a
    1/i spectrum, fresh queries; one thread), recall@10 against exact search and the median
    latency of one query are

    ====================  =========  ==========  ====================  =========  ==========
    HNSW (``hnsw_m=32``)  recall@10  latency     IVF (``nlist=100``)   recall@10  latency
    ====================  =========  ==========  ====================  =========  ==========
    ``ef_search=64``      0.928      0.39 ms     ``nprobe=8``          0.907      0.89 ms
    ``ef_search=128``     **0.972**  0.65 ms     ``nprobe=16``         **0.974**  1.7 ms
    ``ef_search=256``     0.990      1.1 ms      ``nprobe=32``         0.997      2.8 ms
    ====================  =========  ==========  ====================  =========  ==========

    so the defaults (bold) reach recall@10 >= 0.95 at 100k. Raise them for larger or harder
    knowledge bases (recall falls as the KB grows at a fixed setting); lower them when latency
    matters more than the last neighbours. Clustered data with queries near a stored vector is
    easier (IVF's best case); run the benchmark on your own vectors to choose.

    Example:
        >>> IndexConfig(kind="hnsw", ef_search=128).kind
        'hnsw'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["flat", "ivf", "hnsw"] = Field(
        default="flat", description="faiss index kind: flat (exact), ivf (IndexIVFFlat) or hnsw (IndexHNSWFlat)."
    )
    nlist: int = Field(default=100, gt=0, description="IVF: number of inverted lists (capped to the number of vectors).")
    nprobe: int = Field(
        default=16, gt=0,
        description="IVF: lists visited per query (capped to nlist); 16 gives recall@10 ~0.97 at 100k with nlist=100.",
    )
    hnsw_m: int = Field(default=32, gt=1, description="HNSW: neighbours per node in the graph.")
    ef_search: int = Field(
        default=128, gt=0,
        description="HNSW: candidate list size at search time; 128 gives recall@10 ~0.97 at 100k (64: ~0.93).",
    )


@dataclass(frozen=True)
class BackendIdentity:
    """What a database backend's collections record about their knowledge base, checked on reopen.

    Args:
        kb_uid: Random id of the knowledge base, fixed at its creation (two builds never share one).
        dim: Vector dimension.
        encoder: Digest of the encoder record (weights fingerprint, else the probe embeddings).
        encoder_label: Human description of the encoder, for messages.
    """

    kb_uid: str
    dim: int
    encoder: str
    encoder_label: str


__all__ = ["MODALITIES", "BackendIdentity", "EncoderMismatchError", "IndexConfig", "Modality", "SearchHit"]
