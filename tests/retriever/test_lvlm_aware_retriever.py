"""LVLMAwareRetriever on a hand-computable knowledge base.

The stub encoder embeds a solid-colour image as its RGB colour and a caption as its counts of the
words red/green/blue, so every score below is a cosine between small integer vectors.

Knowledge base (image colour -> image vector; caption -> text vector):

    id      image            image vector       caption             text vector
    red     (255, 0, 0)      (1, 0, 0)          "red"               (1, 0, 0)
    yellow  (255, 255, 0)    (1, 1, 0)/sqrt2    "red green"         (1, 1, 0)/sqrt2
    blue    (0, 0, 255)      (0, 0, 1)          "green green blue"  (0, 2, 1)/sqrt5
    cyan    (0, 255, 255)    (0, 1, 1)/sqrt2    "blue"              (0, 0, 1)
    white   (255, 255, 255)  (1, 1, 1)/sqrt3    "green blue"        (0, 1, 1)/sqrt2

Query: a yellow image (pixel-identical to the KB's "yellow"), q = (1, 1, 0)/sqrt2.
    image head: yellow 1, white 2/sqrt6 = 0.816497, red 1/sqrt2 = 0.707107, cyan 0.5, blue 0
    text head:  yellow 1, red 0.707107, blue 2/sqrt10 = 0.632456, white 0.5, cyan 0

The scores asserted here are these raw cosines, so the retrievers use ``head_fusion="none"``; the
per-head normalisation has its own hand-computed tests in ``test_fusion.py``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import llama_index.core.instrumentation as instrument
import numpy as np
import pytest
import torch
from llama_index.core.base.llms.types import ImageBlock, TextBlock
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.base import BaseEvent
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent, RetrievalStartEvent
from llama_index.core.llms import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CustomLLM,
    LLMMetadata,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, QueryBundle
from PIL import Image

from llama_index_lvlm_retriever.data.images import ImageLoadError
from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import UsageError
from llama_index_lvlm_retriever.heads import QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.retriever import (
    HEAD_IMAGE,
    HEAD_TEXT,
    META_HEAD,
    META_HEADS,
    META_IMAGE_RANK,
    META_IMAGE_SCORE,
    META_KB_ID,
    META_KB_METADATA,
    META_LABEL,
    META_SOURCE,
    META_TEXT_RANK,
    META_TEXT_SCORE,
    LVLMAwareRetriever,
)
from llama_index_lvlm_retriever.testing.colour import ColourEmbedding as _ColourEmbedding

S2, S3, S5, S10 = math.sqrt(2), math.sqrt(3), math.sqrt(5), math.sqrt(10)
YELLOW = (255, 255, 0)


class ColourEmbedding(_ColourEmbedding):
    """The colour stand-in, recording the sizes of its batched image calls (for the batching test)."""

    image_batches: ClassVar[list[int]] = []

    def _get_image_embeddings(self, img_file_paths: list[Any]) -> list[list[float]]:
        self.image_batches.append(len(img_file_paths))
        return [self._get_image_embedding(p) for p in img_file_paths]


def _png(path: Path, colour: tuple[int, int, int]) -> str:
    Image.new("RGB", (4, 4), colour).save(path)
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kb")


@pytest.fixture(scope="module")
def kb(folder: Path) -> KnowledgeBase:
    rows = [
        ("red", (255, 0, 0), "red", "red", {"split": "train"}),
        ("yellow", YELLOW, "red green", "yellow", {}),
        ("blue", (0, 0, 255), "green green blue", None, {}),
        ("cyan", (0, 255, 255), "blue", "cyan", {}),
        ("white", (255, 255, 255), "green blue", "white", {}),
    ]
    items = [
        KBItem(id=i, image_path=_png(folder / f"{i}.png", c), text=t, source="stub", label=lab, metadata=m)
        for i, c, t, lab, m in rows
    ]
    return KnowledgeBase.build(items, ColourEmbedding(), show_progress=False)


@pytest.fixture(scope="module")
def query(folder: Path) -> str:
    # Same pixels as the KB's "yellow", different file.
    return _png(folder / "query.png", YELLOW)


def _ids_scores(nodes: Sequence[NodeWithScore]) -> list[tuple[str, float]]:
    return [(n.node.node_id, round(float(n.score), 5)) for n in nodes]


def test_default_retrieval_merges_both_heads(kb: KnowledgeBase, query: str) -> None:
    retriever = LVLMAwareRetriever(kb, head_fusion="none")
    nodes = retriever.retrieve(QueryBundle(query_str="", image_path=query))
    # image top-2: yellow 1, white 2/sqrt6; text top-2: yellow 1, red 1/sqrt2.
    # yellow is found by both heads and appears once.
    assert _ids_scores(nodes) == [("yellow", 1.0), ("white", round(2 / math.sqrt(6), 5)), ("red", round(1 / S2, 5))]


def test_node_shape_and_metadata(kb: KnowledgeBase, query: str, folder: Path) -> None:
    nodes = LVLMAwareRetriever(kb, head_fusion="none").retrieve(QueryBundle(query_str="", image_path=query))
    yellow, white, red = (n.node for n in nodes)
    assert isinstance(yellow, ImageNode)
    assert yellow.image_path == str(folder / "yellow.png") and yellow.text == "red green"
    assert yellow.metadata == {
        META_KB_ID: "yellow",
        META_SOURCE: "stub",
        META_LABEL: "yellow",
        META_HEADS: [HEAD_IMAGE, HEAD_TEXT],
        META_HEAD: HEAD_IMAGE,  # equal cosines (1, 1): HEADS order breaks the tie
        META_IMAGE_SCORE: pytest.approx(1.0, abs=1e-6),
        META_TEXT_SCORE: pytest.approx(1.0, abs=1e-6),
        META_IMAGE_RANK: 1,
        META_TEXT_RANK: 1,
    }
    assert white.metadata[META_HEADS] == [HEAD_IMAGE] and white.metadata[META_IMAGE_RANK] == 2
    assert META_TEXT_SCORE not in white.metadata
    # red: text rank 2, its own metadata kept under one key.
    assert red.metadata[META_HEADS] == [HEAD_TEXT] and red.metadata[META_TEXT_RANK] == 2
    assert red.metadata[META_KB_METADATA] == {"split": "train"}
    # The LLM sees provenance and the caption, not the bookkeeping; embeddings see the caption only.
    llm_text = yellow.get_content(metadata_mode=MetadataMode.LLM)
    assert "source: stub" in llm_text and "label: yellow" in llm_text and "red green" in llm_text
    assert "score" not in llm_text and "kb_id" not in llm_text and "heads" not in llm_text
    assert yellow.get_content(metadata_mode=MetadataMode.EMBED) == "red green"


def test_identity_heads_equal_standard_cosine_retrieval(kb: KnowledgeBase, query: str) -> None:
    plain = LVLMAwareRetriever(kb, head_fusion="none", k_image=5, k_text=5)
    explicit = LVLMAwareRetriever(kb, QueryHead.identity(3), QueryHead.identity(3), k_image=5, k_text=5, head_fusion="none")
    emb = plain.embed_queries([query])
    np.testing.assert_allclose(emb, [[1 / S2, 1 / S2, 0.0]], atol=1e-6)
    for retriever in (plain, explicit):
        hits = retriever.search_heads(emb)
        for head, vectors in ((HEAD_IMAGE, kb.image_vectors), (HEAD_TEXT, kb.text_vectors)):
            cosines = vectors @ emb[0]  # brute-force standard RAG
            expected = sorted(zip(cosines.tolist(), (it.id for it in kb.items)), key=lambda t: -t[0])
            got = [(h.score, h.item.id) for h in hits[head][0]]
            assert [i for _, i in got] == [i for _, i in expected]
            np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], atol=1e-6)
    # Hand values: image yellow 1, white .816497, red .707107, cyan .5, blue 0.
    assert [h.item.id for h in plain.search_heads(emb)[HEAD_IMAGE][0]] == ["yellow", "white", "red", "cyan", "blue"]
    # Text: yellow 1, red .707107, blue 2/sqrt10 = .632456, white .5, cyan 0.
    text_hits = plain.search_heads(emb)[HEAD_TEXT][0]
    assert [h.item.id for h in text_hits] == ["yellow", "red", "blue", "white", "cyan"]
    assert text_hits[2].score == pytest.approx(2 / S10, abs=1e-6)


def test_a_trained_head_changes_only_its_own_index(kb: KnowledgeBase, query: str) -> None:
    # Image head: h(e) = W e with W sending (x, y, z) to (2(x + y), 0, x + y); alpha = 1 keeps only
    # h, so the image query becomes (2, 0, 1)/sqrt5: red 2/sqrt5 = .894427, white 3/sqrt15 = .774597,
    # yellow 2/sqrt10 = .632456, blue 1/sqrt5, cyan 1/sqrt10.
    head = QueryHead(QueryHeadConfig(dim=3, kind="linear", alpha=1.0))
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    nodes = LVLMAwareRetriever(kb, head_fusion="none", image_head=head).retrieve(QueryBundle(query_str="", image_path=query))
    # The text head is still the identity: yellow 1, red 1/sqrt2. Merged: yellow 1 (text),
    # red .894427 (image rank 1, text rank 2), white .774597 (image).
    assert _ids_scores(nodes) == [("yellow", 1.0), ("red", round(2 / S5, 5)), ("white", round(3 / math.sqrt(15), 5))]
    red = nodes[1].node.metadata
    assert red[META_HEADS] == [HEAD_IMAGE, HEAD_TEXT]
    assert (red[META_IMAGE_SCORE], red[META_TEXT_SCORE]) == (pytest.approx(2 / S5, abs=1e-6), pytest.approx(1 / S2, abs=1e-6))
    assert (red[META_IMAGE_RANK], red[META_TEXT_RANK]) == (1, 2)


def test_disabling_a_head(kb: KnowledgeBase, query: str) -> None:
    bundle = QueryBundle(query_str="", image_path=query)
    image_only = LVLMAwareRetriever(kb, head_fusion="none", k_text=0).retrieve(bundle)
    assert _ids_scores(image_only) == [("yellow", 1.0), ("white", 0.8165)]
    assert all(n.node.metadata[META_HEADS] == [HEAD_IMAGE] for n in image_only)
    text_only = LVLMAwareRetriever(kb, head_fusion="none", k_image=0).retrieve(bundle)
    assert _ids_scores(text_only) == [("yellow", 1.0), ("red", 0.70711)]
    assert all(n.node.metadata[META_HEADS] == [HEAD_TEXT] for n in text_only)


def test_question_fusion_changes_the_ranking(kb: KnowledgeBase, query: str) -> None:
    # w = 0.25, question "blue" -> (0, 0, 1):
    # f = normalize(0.75 * (1, 1, 0)/sqrt2 + 0.25 * (0, 0, 1)) = (3, 3, sqrt2) / sqrt20.
    # image: white (6 + sqrt2)/(sqrt20 sqrt3) = .957168, yellow 6/sqrt40 = .948683
    # text:  yellow .948683, blue (6 + sqrt2)/(sqrt20 sqrt5) = .741421
    retriever = LVLMAwareRetriever(kb, head_fusion="none", question_weight=0.25)
    emb = retriever.embed_queries([query], ["blue"])
    np.testing.assert_allclose(emb, [[3 / math.sqrt(20), 3 / math.sqrt(20), S2 / math.sqrt(20)]], atol=1e-6)
    nodes = retriever.retrieve(QueryBundle(query_str="blue", image_path=query))
    assert _ids_scores(nodes) == [
        ("white", round((6 + S2) / (math.sqrt(20) * S3), 5)),
        ("yellow", round(6 / math.sqrt(40), 5)),
        ("blue", round((6 + S2) / (math.sqrt(20) * S5), 5)),
    ]
    # An empty question leaves the image query alone; so does weight 0.
    assert _ids_scores(retriever.retrieve(QueryBundle(query_str="", image_path=query))) == _ids_scores(
        LVLMAwareRetriever(kb, head_fusion="none").retrieve(QueryBundle(query_str="blue", image_path=query))
    )


def test_exclude_self_drops_the_pixel_identical_item(kb: KnowledgeBase, query: str) -> None:
    nodes = LVLMAwareRetriever(kb, head_fusion="none", exclude_self=True).retrieve(QueryBundle(query_str="", image_path=query))
    # Without yellow: image white .816497, red .707107; text red .707107, blue .632456.
    assert _ids_scores(nodes) == [("white", 0.8165), ("red", 0.70711), ("blue", 0.63246)]
    assert nodes[1].node.metadata[META_HEADS] == [HEAD_IMAGE, HEAD_TEXT]
    assert (nodes[1].node.metadata[META_IMAGE_RANK], nodes[1].node.metadata[META_TEXT_RANK]) == (2, 1)


def test_retrieve_batch_embeds_once_and_excludes_per_query(kb: KnowledgeBase, query: str, folder: Path) -> None:
    retriever = LVLMAwareRetriever(kb, head_fusion="none")
    red_query = _png(folder / "red_query.png", (255, 0, 0))
    ColourEmbedding.image_batches.clear()
    results = retriever.retrieve_batch([query, red_query], exclude_ids=[{"yellow"}, set()])
    assert ColourEmbedding.image_batches == [2]
    assert [n.node.node_id for n in results[0]] == ["white", "red", "blue"]
    # red query (1, 0, 0): image red 1, yellow 1/sqrt2; text red 1, yellow 1/sqrt2.
    assert _ids_scores(results[1]) == [("red", 1.0), ("yellow", 0.70711)]
    # Per-call overrides, and exclude_self on a batch: the red query excludes the KB's red.
    overridden = retriever.retrieve_batch([red_query], k_image=1, k_text=0, exclude_self=True)
    assert _ids_scores(overridden[0]) == [("yellow", 0.70711)]


def test_query_image_inputs_other_than_paths(kb: KnowledgeBase, query: str) -> None:
    retriever = LVLMAwareRetriever(kb, head_fusion="none", exclude_self=True)
    data = Path(query).read_bytes()
    expected = _ids_scores(retriever.retrieve_batch([query])[0])
    for image in (Path(query), data, io.BytesIO(data), Image.open(query)):
        assert _ids_scores(retriever.retrieve_batch([image])[0]) == expected


def test_dicom_and_missing_query_images(kb: KnowledgeBase) -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    # MR_small decodes to grey (176, 176, 176) at (0, 0): the stub sees (1, 1, 1)/sqrt3, which is
    # the KB's white image exactly (score 1; yellow and cyan follow at 2/sqrt6).
    dicom = pydicom_data.get_testdata_file("MR_small.dcm")
    nodes = LVLMAwareRetriever(kb, head_fusion="none", k_image=1, k_text=0).retrieve(QueryBundle(query_str="", image_path=dicom))
    assert _ids_scores(nodes) == [("white", 1.0)]
    with pytest.raises(ImageLoadError, match="image file not found: .*nowhere.png"):
        LVLMAwareRetriever(kb, head_fusion="none").retrieve(QueryBundle(query_str="", image_path="/nowhere.png"))


def test_batched_image_method_of_the_encoder_is_used(kb: KnowledgeBase, query: str) -> None:
    class ArrayColourEmbedding(ColourEmbedding):
        calls: ClassVar[list[int]] = []

        def embed_images(self, images: list[Any]) -> np.ndarray:
            self.calls.append(len(images))
            return np.array([self._get_image_embedding(i) for i in images], dtype=np.float32)

    stub = ArrayColourEmbedding()
    kb_with_method = KnowledgeBase.build(kb.items, stub, show_progress=False)
    stub.calls.clear()
    nodes = LVLMAwareRetriever(kb_with_method, head_fusion="none").retrieve_batch([query, query])
    assert stub.calls == [2]
    assert [n.node.node_id for n in nodes[0]] == ["yellow", "white", "red"]


def test_search_heads_returns_raw_candidate_lists(kb: KnowledgeBase, query: str) -> None:
    retriever = LVLMAwareRetriever(kb, head_fusion="none")
    emb = retriever.embed_queries([query, query])
    hits = retriever.search_heads(emb, 4, 0, exclude_ids=[set(), {"white"}], exclude_hashes=[set(), set()])
    assert set(hits) == {HEAD_IMAGE, HEAD_TEXT}
    assert hits[HEAD_TEXT] == [[], []]
    assert [h.item.id for h in hits[HEAD_IMAGE][0]] == ["yellow", "white", "red", "cyan"]
    assert [h.item.id for h in hits[HEAD_IMAGE][1]] == ["yellow", "red", "cyan", "blue"]
    assert [h.score for h in hits[HEAD_IMAGE][1]] == pytest.approx([1.0, 1 / S2, 0.5, 0.0], abs=1e-6)


def test_sync_and_async_agree(kb: KnowledgeBase, query: str) -> None:
    retriever = LVLMAwareRetriever(kb, head_fusion="none", question_weight=0.25, exclude_self=True)
    bundle = QueryBundle(query_str="blue", image_path=query)
    sync_nodes = retriever.retrieve(bundle)
    async_nodes = asyncio.run(retriever.aretrieve(bundle))
    assert _ids_scores(async_nodes) == _ids_scores(sync_nodes)
    assert [n.node.metadata for n in async_nodes] == [n.node.metadata for n in sync_nodes]


def test_query_without_image_raises(kb: KnowledgeBase) -> None:
    retriever = LVLMAwareRetriever(kb, head_fusion="none")
    message = r"needs a query image: QueryBundle\(query_str=\.\.\., image_path=\.\.\.\)"
    with pytest.raises(ValueError, match=message):
        retriever.retrieve("which grade?")
    with pytest.raises(ValueError, match=message):
        asyncio.run(retriever.aretrieve(QueryBundle(query_str="which grade?")))


class _Recorder(BaseEventHandler):
    events: list[BaseEvent] = []

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, (RetrievalStartEvent, RetrievalEndEvent)):
            self.events.append(event)


def test_instrumentation_events_fire_once_per_query(kb: KnowledgeBase, query: str) -> None:
    root = instrument.get_dispatcher()
    recorder = _Recorder(events=[])
    root.add_event_handler(recorder)
    try:
        retriever = LVLMAwareRetriever(kb, head_fusion="none")
        retriever.retrieve(QueryBundle(query_str="q", image_path=query))
        assert [type(e) for e in recorder.events] == [RetrievalStartEvent, RetrievalEndEvent]
        recorder.events.clear()
        retriever.retrieve_batch([query, query], ["a", "b"])
        kinds = [type(e) for e in recorder.events]
        assert kinds == [RetrievalStartEvent] * 2 + [RetrievalEndEvent] * 2
        assert [e.str_or_query_bundle.query_str for e in recorder.events[:2]] == ["a", "b"]
        assert recorder.events[0].str_or_query_bundle.image_path == query
        assert [n.node.node_id for n in recorder.events[2].nodes] == ["yellow", "white", "red"]
    finally:
        root.event_handlers.remove(recorder)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k_image": -1}, r"^invalid LVLMAwareRetriever settings: k_image: Input should be greater than or equal to 0 \(got -1\)$"),
        ({"k_text": -2}, r"k_text: Input should be greater than or equal to 0 \(got -2\)$"),
        ({"question_weight": 1.5}, r"question_weight: Input should be less than or equal to 1 \(got 1.5\)$"),
        ({"question_weight": -0.1}, r"question_weight: Input should be greater than or equal to 0"),
        ({"k_image": 0, "k_text": 0}, "^invalid LVLMAwareRetriever settings: k_image and k_text are both 0"),
        ({"head_fusion": "mean"}, r"head_fusion: Input should be 'max', 'rank', 'zscore' or 'none' \(got 'mean'\)$"),
    ],
)
def test_bad_settings_raise_one_line_usage_errors(kb: KnowledgeBase, kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        LVLMAwareRetriever(kb, **{"head_fusion": "none", **kwargs})
    assert "\n" not in str(info.value)


def test_bad_heads_raise(kb: KnowledgeBase) -> None:
    with pytest.raises(ValueError, match=r"image_head produces 5-d query vectors but the knowledge base indexes are 3-d"):
        LVLMAwareRetriever(kb, head_fusion="none", image_head=QueryHead(QueryHeadConfig(dim=3, kind="linear", out_dim=5)))
    with pytest.raises(TypeError, match="text_head must be a QueryHead or None"):
        LVLMAwareRetriever(kb, head_fusion="none", text_head="heads/text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query embeddings are 4-d but the knowledge base is 3-d"):
        LVLMAwareRetriever(kb, head_fusion="none").search_heads(np.ones((1, 4), dtype=np.float32))
    # A 2-d -> 3-d head fits the indexes but not this encoder's 3-d query embeddings.
    narrow = LVLMAwareRetriever(kb, head_fusion="none", image_head=QueryHead(QueryHeadConfig(dim=2, kind="linear", out_dim=3)))
    with pytest.raises(ValueError, match="query embeddings are 3-d but the image head expects 2-d"):
        narrow.search_heads(np.ones((1, 3), dtype=np.float32))


def test_bad_batch_arguments_raise(kb: KnowledgeBase, query: str) -> None:
    retriever = LVLMAwareRetriever(kb, head_fusion="none")
    with pytest.raises(ValueError, match=r"one collection per query .* got the string 'yellow'"):
        retriever.retrieve_batch([query], exclude_ids=["yellow"])
    with pytest.raises(ValueError, match="exclude_ids has 2 entries for 1 queries"):
        retriever.retrieve_batch([query], exclude_ids=[set(), set()])
    with pytest.raises(ValueError, match="got 2 questions for 1 query images"):
        retriever.retrieve_batch([query], ["a", "b"])
    with pytest.raises(UsageError, match="k_image: Input should be greater than or equal to 0"):
        retriever.retrieve_batch([query], k_image=-3)
    with pytest.raises(TypeError, match="unsupported query image of type int"):
        retriever.embed_queries([42])  # type: ignore[list-item]


def test_from_persist_dir_round_trip(kb: KnowledgeBase, query: str, tmp_path: Path) -> None:
    head = QueryHead(QueryHeadConfig(dim=3, kind="mlp", hidden_dim=5, alpha=0.5))
    with torch.no_grad():
        head.fc2.weight.add_(0.5)
    kb.persist(tmp_path / "kb")
    head.save_pretrained(tmp_path / "image_head")
    loaded = LVLMAwareRetriever.from_persist_dir(
        tmp_path / "kb", ColourEmbedding(), image_head_dir=tmp_path / "image_head", k_text=1, head_fusion="none"
    )
    in_memory = LVLMAwareRetriever(kb, head_fusion="none", image_head=head, k_text=1)
    bundle = QueryBundle(query_str="", image_path=query)
    assert _ids_scores(loaded.retrieve(bundle)) == _ids_scores(in_memory.retrieve(bundle))
    assert loaded.k_text == 1 and loaded.image_head is not None and loaded.text_head is None
    with pytest.raises(FileNotFoundError, match="query head directory not found"):
        LVLMAwareRetriever.from_persist_dir(tmp_path / "kb", ColourEmbedding(), text_head_dir=tmp_path / "missing")


def test_class_name_and_namespace_import() -> None:
    from llama_index.retrievers.lvlm_aware import LVLMAwareRetriever as Exported

    assert Exported is LVLMAwareRetriever
    assert LVLMAwareRetriever.class_name() == "LVLMAwareRetriever"


class RecordingChatLLM(CustomLLM):
    """A chat LLM that records the messages it receives and answers a fixed string."""

    received: list[list[ChatMessage]] = []

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=True, model_name="recording-chat")

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        self.received.append(list(messages))
        return ChatResponse(message=ChatMessage(role="assistant", content="yellow"))

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise NotImplementedError("the multimodal synthesizer must call chat()")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError("the multimodal synthesizer must call chat()")


def _image_bytes(block: ImageBlock) -> bytes:
    # The chat prompt template inlines image paths as data URLs.
    if block.path is not None:
        return Path(block.path).read_bytes()
    if block.image is not None:
        return bytes(block.image)
    return base64.b64decode(str(block.url).split(",", 1)[1])


def test_retriever_query_engine_sends_images_and_captions_to_a_chat_llm(kb: KnowledgeBase, query: str) -> None:
    llm = RecordingChatLLM(received=[])
    engine = RetrieverQueryEngine.from_args(LVLMAwareRetriever(kb, head_fusion="none"), llm=llm, multimodal=True)
    response = engine.query(QueryBundle(query_str="What colour is it?", image_path=query))

    assert str(response) == "yellow"
    assert [n.node.node_id for n in response.source_nodes] == ["yellow", "white", "red"]
    assert all(isinstance(n.node, ImageNode) for n in response.source_nodes)
    blocks = [b for messages in llm.received for m in messages for b in m.blocks]
    sent_images = [_image_bytes(b) for b in blocks if isinstance(b, ImageBlock)]
    expected_images = [Path(n.node.image_path).read_bytes() for n in response.source_nodes]
    assert sorted(sent_images) == sorted(expected_images)
    sent_text = "\n".join(b.text for b in blocks if isinstance(b, TextBlock))
    for caption in ("red green", "green blue", "red"):
        assert caption in sent_text
    assert "What colour is it?" in sent_text
    assert "image_score" not in sent_text


def test_merge_breaks_score_ties_by_rank_then_id() -> None:
    from llama_index_lvlm_retriever.kb import SearchHit
    from llama_index_lvlm_retriever.retriever.nodes import merge_hits

    a, b, c, d = (KBItem(id=i, image_path=f"{i}.png", text=i) for i in "abcd")
    merged = merge_hits(
        {
            HEAD_IMAGE: [SearchHit(c, 0.9, 2), SearchHit(b, 0.5, 1), SearchHit(d, 0.4, 3)],
            HEAD_TEXT: [SearchHit(a, 0.9, 0), SearchHit(d, 0.9, 3), SearchHit(b, 0.7, 1)],
        },
        "none",
    )
    # a and c tie at 0.9 with rank 1 -> by id; d ties at 0.9 with text rank 2 -> after them;
    # b's best is its text score 0.7.
    assert _ids_scores(merged) == [("a", 0.9), ("c", 0.9), ("d", 0.9), ("b", 0.7)]
    b_meta = merged[3].node.metadata
    assert (b_meta[META_IMAGE_SCORE], b_meta[META_TEXT_SCORE]) == (0.5, 0.7)
    assert (b_meta[META_IMAGE_RANK], b_meta[META_TEXT_RANK]) == (2, 3)
    assert merged[2].node.metadata[META_HEADS] == [HEAD_IMAGE, HEAD_TEXT]


def test_with_the_tiny_clip_encoder(tmp_path: Path) -> None:
    # The real encoder path: CLIPEmbedding.embed_images/embed_texts, persist and reload.
    from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
    from llama_index_lvlm_retriever.testing import build_tiny_clip

    embed = CLIPEmbedding.from_pretrained(build_tiny_clip(tmp_path / "clip"))
    rng = np.random.default_rng(0)
    items = []
    for i, caption in enumerate(["mild opacity", "clear lungs", "large effusion", "small nodule"]):
        path = tmp_path / f"kb{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        items.append(KBItem(id=f"kb{i}", image_path=str(path), text=caption))
    kb = KnowledgeBase.build(items, embed, show_progress=False)
    query = items[2].image_path

    retriever = LVLMAwareRetriever(kb, head_fusion="none", k_image=1, k_text=1)
    emb = retriever.embed_queries([query])
    np.testing.assert_allclose(emb[0], kb.image_vectors[2], atol=1e-5)
    nodes = retriever.retrieve(QueryBundle(query_str="", image_path=query))
    assert nodes[0].node.node_id == "kb2" and nodes[0].score == pytest.approx(1.0, abs=1e-5)
    excluded = LVLMAwareRetriever(kb, head_fusion="none", k_image=1, k_text=1, exclude_self=True).retrieve_batch([query])[0]
    assert "kb2" not in [n.node.node_id for n in excluded if HEAD_IMAGE in n.node.metadata[META_HEADS]]

    # Question fusion goes through embed_texts: (1 - w) * image + w * text, renormalised.
    fused = LVLMAwareRetriever(kb, head_fusion="none", question_weight=0.5).embed_queries([query], ["clear lungs"])
    expected = 0.5 * kb.image_vectors[2] + 0.5 * kb.text_vectors[1]
    np.testing.assert_allclose(fused[0], expected / np.linalg.norm(expected), atol=1e-5)

    kb.persist(tmp_path / "kb")
    reloaded = LVLMAwareRetriever.from_persist_dir(tmp_path / "kb", embed, k_image=1, k_text=1, head_fusion="none")
    assert _ids_scores(reloaded.retrieve_batch([query])[0]) == _ids_scores(nodes)
