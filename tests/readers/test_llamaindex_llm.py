from __future__ import annotations

import asyncio
import io
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    ImageBlock,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.llms import CustomLLM
from PIL import Image
from pydantic import Field

from llama_index_lvlm_retriever.data.images import ImageLoadError
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers.llamaindex_llm import LlamaIndexLLMReader, match_answer
from llama_index_lvlm_retriever.readers.prompt import ReaderPromptConfig
from llama_index_lvlm_retriever.tasks import get_task


class ScriptedLLM(CustomLLM):
    """Answers with ``replies[key]`` for the first key found in the user turn's text."""

    replies: dict[str, str] = Field(default_factory=dict)
    default: str = "I am not sure."
    delay: float = 0.0
    rendezvous: Any = None  # a threading.Barrier every chat waits at: it trips only if chats overlap
    seen: list[list[ChatMessage]] = Field(default_factory=list)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted", is_chat_model=True)

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise NotImplementedError("the reader must use chat")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError("the reader must use chat")

    def _reply(self, messages: list[ChatMessage]) -> ChatResponse:
        self.seen.append(messages)
        text = " ".join(b.text for b in messages[-1].blocks if isinstance(b, TextBlock))
        reply = next((r for key, r in self.replies.items() if key in text), self.default)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=reply))

    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        time.sleep(self.delay)
        if self.rendezvous is not None:
            self.rendezvous.wait()
        return self._reply(list(messages))

    async def achat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        await asyncio.sleep(self.delay)
        return self._reply(list(messages))


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name, colour in [("query", "red"), ("a", "green"), ("b", "blue")]:
        paths[name] = str(tmp_path / f"{name}.png")
        Image.new("RGB", (20, 10), colour).save(paths[name])
    return paths


def test_one_chat_per_candidate_with_images_as_blocks(images: dict[str, str]) -> None:
    llm = ScriptedLLM(replies={"alpha": "Yes.", "beta": "no"})
    reader = LlamaIndexLLMReader(llm, get_task("closed_vqa"))
    case = Case(id="c", image_path=images["query"], question="Is there an effusion?")
    items = [KBItem(id="ka", image_path=images["a"], text="alpha"), KBItem(id="kb", image_path=images["b"], text="beta")]
    scores = reader.score([case], [items])
    assert len(llm.seen) == 2
    blocks = llm.seen[0][-1].blocks
    assert [type(b).__name__ for b in blocks] == ["ImageBlock", "TextBlock", "ImageBlock", "TextBlock"]
    assert blocks[1].text == "background: alpha"
    assert blocks[3].text == "Answer the question about the image with yes or no.\nIs there an effusion?"
    # Retrieved image first (green), then the query (red), as PNG.
    colours = [Image.open(io.BytesIO(b.resolve_image().read())).getpixel((0, 0)) for b in blocks if isinstance(b, ImageBlock)]
    assert colours == [(0, 128, 0), (255, 0, 0)]
    # One-hot: "Yes." -> label "yes" (index 0), "no" -> "no" (index 1).
    np.testing.assert_array_equal(np.exp(scores.log_probs), [[[1.0, 0.0], [0.0, 1.0]]])
    assert scores.parsed.tolist() == [[True, True]] and scores.raw_log_likelihoods is None
    assert reader.predict([case], [items]) == [["yes", "no"]]


