from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from llama_index_lvlm_retriever.data.images import ImageLoadError
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers.prompt import PromptBuilder, ReaderPromptConfig
from llama_index_lvlm_retriever.tasks import get_task


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Case, KBItem]:
    Image.new("RGB", (100, 50), "red").save(tmp_path / "query.png")
    Image.new("RGB", (30, 60), "blue").save(tmp_path / "kb.png")
    return (
        Case(id="c1", image_path=str(tmp_path / "query.png")),
        KBItem(id="k1", image_path=str(tmp_path / "kb.png"), text="small left pleural effusion"),
    )


def _layout(builder: PromptBuilder, case: Case, item: KBItem | None, **kwargs: int) -> list[tuple[str, str]]:
    return [(part.role, part.text) for part in builder.build(case, item, **kwargs).parts]


def test_paper_layout_retrieved_image_background_query_image_question(pair: tuple[Case, KBItem]) -> None:
    case, item = pair
    prompt = PromptBuilder(get_task("breastmnist")).build(case, item)
    question = "Is the lesion in this breast ultrasound image malignant? Answer yes or no."
    assert [(p.role, p.text) for p in prompt.parts] == [
        ("retrieved_image", ""),
        ("background", "background: small left pleural effusion"),
        ("query_image", ""),
        ("question", question),
    ]
    # Images come in display order (retrieved first): the order pixel values must follow.
    assert [im.getpixel((0, 0)) for im in prompt.images] == [(0, 0, 255), (255, 0, 0)]
    assert prompt.to_chat_messages() == [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "background: small left pleural effusion"},
                {"type": "image"},
                {"type": "text", "text": question},
            ],
        }
    ]


def test_closed_book_text_only_and_dropped_parts(pair: tuple[Case, KBItem]) -> None:
    case, item = pair
    task = get_task("breastmnist")
    builder = PromptBuilder(task)
    assert [role for role, _ in _layout(builder, case, None)] == ["query_image", "question"]
    text_only = KBItem(id="t", image_path="", text="benign cyst")
    assert [role for role, _ in _layout(builder, case, text_only)] == ["background", "query_image", "question"]
    config = ReaderPromptConfig(include_retrieved_image=False, include_query_image=False, system_prompt="Be brief.")
    prompt = PromptBuilder(task, config).build(case, item)
    assert [p.role for p in prompt.parts] == ["background", "question"] and prompt.images == []
    assert prompt.to_chat_messages()[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    no_text = PromptBuilder(task, ReaderPromptConfig(include_retrieved_text=False)).build(case, item)
    assert [p.role for p in no_text.parts] == ["retrieved_image", "query_image", "question"]


def test_multi_label_prompt_asks_about_one_label(pair: tuple[Case, KBItem]) -> None:
    case, item = pair
    builder = PromptBuilder(get_task("chestmnist"))
    assert builder.questions_per_pair == 14
    assert builder.build(case, item, label_index=2).parts[-1].text == (
        "Does this chest X-ray show effusion? Answer yes or no."
    )


def test_images_are_downscaled_to_the_longest_side(pair: tuple[Case, KBItem]) -> None:
    case, item = pair
    prompt = PromptBuilder(get_task("breastmnist"), ReaderPromptConfig(max_image_side=40)).build(case, item)
    # 30x60 -> longest side 60 -> 40: 20x40; 100x50 -> 40x20. Never upscaled:
    assert [im.size for im in prompt.images] == [(20, 40), (40, 20)]
    kept = PromptBuilder(get_task("breastmnist"), ReaderPromptConfig(max_image_side=None)).build(case, item)
    assert [im.size for im in kept.images] == [(30, 60), (100, 50)]


def test_custom_background_template_and_caption_cut(pair: tuple[Case, KBItem]) -> None:
    case, item = pair
    config = ReaderPromptConfig(background_template="Similar case report: {text}", max_background_chars=12)
    prompt = PromptBuilder(get_task("breastmnist"), config).build(case, item)
    # "small left pleural effusion"[:12] = "small left p"; its last space (index 10) is past
    # 0.8 * 12 = 9.6, so the cut goes back to the word boundary.
    assert prompt.parts[1].text == "Similar case report: small left ..."
    # [:8] = "small le"; last space at 5 < 6.4 would lose too much: hard cut.
    config = ReaderPromptConfig(max_background_chars=8)
    assert PromptBuilder(get_task("breastmnist"), config).build(case, item).parts[1].text == "background: small le ..."
    with pytest.raises(ValueError, match=r"background_template 'no slot' has no \{text\} placeholder"):
        ReaderPromptConfig(background_template="no slot")
    with pytest.raises(ValueError, match="greater than 0"):
        ReaderPromptConfig(max_image_side=0)


def test_missing_and_broken_images_name_their_owner(pair: tuple[Case, KBItem], tmp_path: Path) -> None:
    case, item = pair
    builder = PromptBuilder(get_task("breastmnist"))
    gone = KBItem(id="k-gone", image_path=str(tmp_path / "gone.png"), text="x")
    with pytest.raises(ImageLoadError, match=r"image of candidate 'k-gone' \(slot 2 of case 'c1'\): image file not found"):
        builder.check_images([case], [[item, item, gone]])
    # Not shown, not checked: the layout drops the retrieved image.
    PromptBuilder(get_task("breastmnist"), ReaderPromptConfig(include_retrieved_image=False)).check_images([case], [[gone]])
    (tmp_path / "bad.png").write_bytes(b"garbage")
    bad = KBItem(id="k-bad", image_path=str(tmp_path / "bad.png"), text="x")
    with pytest.raises(ImageLoadError, match="image of candidate 'k-bad' .*cannot read image"):
        builder.build(case, bad)
    with pytest.raises(ImageLoadError, match="query image of case 'c0' has an empty image_path"):
        builder.check_images([Case(id="c0", image_path="")], [[None]])


def test_decoded_images_are_cached(pair: tuple[Case, KBItem]) -> None:
    case, item = pair
    builder = PromptBuilder(get_task("breastmnist"))
    first, second = builder.build(case, item), builder.build(case, None)
    assert first.images[1] is second.images[0]  # the query image was decoded once
    builder.clear_cache()
    assert builder.build(case, None).images[0] is not first.images[1]
