"""Reader work done once (issue 19 item 7): same likelihoods as the per-row path, less work."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers._hf_reuse import (
    ChatTemplateCache,
    vectorised_mm_token_type_ids,
)
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.readers.prompt import PromptPart, ReaderPrompt
from llama_index_lvlm_retriever.tasks import TaskSpec, get_task
from llama_index_lvlm_retriever.testing import TinyQwen2VLProcessor

PROCESSORS = {"llava": ("llava_dir", AutoProcessor), "qwen2_vl": ("qwen2_vl_dir", TinyQwen2VLProcessor),
              "idefics3": ("idefics3_dir", AutoProcessor)}
SHARED_FIRST = TaskSpec(
    name="shared_first", labels=("none", "clear", "severe"),
    verbalizers=("no retinopathy", "no acute findings", "severe"), question="What is shown? Answer {options}.",
)


class _CountingImageProcessor:
    """Wraps an image processor and counts how often each image object is processed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: Counter[int] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, images: Any, **kwargs: Any) -> Any:
        flat = [img for entry in images for img in (entry if isinstance(entry, (list, tuple)) else [entry])]
        self.seen.update(id(img) for img in flat)
        return self.inner(images, **kwargs)


def _grid(cases: list[Case], kb_items: list[KBItem]) -> tuple[list[Case], list[list[KBItem | None]]]:
    # 3 cases x k=4: each query image in 4 rows, each KB image in up to 3 cases, a closed-book slot.
    rows = [[kb_items[0], kb_items[1], kb_items[2], None], [kb_items[1], kb_items[2], kb_items[3], kb_items[0]],
            [kb_items[2], kb_items[0], None, kb_items[3]]]
    return cases[:3], rows


@pytest.mark.parametrize("name", list(PROCESSORS))
@pytest.mark.parametrize("task", [get_task("retinamnist"), SHARED_FIRST, get_task("chestmnist")], ids=["fast", "full", "multi"])
def test_reuse_gives_the_likelihoods_of_the_per_row_path(
    request: pytest.FixtureRequest, name: str, task: TaskSpec, cases: list[Case], kb_items: list[KBItem]
) -> None:
    fixture, processor_cls = PROCESSORS[name]
    folder: Path = request.getfixturevalue(fixture)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = processor_cls.from_pretrained(folder)
    the_cases, rows = _grid(cases, kb_items)
    plain = HFLVLMReader(model, processor, task, batch_size=5, reuse_prompt_work=False).score(the_cases, rows)
    reused = HFLVLMReader(model, processor, task, batch_size=5).score(the_cases, rows)
    np.testing.assert_allclose(reused.raw_log_likelihoods, plain.raw_log_likelihoods, rtol=0, atol=1e-5)
    np.testing.assert_allclose(reused.log_probs, plain.log_probs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_each_distinct_image_is_processed_once(
    request: pytest.FixtureRequest, name: str, cases: list[Case], kb_items: list[KBItem]
) -> None:
    fixture, processor_cls = PROCESSORS[name]
    folder: Path = request.getfixturevalue(fixture)
    processor = processor_cls.from_pretrained(folder)
    counting = _CountingImageProcessor(processor.image_processor)
    processor.image_processor = counting
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    reader = HFLVLMReader(model, processor, get_task("retinamnist"), batch_size=12)
    the_cases, rows = _grid(cases, kb_items)
    reader.score(the_cases, rows)  # one batch of all 12 rows, 22 image slots, 7 distinct images
    # Each distinct image once, plus once per slot for the one-time check against the plain batch.
    assert sum(counting.seen.values()) == 7 + 22 and len(counting.seen) == 7
    counting.seen.clear()
    reader.score(the_cases, rows)
    assert not counting.seen  # the next call reuses them (cached across calls, 2 * batch_size + 8 images)
    assert processor.image_processor is counting  # the caller's processor is left as it was


def test_the_template_cache_fills_texts_in_verbatim_or_renders_every_prompt() -> None:
    def prompt(*texts: str) -> ReaderPrompt:
        return ReaderPrompt(parts=(PromptPart("image", "query_image"), *(PromptPart("text", f"t{i}", text=t) for i, t in enumerate(texts))))

    renders: list[ReaderPrompt] = []

    def verbatim(p: ReaderPrompt) -> str:
        renders.append(p)
        return "<s>" + "|".join("<img>" if part.kind == "image" else part.text for part in p.parts) + "</s>"

    cache = ChatTemplateCache(verbatim)
    assert cache(prompt("a", "b")) == "<s><img>|a|b</s>" and len(renders) == 2  # skeleton + the check
    assert cache(prompt("background: c {text}", "b\\1")) == "<s><img>|background: c {text}|b\\1</s>"
    assert len(renders) == 2  # filled in, not rendered
    # A template that changes its texts (here: strips and upper-cases) is rendered every time.
    shouting = ChatTemplateCache(lambda p: "|".join(part.text.strip().upper() for part in p.parts))
    assert shouting(prompt(" x ")) == "|X" and shouting(prompt("y")) == "|Y"


def test_vectorised_token_types_equal_the_processors_loop(qwen2_vl_dir: Path) -> None:
    processor = TinyQwen2VLProcessor.from_pretrained(qwen2_vl_dir)
    create = vectorised_mm_token_type_ids(processor)
    assert create is not None
    image, video = processor.image_token_id, processor.video_token_id
    ids = torch.tensor([[20, image, image, 21, 0], [image, 23, video, 0, 0]])
    assert create(ids) == processor.create_mm_token_type_ids(ids) == [[0, 1, 1, 0, 0], [1, 0, 2, 0, 0]]
    ragged = [[20, image], [image]]
    assert create(ragged) == processor.create_mm_token_type_ids(ragged)