def test_unparseable_answers_are_flagged_and_uniform(images: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    llm = ScriptedLLM(replies={"alpha": "Grade 3."})  # everything else: "I am not sure."
    reader = LlamaIndexLLMReader(llm, get_task("retinamnist"))
    case = Case(id="c", image_path=images["query"])
    scores = reader.score([case], [[KBItem(id="ka", image_path=images["a"], text="alpha"), None]])
    assert scores.parsed.tolist() == [[True, False]]
    assert scores.log_probs[0, 0].tolist() == [-math.inf, -math.inf, -math.inf, 0.0, -math.inf]
    assert scores.log_probs[0, 1].tolist() == pytest.approx([math.log(1 / 5)] * 5)
    assert scores.predictions() == [["3", ""]]
    assert "1 of 2 answers could not be mapped to a label of task 'retinamnist'" in caplog.text
    assert "I am not sure." in caplog.text


def test_multi_label_asks_one_yes_no_chat_per_label(images: dict[str, str]) -> None:
    llm = ScriptedLLM(replies={"cardiomegaly": "Yes, clearly.", "effusion": "maybe"}, default="No.")
    reader = LlamaIndexLLMReader(llm, get_task("chestmnist"))
    case = Case(id="c", image_path=images["query"])
    scores = reader.score([case], [[None]])
    assert len(llm.seen) == 14
    p_yes = np.exp(scores.log_probs[0, 0])
    assert p_yes[1] == 1.0 and p_yes[2] == 0.5 and p_yes[0] == 0.0  # yes / unparseable / no
    assert scores.parsed.tolist() == [[False]]  # one label's answer was unparseable


def test_workers_keep_the_order_and_async_matches(images: dict[str, str]) -> None:
    replies = {"k0": "0", "k1": "1", "k2": "2", "k3": "3", "k4": "4"}
    case = Case(id="c", image_path=images["query"])
    items = [KBItem(id=f"k{i}", image_path="", text=f"k{i}") for i in range(5)]
    # Chats meet in pairs at a barrier: run one after another, the first would wait out the timeout
    # and break it (BrokenBarrierError). Nothing here depends on how fast a loaded machine runs.
    llm = ScriptedLLM(replies=replies, rendezvous=threading.Barrier(2, timeout=60))
    threaded = LlamaIndexLLMReader(llm, get_task("retinamnist"), num_workers=5)
    scores = threaded.score([case, case], [items, items[::-1]])
    assert scores.predictions() == [["0", "1", "2", "3", "4"], ["4", "3", "2", "1", "0"]]
    assert not llm.rendezvous.broken  # 10 chats, met in pairs: they ran concurrently
    llm.rendezvous = None  # achat sleeps instead: a thread barrier would block the event loop
    async_scores = asyncio.run(threaded.ascore([case, case], [items, items[::-1]]))
    np.testing.assert_array_equal(async_scores.log_probs, scores.log_probs)


def test_system_prompt_and_text_only_layout(images: dict[str, str]) -> None:
    llm = ScriptedLLM(default="yes")
    config = ReaderPromptConfig(include_query_image=False, system_prompt="You are a radiologist.")
    reader = LlamaIndexLLMReader(llm, get_task("breastmnist"), prompt=config, image_format="JPEG")
    reader.score([Case(id="c", image_path="")], [[KBItem(id="ka", image_path=images["a"], text="alpha")]])
    system, user = llm.seen[0]
    assert system.role == MessageRole.SYSTEM and system.content == "You are a radiologist."
    image_block = user.blocks[0]
    assert isinstance(image_block, ImageBlock) and image_block.image_mimetype == "image/jpeg"
    assert [type(b).__name__ for b in user.blocks] == ["ImageBlock", "TextBlock", "TextBlock"]


def test_missing_candidate_image_fails_before_any_chat(images: dict[str, str], tmp_path: Path) -> None:
    llm = ScriptedLLM()
    reader = LlamaIndexLLMReader(llm, get_task("breastmnist"))
    gone = KBItem(id="k-gone", image_path=str(tmp_path / "gone.png"), text="x")
    with pytest.raises(ImageLoadError, match="image of candidate 'k-gone'"):
        reader.score([Case(id="c", image_path=images["query"])], [[gone]])
    assert llm.seen == []


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        LlamaIndexLLMReader(ScriptedLLM(), get_task("breastmnist"), num_workers=0)
    with pytest.raises(ValueError, match="pass either config= or keyword settings"):
        reader = LlamaIndexLLMReader(ScriptedLLM(), get_task("breastmnist"))
        LlamaIndexLLMReader(ScriptedLLM(), get_task("breastmnist"), reader.config, num_workers=2)


YES_NO = [["yes"], ["no"]]
DERMA = [[v, v] for v in get_task("dermamnist").answer_texts]


@pytest.mark.parametrize(
    ("answer", "forms", "expected"),
    [
        ("Yes", YES_NO, 0),
        ("  no.  ", YES_NO, 1),
        ("No, there is no effusion.", YES_NO, 1),  # starts with "no"
        ("The answer is yes", YES_NO, 0),  # found once, not negated
        ("It is unknown", YES_NO, None),  # "no" inside a word does not count
        ("yes or no", YES_NO, 0),  # starts with yes
        ("I would say yes and no", YES_NO, None),  # both found: ambiguous
        ("", YES_NO, None),
        ("<think>maybe no</think> Yes.", YES_NO, 0),  # reasoning is dropped
        ("Melanocytic nevus", DERMA, 5),
        ("melanoma", DERMA, 4),
        ("This is most likely a melanoma.", DERMA, 4),
        ("Not melanoma; a melanocytic nevus.", DERMA, 5),  # the negated mention is ignored
        ("basal cell carcinoma or melanoma", DERMA, 1),  # leading answer wins
        ("either dermatofibroma or melanoma", DERMA, None),
    ],
)
def test_match_answer(answer: str, forms: list[list[str]], expected: int | None) -> None:
    assert match_answer(answer, forms) == expected


def test_label_names_count_as_answers_but_are_not_scanned(images: dict[str, str]) -> None:
    # BreastMNIST's labels are malignant/benign, verbalized yes/no: "Malignant." is an answer,
    # a mention of a label name inside a sentence is not (only verbalizers are scanned).
    llm = ScriptedLLM(replies={"alpha": "Malignant.", "beta": "The lesion is not malignant"})
    reader = LlamaIndexLLMReader(llm, get_task("breastmnist"))
    items = [KBItem(id="ka", image_path="", text="alpha"), KBItem(id="kb", image_path="", text="beta")]
    scores = reader.score([Case(id="c", image_path=images["query"])], [items])
    assert scores.predictions() == [["malignant", ""]]
