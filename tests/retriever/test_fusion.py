"""Per-head score fusion: text-head neighbours must carry weight next to image-head ones.

A hand-built knowledge base in 8 dimensions with the query embedding e = e_0. A vector with cosine c
to the query is c * e_0 + sqrt(1 - c^2) * e_j (a fresh axis j per vector, so every cosine is exact):

    item   image cosine   text cosine
    i0     0.95           0.00
    i1     0.94           0.00
    i2     0.90           0.00
    t0     0.20           0.10
    t1     0.20           0.095
    t2     0.20           0.05

A 2 + 2 query returns i0, i1 (image head) and t0, t1 (text head). Under ``head_fusion="max"`` each
head's cosines are divided by its best: i0 1, i1 0.94 / 0.95 = 0.98947, t0 1, t1 0.95, so at
T = 0.05 the retrieval weights are proportional to e^0, e^-0.2105, e^0, e^-1: every text weight is
within a factor e = 2.72 of every image weight. With raw cosines (``"none"``) the text nodes sit
0.85 below, a factor e^17 ~ 2.4e7.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.schema import QueryBundle
from PIL import Image

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.postprocessor import META_LVLM_RERANK_SCORE, LVLMRerank
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs
from llama_index_lvlm_retriever.retriever import META_HEAD, LVLMAwareRetriever
from llama_index_lvlm_retriever.retriever.fusion import fuse_head_scores
from llama_index_lvlm_retriever.tasks import TaskSpec

DIM = 8
TASK = TaskSpec(name="demo", labels=("benign", "malignant"), question="Benign or malignant? Answer {options}.")
COSINES = {"i0": (0.95, 0.0), "i1": (0.94, 0.0), "i2": (0.90, 0.0), "t0": (0.20, 0.10), "t1": (0.20, 0.095), "t2": (0.20, 0.05)}


class FixedQueryEmbedding(MultiModalEmbedding):
    """Every image embeds as e_0; texts as e_7 (never used for retrieval here)."""

    model_name: str = "fixed-query"

    @classmethod
    def class_name(cls) -> str:
        return "FixedQueryEmbedding"

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        return [1.0] + [0.0] * (DIM - 1)

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._get_image_embedding(img_file_path)

    def _get_text_embedding(self, text: str) -> list[float]:
        return [0.0] * (DIM - 1) + [1.0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


class UniformReader(Reader):
    """The same label distribution for every candidate: only retrieval weights differ."""

    task = TASK

    def score(
        self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem | None]], *, show_progress: bool = False
    ) -> ReaderScores:
        check_inputs(cases, candidates)
        p = np.full((len(cases), len(candidates[0]), 2), 0.5)
        return ReaderScores(log_probs=np.log(p), labels=TASK.labels)


def _vector(cosine: float, axis: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[0], v[axis] = cosine, math.sqrt(1.0 - cosine**2)
    return v


@pytest.fixture()
def retriever_parts(tmp_path: Path) -> tuple[KnowledgeBase, str]:
    items, image, text = [], [], []
    for n, (item_id, (image_cos, text_cos)) in enumerate(COSINES.items()):
        path = tmp_path / f"{item_id}.png"
        Image.new("RGB", (4, 4), (10 * n, 0, 0)).save(path)
        items.append(KBItem(id=item_id, image_path=str(path), text=f"caption {item_id}"))
        image.append(_vector(image_cos, 1 + n % 6))
        text.append(_vector(text_cos, 1 + (n + 3) % 6))
    kb = KnowledgeBase(FixedQueryEmbedding(), items, np.stack(image), np.stack(text), image_hashes=[f"h{i}" for i in range(6)])
    query = tmp_path / "query.png"
    Image.new("RGB", (4, 4), (0, 0, 200)).save(query)
    return kb, str(query)


def test_two_plus_two_returns_both_heads_and_text_nodes_carry_weight(retriever_parts: tuple[KnowledgeBase, str]) -> None:
    kb, query = retriever_parts
    retriever = LVLMAwareRetriever(kb, k_image=2, k_text=2)  # head_fusion="max" by default
    bundle = QueryBundle(query_str="", image_path=query)
    nodes = retriever.retrieve(bundle)
    assert sorted(n.node.node_id for n in nodes) == ["i0", "i1", "t0", "t1"]
    heads = {n.node.node_id: n.node.metadata[META_HEAD] for n in nodes}
    assert heads == {"i0": "image", "i1": "image", "t0": "text", "t1": "text"}
    scores = {n.node.node_id: n.score for n in nodes}
    assert scores == pytest.approx({"i0": 1.0, "i1": 0.94 / 0.95, "t0": 1.0, "t1": 0.95}, abs=1e-5)

    result = LVLMRerank(reader=UniformReader(), rerank_method="retrieval").rerank(nodes, bundle)
    weights = {n.node.node_id: n.node.metadata[META_LVLM_RERANK_SCORE] for n in result.read_nodes}
    assert sum(weights.values()) == pytest.approx(1.0)
    image_w, text_w = [weights["i0"], weights["i1"]], [weights["t0"], weights["t1"]]
    assert max(image_w + text_w) / min(image_w + text_w) < 3.0  # e^1 = 2.72 by the docstring
    assert weights["t1"] / weights["i0"] == pytest.approx(math.exp(-1.0), rel=1e-4)

    # Raw cosines (the old behaviour): the text head's neighbours get ~no weight.
    raw = LVLMAwareRetriever(kb, k_image=2, k_text=2, head_fusion="none").retrieve(bundle)
    raw_weights = LVLMRerank(reader=UniformReader(), rerank_method="retrieval").rerank(raw, bundle).read_nodes
    text_share = sum(n.node.metadata[META_LVLM_RERANK_SCORE] for n in raw_weights if n.node.node_id.startswith("t"))
    assert text_share < 1e-6


@pytest.mark.parametrize(
    ("method", "scores", "expected"),
    [
        ("max", [0.95, 0.90], [1.0, 0.90 / 0.95]),
        ("max", [-0.2, -0.5], [1.0, 0.7]),  # non-positive best: shifted, order kept
        ("rank", [0.3, 0.9, 0.6], [1 / 3, 1.0, 2 / 3]),  # ranks 3, 1, 2 of n = 3
        ("zscore", [1.0, 3.0], [-1.0, 1.0]),  # mean 2, std 1
        ("zscore", [0.5, 0.5], [0.0, 0.0]),
        ("none", [0.1, 0.2], [0.1, 0.2]),
    ],
)
def test_fuse_head_scores_by_hand(method: str, scores: list[float], expected: list[float]) -> None:
    assert fuse_head_scores(scores, method).tolist() == pytest.approx(expected)


def test_fuse_head_scores_rejects_unknown_method_and_nan() -> None:
    with pytest.raises(ValueError, match=r"unknown head_fusion 'mean'"):
        fuse_head_scores([0.1], "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN or inf"):
        fuse_head_scores([float("nan"), 0.2])
