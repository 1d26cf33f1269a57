"""LVLMRerank with a deterministic fake reader: every number below is computed by hand.

Three image nodes with retrieval scores 0.80, 0.75, 0.70 and the reader's distributions over
(benign, malignant) given each one:

    node  score  p(benign | node)
    a     0.80   0.9
    b     0.75   0.2
    c     0.70   0.4

Retrieval weights at T = 0.05: softmax(16, 15, 14) = e^(2, 1, 0) / (e^2 + e + 1)
    = (0.665241, 0.244728, 0.090031).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_index.core.instrumentation as instrument
import numpy as np
import pytest
from llama_index.core import StorageContext
from llama_index.core.base.llms.types import ImageBlock, TextBlock
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.indices.multi_modal.base import MultiModalVectorStoreIndex
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.base import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CustomLLM,
    LLMMetadata,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores import SimpleVectorStore
from PIL import Image

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.postprocessor import (
    META_LVLM_CONFIDENCE,
    META_LVLM_DISTRIBUTION,
    META_LVLM_LABEL,
    META_LVLM_RERANK_SCORE,
    META_RETRIEVAL_SCORE,
    LVLMRerank,
)
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs
from llama_index_lvlm_retriever.tasks import TaskSpec

TASK = TaskSpec(name="demo", labels=("benign", "malignant"), question="Benign or malignant? Answer {options}.")
W = np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum()  # (0.665241, 0.244728, 0.090031)
P_BENIGN = {"a": 0.9, "b": 0.2, "c": 0.4}
CLOSED_BOOK = (0.5, 0.5)


class FakeReader(Reader):
    """p(benign | candidate) from a table keyed by candidate id; records what it was asked."""

    def __init__(self, table: dict[str, Sequence[float]], task: TaskSpec = TASK, one_hot: bool = False) -> None:
        self.task = task
        self.table = table
        self.one_hot = one_hot
        self.calls: list[tuple[list[Case], list[list[KBItem | None]]]] = []

    def score(
        self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem | None]], *, show_progress: bool = False
    ) -> ReaderScores:
        k = check_inputs(cases, candidates)
        self.calls.append((list(cases), [list(row) for row in candidates]))
        probs = np.array([[self.table["<closed>" if c is None else c.id] for c in row] for row in candidates])
        with np.errstate(divide="ignore"):
            log_probs = np.log(probs)  # one-hot rows give -inf, as an LLM reader's do
        assert log_probs.shape == (len(cases), k, self.task.n_labels)
        return ReaderScores(log_probs=log_probs, labels=self.task.labels, multi_label=self.task.multi_label)


def _png(path: Path, value: int) -> str:
    Image.new("RGB", (8, 8), (value, value, value)).save(path)
    return str(path)


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, str]:
    return {name: _png(tmp_path / f"{name}.png", 40 * i) for i, name in enumerate(["a", "b", "c", "query"])}


def _nodes(images: dict[str, str], scores: Sequence[float | None] = (0.80, 0.75, 0.70)) -> list[NodeWithScore]:
    return [
        NodeWithScore(node=ImageNode(id_=name, text=f"caption {name}", image_path=images[name]), score=s)
        for name, s in zip("abc", scores)
    ]


def _reader() -> FakeReader:
    return FakeReader({k: (v, 1.0 - v) for k, v in P_BENIGN.items()} | {"<closed>": CLOSED_BOOK})


def _bundle(images: dict[str, str]) -> QueryBundle:
    return QueryBundle(query_str="Is it malignant?", image_path=images["query"])


def test_weighted_fusion_posterior_rerank_and_node_metadata(images: dict[str, str]) -> None:
    reader = _reader()
    rerank = LVLMRerank(reader=reader)
    result = rerank.rerank(_nodes(images), _bundle(images))

    # One batched reader call: one case, the three nodes as its candidates.
    assert len(reader.calls) == 1
    (case,), (row,) = reader.calls[0]
    assert case.image_path == images["query"] and case.question == "Is it malignant?"
    assert [c.id for c in row] == ["a", "b", "c"] and row[0].image_path == images["a"]
    assert row[0].text == "caption a"

    # p(benign) = 0.665241*0.9 + 0.244728*0.2 + 0.090031*0.4 = 0.683675
    benign = float(W @ [0.9, 0.2, 0.4])
    assert benign == pytest.approx(0.683675, abs=1e-6)
    np.testing.assert_allclose(result.distribution, [benign, 1 - benign])
    assert result.answer == "benign" and result.answer_probability == pytest.approx(benign)
    # votes (benign, malignant, malignant): majority malignant, agreement 2/3,
    # entropy -(1/3 ln 1/3 + 2/3 ln 2/3) / ln 2 = 0.918296
    assert result.stats.votes == (0, 1, 1) and not result.stats.consistent
    assert result.stats.agreement == pytest.approx(2 / 3)
    assert result.stats.vote_entropy == pytest.approx(0.918296, abs=1e-6)
    assert result.stats.n_distinct == 2
    # posterior given benign: w_i * p_i(benign) / 0.683675 = (0.875733, 0.071592, 0.052675)
    posterior = W * [0.9, 0.2, 0.4] / benign
    assert [n.node.node_id for n in result.nodes] == ["a", "b", "c"]
    np.testing.assert_allclose([n.score for n in result.nodes], posterior)
    assert posterior[0] == pytest.approx(0.875733, abs=1e-6)

    meta_b = result.nodes[1].node.metadata
    assert meta_b[META_LVLM_LABEL] == "malignant"
    assert meta_b[META_LVLM_CONFIDENCE] == pytest.approx(0.8)
    assert meta_b[META_LVLM_DISTRIBUTION] == pytest.approx({"benign": 0.2, "malignant": 0.8})
    assert meta_b[META_RETRIEVAL_SCORE] == pytest.approx(0.75)
    assert meta_b[META_LVLM_RERANK_SCORE] == pytest.approx(posterior[1])
    assert META_LVLM_DISTRIBUTION in result.nodes[1].node.excluded_llm_metadata_keys


def test_majority_vote_changes_answer_and_order(images: dict[str, str]) -> None:
    result = LVLMRerank(reader=_reader(), aggregation="majority").rerank(_nodes(images), _bundle(images))
    np.testing.assert_allclose(result.distribution, [1 / 3, 2 / 3])
    assert result.answer == "malignant"
    # posterior given malignant: w * (0.1, 0.8, 0.6) = (0.066524, 0.195782, 0.054018) / 0.316325
    joint = W * [0.1, 0.8, 0.6]
    assert [n.node.node_id for n in result.nodes] == ["b", "a", "c"]
    np.testing.assert_allclose([n.score for n in result.nodes], joint[[1, 0, 2]] / joint.sum())
    assert result.nodes[0].score == pytest.approx(0.618929, abs=1e-6)


def test_most_confident_with_reader_rerank_and_top_n(images: dict[str, str]) -> None:
    rerank = LVLMRerank(reader=_reader(), aggregation="most_confident", rerank_method="reader", top_n=2)
    result = rerank.rerank(_nodes(images), _bundle(images))
    np.testing.assert_allclose(result.distribution, [0.9, 0.1])  # node a: max prob 0.9 > b's 0.8
    # reader probability of benign: a 0.9, c 0.4, b 0.2; top 2 kept, all three were read
    assert [n.node.node_id for n in result.nodes] == ["a", "c"]
    assert [n.score for n in result.nodes] == pytest.approx([0.9, 0.4])
    assert [n.node.node_id for n in result.read_nodes] == ["a", "c", "b"]


def test_unanimous_one_hot_answers_and_missing_scores(images: dict[str, str]) -> None:
    # One-hot distributions (log 0 = -inf, as from an LLM reader) and no retrieval scores.
    reader = FakeReader({"a": (1.0, 0.0), "b": (1.0, 0.0), "c": (1.0, 0.0)})
    result = LVLMRerank(reader=reader).rerank(_nodes(images, (None, None, None)), _bundle(images))
    assert result.answer == "benign" and result.answer_probability == pytest.approx(1.0)
    assert (result.stats.consistent, result.stats.agreement, result.stats.vote_entropy) == (True, 1.0, 0.0)
    assert result.stats.n_distinct == 1
    # uniform weights, equal reader probabilities: posterior 1/3 each, retriever order kept
    assert [n.score for n in result.nodes] == pytest.approx([1 / 3] * 3)
    assert [n.node.node_id for n in result.nodes] == ["a", "b", "c"]
    assert result.nodes[0].node.metadata[META_RETRIEVAL_SCORE] is None


def test_multi_label_answer_is_a_label_set(images: dict[str, str]) -> None:
    task = TaskSpec(name="ml", labels=("effusion", "nodule"), question="Is there {label}?", multi_label=True)
    reader = FakeReader({"a": (0.9, 0.2), "b": (0.7, 0.6), "c": (0.8, 0.1)}, task=task)
    result = LVLMRerank(reader=reader).rerank(_nodes(images), _bundle(images))
    # per-label weighted: effusion 0.665241*0.9+0.244728*0.7+0.090031*0.8 = 0.842051 -> yes;
    # nodule 0.665241*0.2+0.244728*0.6+0.090031*0.1 = 0.288888 -> no
    effusion, nodule = float(W @ [0.9, 0.7, 0.8]), float(W @ [0.2, 0.6, 0.1])
    assert result.answer == ("effusion",)
    assert result.answer_probability == pytest.approx(effusion * (1 - nodule))
    assert result.stats.votes == (1, 3, 1) and result.stats.agreement == pytest.approx(2 / 3)
    meta_b = next(n for n in result.nodes if n.node.node_id == "b").node.metadata
    assert meta_b[META_LVLM_LABEL] == ["effusion", "nodule"]
    assert meta_b[META_LVLM_CONFIDENCE] == pytest.approx(0.7 * 0.6)


class _Recorder(BaseEventHandler):
    events: list[BaseEvent] = []

    @classmethod
    def class_name(cls) -> str:
        return "_Recorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


def test_rerank_events_fire(images: dict[str, str]) -> None:
    handler = _Recorder(events=[])
    root = instrument.get_dispatcher()
    root.add_event_handler(handler)
    try:
        LVLMRerank(reader=_reader(), top_n=1).postprocess_nodes(_nodes(images), _bundle(images))
    finally:
        root.event_handlers.remove(handler)
    starts = [e for e in handler.events if isinstance(e, ReRankStartEvent)]
    ends = [e for e in handler.events if isinstance(e, ReRankEndEvent)]
    assert len(starts) == 1 and len(ends) == 1
    assert starts[0].top_n == 1 and len(starts[0].nodes) == 3 and starts[0].model_name == "FakeReader"
    assert [n.node.node_id for n in ends[0].nodes] == ["a"]


def test_reranking_callback_event_fires(images: dict[str, str]) -> None:
    # The legacy callback manager sees a RERANKING event, as with the core rerankers.
    debug = LlamaDebugHandler()
    rerank = LVLMRerank(reader=_reader(), top_n=1, callback_manager=CallbackManager([debug]))
    rerank.postprocess_nodes(_nodes(images), _bundle(images))
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1
    start, end = pairs[0]
    assert start.payload[EventPayload.MODEL_NAME] == "FakeReader" and len(start.payload[EventPayload.NODES]) == 3
    assert start.payload[EventPayload.TOP_K] == 1
    assert [n.node.node_id for n in end.payload[EventPayload.NODES]] == ["a"]


def test_query_without_image_raises(images: dict[str, str]) -> None:
    rerank = LVLMRerank(reader=_reader())
    with pytest.raises(ValueError, match="needs the query image"):
        rerank.postprocess_nodes(_nodes(images), QueryBundle(query_str="Is it malignant?"))
    with pytest.raises(ValueError, match="needs the query image"):
        rerank.postprocess_nodes(_nodes(images), query_str="Is it malignant?")


def test_missing_or_unreadable_image(images: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    nodes = _nodes(images)
    nodes[1].node.image_path = str(tmp_path / "gone.png")
    nodes[2].node.image_path = str(broken)
    with pytest.raises(ValueError, match=r"node 'b': image .*gone\.png.* skip_unreadable=True"):
        LVLMRerank(reader=_reader()).rerank(nodes, _bundle(images))
    with caplog.at_level(logging.WARNING):
        result = LVLMRerank(reader=_reader(), skip_unreadable=True).rerank(nodes, _bundle(images))
    assert [n.node.node_id for n in result.nodes] == ["a"]
    assert [node_id for node_id, _ in result.skipped] == ["b", "c"]
    assert "skipping node 'b'" in caplog.text and "skipping node 'c'" in caplog.text
    with pytest.raises(ValueError, match="none can be read"):
        LVLMRerank(reader=_reader(), skip_unreadable=True).rerank(nodes[1:], _bundle(images))
    inline = NodeWithScore(node=ImageNode(id_="inline", image="aGVsbG8="), score=0.5)
    with pytest.raises(ValueError, match="node 'inline': its image is inline/URL only; give it an image_path"):
        LVLMRerank(reader=_reader()).rerank([inline], _bundle(images))


def test_text_only_nodes(images: dict[str, str]) -> None:
    def nodes() -> list[NodeWithScore]:
        text = NodeWithScore(node=TextNode(id_="t", text="a benign-looking report", metadata={"kb_id": "kb-t"}), score=0.7)
        return [*_nodes(images)[:2], text]

    table = {"a": (0.9, 0.1), "b": (0.2, 0.8), "kb-t": (0.4, 0.6), "<closed>": CLOSED_BOOK}
    reader = FakeReader(table)
    background = LVLMRerank(reader=reader).rerank(nodes(), _bundle(images))
    item = reader.calls[-1][1][0][2]
    assert (item.id, item.image_path, item.text) == ("kb-t", "", "a benign-looking report")
    assert background.answer_probability == pytest.approx(float(W @ [0.9, 0.2, 0.4]))

    closed = LVLMRerank(reader=reader, text_only="closed_book").rerank(nodes(), _bundle(images))
    assert reader.calls[-1][1][0][2] is None
    assert closed.answer_probability == pytest.approx(float(W @ [0.9, 0.2, 0.5]))

    skipped = LVLMRerank(reader=reader, text_only="skip").rerank(nodes(), _bundle(images))
    assert [c.id for c in reader.calls[-1][1][0]] == ["a", "b"]
    assert skipped.skipped == (("t", "text-only node (text_only='skip')"),)
    w2 = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()  # scores 0.80, 0.75 at T = 0.05
    assert skipped.answer_probability == pytest.approx(float(w2 @ [0.9, 0.2]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_n": 0}, "top_n"),
        ({"temperature": 0.0}, "temperature"),
        ({"aggregation": "mean"}, "aggregation"),
        ({"text_only": "drop"}, "text_only"),
    ],
)
def test_bad_settings_raise(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LVLMRerank(reader=_reader(), **kwargs)


def test_reader_must_be_a_reader() -> None:
    with pytest.raises(ValueError, match="reader must be a Reader"):
        LVLMRerank(reader="Qwen/Qwen2-VL-2B-Instruct")  # type: ignore[arg-type]


class _FixedRetriever(BaseRetriever):
    def __init__(self, nodes: list[NodeWithScore]) -> None:
        self._nodes = nodes
        super().__init__()

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return list(self._nodes)


class _ChatLLM(CustomLLM):
    received: list[list[ChatMessage]] = []

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=True, model_name="fake-chat")

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        self.received.append(list(messages))
        return ChatResponse(message=ChatMessage(role="assistant", content="benign"))

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise NotImplementedError("the multimodal synthesizer calls chat()")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError("the multimodal synthesizer calls chat()")


def test_inside_retriever_query_engine(images: dict[str, str]) -> None:
    llm = _ChatLLM(received=[])
    rerank = LVLMRerank(reader=_reader(), aggregation="majority", top_n=2)
    engine = RetrieverQueryEngine.from_args(
        _FixedRetriever(_nodes(images)), llm=llm, node_postprocessors=[rerank], multimodal=True
    )
    response = engine.query(_bundle(images))
    assert str(response) == "benign"
    # majority answer malignant -> posterior order b, a, c; top 2
    assert [n.node.node_id for n in response.source_nodes] == ["b", "a"]
    assert response.source_nodes[0].node.metadata[META_LVLM_LABEL] == "malignant"
    blocks = [b for messages in llm.received for m in messages for b in m.blocks]
    assert sum(isinstance(b, ImageBlock) for b in blocks) == 2  # the two kept nodes' images
    sent = "\n".join(b.text for b in blocks if isinstance(b, TextBlock))
    assert "Is it malignant?" in sent and META_LVLM_DISTRIBUTION not in sent


class _GreyEmbedding(MultiModalEmbedding):
    """Image -> (mean grey level, 1); text -> (1, 1): enough to index and search a few images."""

    model_name: str = "grey-stub"

    @classmethod
    def class_name(cls) -> str:
        return "_GreyEmbedding"

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        with Image.open(img_file_path) as img:
            return [float(np.asarray(img.convert("L")).mean()) + 1.0, 1.0]

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._get_image_embedding(img_file_path)

    def _get_text_embedding(self, text: str) -> list[float]:
        return [1.0, 1.0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return [1.0, 1.0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return [1.0, 1.0]


def test_nodes_from_multimodal_vector_store_index(images: dict[str, str]) -> None:
    embed = _GreyEmbedding()
    nodes = [ImageNode(id_=name, text=f"caption {name}", image_path=images[name]) for name in "abc"]
    storage = StorageContext.from_defaults(vector_store=SimpleVectorStore(), image_store=SimpleVectorStore())
    index = MultiModalVectorStoreIndex(
        nodes, storage_context=storage, embed_model=embed, image_embed_model=embed, show_progress=False
    )
    retrieved = index.as_retriever(image_similarity_top_k=3).image_to_image_retrieve(images["query"])
    assert sorted(n.node.node_id for n in retrieved) == ["a", "b", "c"]
    assert all("kb_id" not in n.node.metadata for n in retrieved)

    result = LVLMRerank(reader=_reader()).rerank(retrieved, _bundle(images))
    # node ids stand in for kb ids; the answer is read from the same table as above
    assert {n.node.node_id for n in result.nodes} == {"a", "b", "c"}
    by_id = {n.node.node_id: n.node.metadata for n in result.nodes}
    assert by_id["c"][META_LVLM_LABEL] == "malignant" and by_id["a"][META_LVLM_CONFIDENCE] == pytest.approx(0.9)
    scores = np.array([by_id[i][META_RETRIEVAL_SCORE] for i in "abc"])
    weights = np.exp(scores / 0.05 - (scores / 0.05).max())
    weights /= weights.sum()
    assert result.answer_probability == pytest.approx(max(weights @ [0.9, 0.2, 0.4], 1 - weights @ [0.9, 0.2, 0.4]))
    assert math.isclose(sum(n.score for n in result.nodes), 1.0)


def test_class_name_and_namespace_import() -> None:
    from llama_index.postprocessor.lvlm_rerank import LVLMRerank as Exported

    assert Exported is LVLMRerank and LVLMRerank.class_name() == "LVLMRerank"
