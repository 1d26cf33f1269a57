"""LVLMDiagnosisQueryEngine: hand-computed responses with a fake reader, then tiny CLIP + tiny LLaVA.

Fake setup (as in test_postprocessor.py): nodes a, b, c with retrieval scores 0.80, 0.75, 0.70
and p(benign | node) = 0.9, 0.2, 0.4. Retrieval weights at T = 0.05 are
e^(2, 1, 0) / (e^2 + e + 1) = (0.665241, 0.244728, 0.090031), so the weighted answer is benign with
p = 0.665241*0.9 + 0.244728*0.2 + 0.090031*0.4 = 0.683675, while the votes (benign, malignant,
malignant) make malignant the majority with agreement 2/3: only node a leads to the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle
from PIL import Image

from llama_index_lvlm_retriever.aggregation import aggregate
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.evaluation.consistency_evaluator import ConsistencyEvaluator
from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.postprocessor import (
    META_LVLM_DISTRIBUTION,
    META_RETRIEVAL_SCORE,
    LVLMRerank,
)
from llama_index_lvlm_retriever.query_engine import LVLMDiagnosisQueryEngine
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs
from llama_index_lvlm_retriever.tasks import TaskSpec

TASK = TaskSpec(name="demo", labels=("benign", "malignant"), question="Benign or malignant? Answer {options}.")
W = np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum()


class FakeReader(Reader):
    """p(benign | candidate) from a table keyed by candidate id."""

    def __init__(self, p_benign: dict[str, float]) -> None:
        self.task = TASK
        self.p_benign = p_benign

    def score(
        self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem | None]], *, show_progress: bool = False
    ) -> ReaderScores:
        check_inputs(cases, candidates)
        p = np.array([[self.p_benign[c.id] for c in row] for row in candidates])  # (n, k)
        return ReaderScores(log_probs=np.log(np.stack([p, 1 - p], axis=-1)), labels=TASK.labels)


class FixedRetriever(BaseRetriever):
    def __init__(self, nodes: list[NodeWithScore]) -> None:
        self._nodes = nodes
        super().__init__()

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [NodeWithScore(node=n.node.model_copy(deep=True), score=n.score) for n in self._nodes]


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, str]:
    out = {}
    for i, name in enumerate(["a", "b", "c", "query"]):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{name}.png")
        out[name] = str(tmp_path / f"{name}.png")
    return out


def _engine(images: dict[str, str], p_benign: dict[str, float], **kwargs: object) -> LVLMDiagnosisQueryEngine:
    nodes = [
        NodeWithScore(node=ImageNode(id_=name, text=f"caption {name}", image_path=images[name]), score=s)
        for name, s in zip("abc", (0.80, 0.75, 0.70))
    ]
    return LVLMDiagnosisQueryEngine.from_defaults(retriever=FixedRetriever(nodes), reader=FakeReader(p_benign), **kwargs)


def test_response_metadata_abstain_and_evaluator(images: dict[str, str]) -> None:
    engine = _engine(images, {"a": 0.9, "b": 0.2, "c": 0.4})
    bundle = QueryBundle(query_str="Is it malignant?", image_path=images["query"])
    response = engine.query(bundle)

    meta = response.metadata
    assert set(meta) == set(keys.RESPONSE_KEYS)
    benign = float(W @ [0.9, 0.2, 0.4])  # 0.683675
    assert meta[keys.ANSWER] == "benign" and meta[keys.PROBABILITY] == pytest.approx(benign)
    assert meta[keys.DISTRIBUTION] == pytest.approx({"benign": benign, "malignant": 1 - benign})
    assert meta[keys.CONSISTENT] is False and meta[keys.AGREEMENT] == pytest.approx(2 / 3)
    assert meta[keys.VOTE_ENTROPY] == pytest.approx(0.918296, abs=1e-6) and meta[keys.N_DISTINCT] == 2
    # Support of the answer shown (benign): node a alone, 1 of 3, 66.5% of the retrieval weight.
    assert meta[keys.SUPPORT] == pytest.approx(1 / 3) and meta[keys.WEIGHTED_SUPPORT] == pytest.approx(W[0])
    assert meta[keys.ABSTAIN] is True  # default min_support 1.0: abstain unless every neighbour supports it
    assert meta[keys.NEIGHBOURS] == [
        {keys.NEIGHBOUR_KB_ID: "a", keys.NEIGHBOUR_HEAD: None, keys.NEIGHBOUR_RETRIEVAL_SCORE: pytest.approx(0.80),
         keys.NEIGHBOUR_PREDICTION: "benign", keys.NEIGHBOUR_PROBABILITY: pytest.approx(0.9),
         keys.NEIGHBOUR_KB_LABEL: None},
        {keys.NEIGHBOUR_KB_ID: "b", keys.NEIGHBOUR_HEAD: None, keys.NEIGHBOUR_RETRIEVAL_SCORE: pytest.approx(0.75),
         keys.NEIGHBOUR_PREDICTION: "malignant", keys.NEIGHBOUR_PROBABILITY: pytest.approx(0.8),
         keys.NEIGHBOUR_KB_LABEL: None},
        {keys.NEIGHBOUR_KB_ID: "c", keys.NEIGHBOUR_HEAD: None, keys.NEIGHBOUR_RETRIEVAL_SCORE: pytest.approx(0.70),
         keys.NEIGHBOUR_PREDICTION: "malignant", keys.NEIGHBOUR_PROBABILITY: pytest.approx(0.6),
         keys.NEIGHBOUR_KB_LABEL: None},
    ]
    assert response.response == (
        "Inconclusive: too few retrieved neighbours support the answer; most likely benign "
        "(probability 0.68; 1 of 3 retrieved neighbours lead to it, 67% of the retrieval weight). Consider abstaining."
    )
    assert [n.node.node_id for n in response.source_nodes] == ["a", "b", "c"]
    assert response.source_nodes[0].node.metadata[META_RETRIEVAL_SCORE] == pytest.approx(0.80)

    result = ConsistencyEvaluator().evaluate_response(query=bundle.query_str, response=response)
    assert not result.invalid_result and result.passing is False
    assert result.score == pytest.approx(2 / 3)
    assert "b -> 'malignant' (p=0.80)" in result.feedback and "The engine abstained." in result.feedback

    # The majority's share (2/3) passes 0.6, but it backs malignant, not the answer shown: still abstain.
    not_enough = _engine(images, {"a": 0.9, "b": 0.2, "c": 0.4}, min_support=0.6).query(bundle)
    assert not_enough.metadata[keys.AGREEMENT] == pytest.approx(2 / 3) and not_enough.metadata[keys.ABSTAIN] is True
    relaxed = _engine(images, {"a": 0.9, "b": 0.2, "c": 0.4}, min_support=0.3, top_n=1).query(bundle)
    assert relaxed.metadata[keys.ABSTAIN] is False
    assert relaxed.response == "benign (probability 0.68; 1 of 3 retrieved neighbours lead to it, 67% of the retrieval weight)"
    assert [n.node.node_id for n in relaxed.source_nodes] == ["a"]


def test_consistent_response_passes_and_async_agrees(images: dict[str, str]) -> None:
    engine = _engine(images, {"a": 0.9, "b": 0.7, "c": 0.6})
    bundle = QueryBundle(query_str="", image_path=images["query"])
    response = engine.query(bundle)
    assert response.metadata[keys.CONSISTENT] is True and response.metadata[keys.ABSTAIN] is False
    assert response.response == (
        f"benign (probability {float(W @ [0.9, 0.7, 0.6]):.2f}; 3 of 3 retrieved neighbours lead to it, "
        "100% of the retrieval weight)"
    )
    assert ConsistencyEvaluator().evaluate_response(response=response).passing is True
    async_response = asyncio.run(engine.aquery(bundle))
    assert async_response.metadata == response.metadata


def test_bad_inputs(images: dict[str, str]) -> None:
    engine = _engine(images, {"a": 0.9, "b": 0.7, "c": 0.6})
    with pytest.raises(ValueError, match="needs the query image"):
        engine.query("Is it malignant?")
    with pytest.raises(ValueError, match="exactly one of knowledge_base= or retriever="):
        LVLMDiagnosisQueryEngine.from_defaults(reader=FakeReader({}))
    with pytest.raises(ValueError, match=r"min_support must be in \(0, 1\], got 1.5"):
        LVLMDiagnosisQueryEngine(engine.retriever, engine.rerank, min_support=1.5)
    with pytest.raises(ValueError, match="found no nodes"):
        LVLMDiagnosisQueryEngine(FixedRetriever([]), engine.rerank).query(
            QueryBundle(query_str="", image_path=images["query"])
        )
    assert LVLMDiagnosisQueryEngine.class_name() == "LVLMDiagnosisQueryEngine"


def test_tiny_clip_knowledge_base_and_tiny_llava_reader(tmp_path: Path) -> None:
    from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
    from llama_index_lvlm_retriever.kb import KnowledgeBase
    from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
    from llama_index_lvlm_retriever.tasks import get_task
    from llama_index_lvlm_retriever.testing import build_tiny_clip, build_tiny_llava

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        items = []
        for i, caption in enumerate(["benign cyst", "malignant mass", "normal tissue"]):
            path = tmp_path / f"kb{i}.png"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
            items.append(KBItem(id=f"kb{i}", image_path=str(path), text=caption, label=None))
        kb = KnowledgeBase.build(items, CLIPEmbedding.from_pretrained(build_tiny_clip(tmp_path / "clip")), show_progress=False)
        reader = HFLVLMReader.from_pretrained(build_tiny_llava(tmp_path / "llava"), get_task("breastmnist"))
        engine = LVLMDiagnosisQueryEngine.from_defaults(knowledge_base=kb, reader=reader, k_image=2, k_text=1, min_support=0.5)
        query = tmp_path / "query.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(query)
        response = engine.query(QueryBundle(query_str="", image_path=str(query)))
    finally:
        torch.set_num_threads(threads)

    meta = response.metadata
    assert set(meta) == set(keys.RESPONSE_KEYS)
    assert meta[keys.ANSWER] in reader.task.labels
    assert sum(meta[keys.DISTRIBUTION].values()) == pytest.approx(1.0)
    nodes = response.source_nodes
    assert 2 <= len(nodes) <= 3 and all(n.node.node_id.startswith("kb") for n in nodes)
    assert [n.score for n in nodes] == sorted((n.score for n in nodes), reverse=True)
    # The answer is the library's weighted fusion of what was written on the nodes.
    per_node = np.array([[n.node.metadata[META_LVLM_DISTRIBUTION][lab] for lab in reader.task.labels] for n in nodes])
    retrieval = np.array([n.node.metadata[META_RETRIEVAL_SCORE] for n in nodes])
    fused = aggregate(per_node, retrieval, "weighted", LVLMRerank(reader=reader).temperature)
    assert meta[keys.PROBABILITY] == pytest.approx(float(fused.max()), rel=1e-6)
    result = ConsistencyEvaluator().evaluate_response(response=response)
    assert result.score == pytest.approx(meta[keys.AGREEMENT]) and result.passing == meta[keys.CONSISTENT]
