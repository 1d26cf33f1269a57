from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from llama_index_lvlm_retriever.data.images import ImageLoadError
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers.hf_lvlm import READER_CONFIG_NAME, HFLVLMReader
from llama_index_lvlm_retriever.readers.prompt import ReaderPromptConfig
from llama_index_lvlm_retriever.tasks import TaskSpec, get_task
from llama_index_lvlm_retriever.testing import TinyQwen2VLProcessor

# Verbalizers sharing their first token under the tiny tokenizer (" no" / "no"), multi-token.
SHARED_FIRST = TaskSpec(
    name="shared_first",
    labels=("none", "clear", "severe"),
    verbalizers=("no retinopathy", "no acute findings", "severe"),
    question="What is shown? Answer {options}.",
)
MULTI_LABEL = TaskSpec(
    name="three_findings",
    labels=("effusion", "edema", "mass"),
    question="Does this image show {label}? Answer yes or no.",
    multi_label=True,
)

# (folder fixture, how its processor is loaded, what separates "Assistant:"-style prompts from
# the answer: LLaVA and Idefics3 prompts end in "Assistant:", Qwen2-VL's in a newline).
MODELS = {
    "llava": ("llava_dir", None, " "),
    "idefics3": ("idefics3_dir", None, " "),
    "qwen2_vl": ("qwen2_vl_dir", TinyQwen2VLProcessor, ""),
}


def _load(request: pytest.FixtureRequest, name: str) -> tuple[Path, Any, str]:
    fixture, processor_cls, prefix = MODELS[name]
    folder = request.getfixturevalue(fixture)
    processor = processor_cls.from_pretrained(folder) if processor_cls else AutoProcessor.from_pretrained(folder)
    return folder, processor, prefix


def _reader(folder: Path, processor: Any, task: TaskSpec, **kwargs: Any) -> HFLVLMReader:
    return HFLVLMReader.from_pretrained(folder, task, processor=processor, **kwargs)


def _reference(
    model: Any,
    processor: Any,
    case: Case,
    candidate: KBItem | None,
    question: str,
    answers: tuple[str, ...],
    prefix: str,
) -> np.ndarray:
    """Unbatched teacher forcing, written out by hand: one forward per (pair, answer)."""
    content: list[dict[str, str]] = []
    images = []
    if candidate is not None:
        if candidate.image_path:
            content.append({"type": "image"})
            images.append(Image.open(candidate.image_path).convert("RGB"))
        content.append({"type": "text", "text": f"background: {candidate.text}"})
    content.append({"type": "image"})
    images.append(Image.open(case.image_path).convert("RGB"))
    content.append({"type": "text", "text": question})
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    prompt = processor(text=[text], images=[images], return_tensors="pt")
    n = prompt["input_ids"].shape[1]
    scores = []
    for answer in answers:
        ids = processor.tokenizer(prefix + answer, add_special_tokens=False)["input_ids"]
        inputs = dict(prompt)
        inputs["input_ids"] = torch.cat([prompt["input_ids"], torch.tensor([ids])], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if "mm_token_type_ids" in prompt:  # answer tokens are text
            inputs["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], torch.zeros(1, len(ids), dtype=torch.long)], dim=1)
        with torch.no_grad():
            log_probs = torch.log_softmax(model(**inputs).logits[0].double(), dim=-1)  # (T, V)
        # Answer token t sits at n + t and is predicted from position n + t - 1.
        scores.append(sum(float(log_probs[n - 1 + t, token]) for t, token in enumerate(ids)))
    return np.array(scores)


@pytest.fixture(scope="module")
def text_only_item() -> KBItem:
    return KBItem(id="kb-text", image_path="", text="severe nonproliferative retinopathy")


def _grid(cases: list[Case], kb_items: list[KBItem], text_only: KBItem) -> tuple[list[Case], list[list[KBItem | None]]]:
    # Two cases, k = 3: image+text pairs, a closed-book slot and a text-only candidate, so one
    # batch mixes rows with 0, 1 and 2 images.
    return cases[:2], [[kb_items[0], kb_items[1], None], [kb_items[2], text_only, kb_items[0]]]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("task", [get_task("retinamnist"), SHARED_FIRST], ids=["single_token", "multi_token"])
def test_batched_scores_equal_unbatched_reference(
    request: pytest.FixtureRequest, name: str, task: TaskSpec, cases: list[Case], kb_items: list[KBItem], text_only_item: KBItem
) -> None:
    folder, processor, prefix = _load(request, name)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    the_cases, candidates = _grid(cases, kb_items, text_only_item)
    # batch_size 4 does not divide the 6 pairs (x3 answers on the full path): chunks split pairs.
    scores = _reader(folder, processor, task, batch_size=4).score(the_cases, candidates)
    assert scores.log_probs.shape == (2, 3, task.n_labels)
    for i, case in enumerate(the_cases):
        for j, candidate in enumerate(candidates[i]):
            raw = _reference(model, processor, case, candidate, task.render_question(), task.answer_texts, prefix)
            np.testing.assert_allclose(scores.raw_log_likelihoods[i, j], raw, atol=1e-4)
            expected = raw - np.logaddexp.reduce(raw)  # log-softmax over the label set
            np.testing.assert_allclose(scores.log_probs[i, j], expected, atol=1e-4)
    np.testing.assert_allclose(np.exp(scores.log_probs).sum(-1), 1.0, atol=1e-9)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_multi_label_scores_are_per_label_yes_probabilities(
    request: pytest.FixtureRequest, name: str, cases: list[Case], kb_items: list[KBItem]
) -> None:
    folder, processor, prefix = _load(request, name)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    candidates = [[kb_items[1], None]]
    scores = _reader(folder, processor, MULTI_LABEL, batch_size=5).score(cases[:1], candidates)
    assert scores.multi_label and scores.log_probs.shape == (1, 2, 3)
    for j, candidate in enumerate(candidates[0]):
        for label in range(3):
            question = MULTI_LABEL.render_question(label_index=label)
            yes, no = _reference(model, processor, cases[0], candidate, question, ("yes", "no"), prefix)
            assert scores.raw_log_likelihoods[0, j, label] == pytest.approx(yes, abs=1e-4)
            # log P(yes) normalised over {yes, no}: yes - log(e^yes + e^no).
            assert scores.log_probs[0, j, label] == pytest.approx(yes - np.logaddexp(yes, no), abs=1e-4)


@pytest.mark.parametrize("name", ["llava", "idefics3"])
def test_fast_path_equals_teacher_forcing_for_single_token_verbalizers(
    request: pytest.FixtureRequest, name: str, cases: list[Case], kb_items: list[KBItem]
) -> None:
    folder, processor, _ = _load(request, name)
    task = get_task("retinamnist")
    fast = _reader(folder, processor, task, scoring="first_token")
    full = _reader(folder, processor, task, scoring="full")
    assert fast.uses_fast_path and not full.uses_fast_path
    assert all(len(ids) == 1 for ids in fast.answer_token_ids)
    candidates = [kb_items[:3], kb_items[1:4]]
    a, b = fast.score(cases[:2], candidates), full.score(cases[:2], candidates)
    np.testing.assert_allclose(a.raw_log_likelihoods, b.raw_log_likelihoods, atol=1e-4)
    np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-4)


def test_shared_first_token_forces_teacher_forcing(llava_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    auto = HFLVLMReader.from_pretrained(llava_dir, SHARED_FIRST)
    assert not auto.uses_fast_path
    tokenizer = auto.processor.tokenizer
    assert [tokenizer.convert_ids_to_tokens(ids) for ids in auto.answer_token_ids] == [
        ["Ġno", "Ġretinopathy"],
        ["Ġno", "Ġacute", "Ġfindings"],
        ["Ġsevere"],
    ]
    with pytest.raises(ValueError, match="'no retinopathy' and 'no acute findings' .* both start with token 'Ġno'; use scoring='full'"):
        HFLVLMReader.from_pretrained(llava_dir, SHARED_FIRST, scoring="first_token")
    prefix_task = TaskSpec(name="prefix", labels=("a", "b"), verbalizers=("severe", "severe retinopathy"), question="?")
    with caplog.at_level(logging.WARNING):
        HFLVLMReader.from_pretrained(llava_dir, prefix_task)
    assert "'severe' is a token prefix of 'severe retinopathy'" in caplog.text


def test_answer_prefix_follows_the_generation_prompt(llava_dir: Path, qwen2_vl_dir: Path) -> None:
    task = get_task("breastmnist")
    llava = HFLVLMReader.from_pretrained(llava_dir, task)  # prompt ends with "Assistant:"
    qwen = HFLVLMReader.from_pretrained(qwen2_vl_dir, task, processor=TinyQwen2VLProcessor.from_pretrained(qwen2_vl_dir))
    assert llava.processor.tokenizer.convert_ids_to_tokens(llava.answer_token_ids[0]) == ["Ġyes"]
    assert qwen.processor.tokenizer.convert_ids_to_tokens(qwen.answer_token_ids[0]) == ["yes"]
    forced = HFLVLMReader.from_pretrained(llava_dir, task, answer_prefix="")
    assert forced.processor.tokenizer.convert_ids_to_tokens(forced.answer_token_ids[0]) == ["yes"]


def test_scores_depend_on_the_candidate_and_not_on_its_position(
    idefics3_dir: Path, cases: list[Case], kb_items: list[KBItem]
) -> None:
    reader = HFLVLMReader.from_pretrained(idefics3_dir, get_task("retinamnist"), batch_size=3)
    forward = reader.score(cases[:2], [kb_items, kb_items])
    # Reversed candidate order, and a batch size that splits the rows differently.
    backward = HFLVLMReader.from_pretrained(idefics3_dir, get_task("retinamnist"), batch_size=5).score(
        cases[:2], [kb_items[::-1], kb_items[::-1]]
    )
    np.testing.assert_allclose(backward.log_probs[:, ::-1], forward.log_probs, atol=1e-5)
    assert backward.candidate_ids[0] == ("kb-3", "kb-2", "kb-1", "kb-0")
    # Different candidates give different label distributions (the reader reads the pair) ...
    spread = forward.log_probs[0].max(axis=0) - forward.log_probs[0].min(axis=0)
    assert spread.max() > 0.05
    # ... through its image alone and through its caption alone.
    same_text = KBItem(id="swap-image", image_path=kb_items[1].image_path, text=kb_items[0].text)
    same_image = KBItem(id="swap-text", image_path=kb_items[0].image_path, text=kb_items[1].text)
    swapped = reader.score(cases[:1], [[kb_items[0], same_text, same_image]]).log_probs[0]
    assert np.abs(swapped[1] - swapped[0]).max() > 1e-3
    assert np.abs(swapped[2] - swapped[0]).max() > 1e-3


def test_closed_book_equals_a_none_slot_and_the_reference(
    llava_dir: Path, cases: list[Case], kb_items: list[KBItem]
) -> None:
    task = get_task("retinamnist")
    reader = HFLVLMReader.from_pretrained(llava_dir, task)
    closed = reader.score_closed_book(cases)
    assert closed.log_probs.shape == (3, 1, 5) and closed.candidate_ids == ((None,), (None,), (None,))
    mixed = reader.score(cases, [[kb_items[0], None]] * 3)
    np.testing.assert_allclose(mixed.log_probs[:, 1], closed.log_probs[:, 0], atol=1e-5)
    model = AutoModelForImageTextToText.from_pretrained(llava_dir).eval()
    raw = _reference(model, reader.processor, cases[2], None, task.render_question(), task.answer_texts, " ")
    np.testing.assert_allclose(closed.raw_log_likelihoods[2, 0], raw, atol=1e-4)


def test_prompt_layout_options_change_what_the_model_reads(
    llava_dir: Path, cases: list[Case], kb_items: list[KBItem]
) -> None:
    task = get_task("retinamnist")
    candidates = [[kb_items[0]]]
    full = HFLVLMReader.from_pretrained(llava_dir, task).score(cases[:1], candidates).log_probs
    no_image = HFLVLMReader.from_pretrained(
        llava_dir, task, prompt=ReaderPromptConfig(include_retrieved_image=False)
    ).score(cases[:1], candidates).log_probs
    text_only = KBItem(id="t", image_path="", text=kb_items[0].text)
    as_text_only = HFLVLMReader.from_pretrained(llava_dir, task).score(cases[:1], [[text_only]]).log_probs
    # Dropping the retrieved image is the same prompt as a text-only candidate.
    np.testing.assert_allclose(no_image, as_text_only, atol=1e-5)
    assert np.abs(full - no_image).max() > 1e-3


def test_predict_returns_the_argmax_label(llava_dir: Path, cases: list[Case], kb_items: list[KBItem]) -> None:
    reader = HFLVLMReader.from_pretrained(llava_dir, get_task("retinamnist"))
    scores = reader.score(cases, [kb_items[:2]] * 3)
    expected = [[str(int(np.argmax(scores.log_probs[i, j]))) for j in range(2)] for i in range(3)]
    assert reader.predict(cases, [kb_items[:2]] * 3) == expected


def test_missing_candidate_image_is_named_before_any_model_work(
    llava_dir: Path, cases: list[Case], kb_items: list[KBItem], tmp_path: Path
) -> None:
    reader = HFLVLMReader.from_pretrained(llava_dir, get_task("retinamnist"))
    missing = KBItem(id="kb-gone", image_path=str(tmp_path / "gone.png"), text="x")
    with pytest.raises(ImageLoadError, match=r"image of candidate 'kb-gone' \(slot 1 of case 'case-0'\): image file not found"):
        reader.score(cases[:1], [[kb_items[0], missing]])
    broken_path = tmp_path / "broken.png"
    broken_path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    broken = KBItem(id="kb-broken", image_path=str(broken_path), text="x")
    with pytest.raises(ImageLoadError, match=r"image of candidate 'kb-broken' .*cannot read image"):
        reader.score(cases[:1], [[broken, kb_items[0]]])
    no_query = Case(id="case-x", image_path=str(tmp_path / "nope.png"))
    with pytest.raises(ImageLoadError, match="query image of case 'case-x': image file not found"):
        reader.score_closed_book([no_query])


def test_mismatched_candidate_lists_are_rejected(llava_dir: Path, cases: list[Case], kb_items: list[KBItem]) -> None:
    reader = HFLVLMReader.from_pretrained(llava_dir, get_task("retinamnist"))
    with pytest.raises(ValueError, match="case 'case-1' has 1 candidates but case 'case-0' has 2"):
        reader.score(cases[:2], [kb_items[:2], kb_items[:1]])


def test_model_directory_without_a_processor(llava_dir: Path, tmp_path: Path) -> None:
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(llava_dir / name, weights_only / name)
    with pytest.raises(ValueError, match="no processor could be loaded from .*weights_only.*processor.save_pretrained"):
        HFLVLMReader.from_pretrained(weights_only, get_task("retinamnist"))
    AutoTokenizer.from_pretrained(llava_dir).save_pretrained(weights_only)  # a tokenizer alone
    with pytest.raises(ValueError, match="(?s)no processor could be loaded .*Can't load image processor"):
        HFLVLMReader.from_pretrained(weights_only, get_task("retinamnist"))


def test_processor_that_auto_classes_cannot_build_must_be_passed(qwen2_vl_dir: Path) -> None:
    # AutoProcessor falls back to the bare tokenizer for the tiny Qwen2-VL's custom processor.
    with pytest.raises(ValueError, match="has no image processor .*AutoProcessor returned a .*pass processor="):
        HFLVLMReader.from_pretrained(qwen2_vl_dir, get_task("retinamnist"))


def test_processor_without_chat_template_needs_one(llava_dir: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(llava_dir)
    processor = AutoProcessor.from_pretrained(llava_dir)
    template = processor.chat_template
    processor.chat_template = None
    with pytest.raises(ValueError, match="has no chat template; pass chat_template="):
        HFLVLMReader(model, processor, get_task("retinamnist"))
    reader = HFLVLMReader(model, processor, get_task("retinamnist"), chat_template=template)
    assert reader.uses_fast_path


def test_constructor_validation(llava_dir: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(llava_dir)
    processor = AutoProcessor.from_pretrained(llava_dir)
    task = get_task("retinamnist")
    with pytest.raises(ValueError, match=r"pass either config= or keyword settings, not both .*\['batch_size'\]"):
        HFLVLMReader(model, processor, task, HFLVLMReader.from_pretrained(llava_dir, task).config, batch_size=2)
    with pytest.raises(ValueError, match="greater than 0"):
        HFLVLMReader(model, processor, task, batch_size=0)
    with pytest.raises(ValueError, match="is not a multimodal processor"):
        HFLVLMReader(model, processor.tokenizer, task)
    with pytest.raises(ValueError, match="no task given and .* has no reader_config.json"):
        HFLVLMReader.from_pretrained(llava_dir)


def test_save_and_load_round_trip(llava_dir: Path, cases: list[Case], kb_items: list[KBItem], tmp_path: Path) -> None:
    reader = HFLVLMReader.from_pretrained(
        llava_dir,
        SHARED_FIRST,
        batch_size=3,
        scoring="full",
        prompt=ReaderPromptConfig(background_template="context: {text}", max_image_side=24),
    )
    folder = reader.save_pretrained(tmp_path / "saved")
    assert (folder / READER_CONFIG_NAME).is_file()
    loaded = HFLVLMReader.from_pretrained(folder)
    assert loaded.task == SHARED_FIRST and loaded.config == reader.config
    candidates = [kb_items[:2]]
    np.testing.assert_allclose(
        loaded.score(cases[:1], candidates).log_probs, reader.score(cases[:1], candidates).log_probs, atol=1e-6
    )
    assert loaded.fingerprint() == reader.fingerprint()
    # Keyword settings override the saved ones.
    assert HFLVLMReader.from_pretrained(folder, batch_size=7).config.batch_size == 7


def test_fingerprint_tells_weights_and_tasks_apart(llava_dir: Path, tmp_path: Path) -> None:
    from llama_index_lvlm_retriever.testing import build_tiny_llava

    task = get_task("retinamnist")
    base = HFLVLMReader.from_pretrained(llava_dir, task).fingerprint()
    assert base == HFLVLMReader.from_pretrained(llava_dir, task).fingerprint()
    assert base != HFLVLMReader.from_pretrained(llava_dir, get_task("breastmnist")).fingerprint()
    other = build_tiny_llava(tmp_path / "seed1", seed=1)
    assert base != HFLVLMReader.from_pretrained(other, task).fingerprint()


@pytest.mark.parametrize(
    ("builder_fixture", "model_class", "processor_loader"),
    [
        ("llava_dir", "LlavaForConditionalGeneration", AutoProcessor.from_pretrained),
        ("idefics3_dir", "Idefics3ForConditionalGeneration", AutoProcessor.from_pretrained),
        ("qwen2_vl_dir", "Qwen2VLForConditionalGeneration", TinyQwen2VLProcessor.from_pretrained),
    ],
)
def test_tiny_lvlms_load_back_through_the_auto_classes(
    request: pytest.FixtureRequest, builder_fixture: str, model_class: str, processor_loader: Callable[[Path], Any]
) -> None:
    folder = request.getfixturevalue(builder_fixture)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = processor_loader(folder)
    assert type(model).__name__ == model_class
    assert sum(p.numel() for p in model.parameters()) < 300_000
    assert processor.image_processor is not None and processor.chat_template
    # Every built-in verbalizer is one token after the template's answer prefix.
    prefix = "" if builder_fixture == "qwen2_vl_dir" else " "
    for answer in (*get_task("dermamnist").answer_texts, "yes", "no", "3"):
        if " " not in answer:
            assert len(processor.tokenizer(prefix + answer, add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.parametrize("name", list(MODELS))
def test_rows_without_images_batch_with_rows_with_images(
    request: pytest.FixtureRequest, name: str, cases: list[Case], kb_items: list[KBItem], text_only_item: KBItem
) -> None:
    # Without the query image, rows hold 1 (image candidate) or 0 images (text-only, closed-book);
    # batch_size=1 puts the image-free rows in batches with no image at all.
    folder, processor, _ = _load(request, name)
    config = ReaderPromptConfig(include_query_image=False)
    candidates = [[kb_items[0], text_only_item, None]]
    batched = _reader(folder, processor, get_task("retinamnist"), prompt=config).score(cases[:1], candidates)
    single = _reader(folder, processor, get_task("retinamnist"), prompt=config, batch_size=1).score(cases[:1], candidates)
    np.testing.assert_allclose(batched.log_probs, single.log_probs, atol=1e-4)


def test_no_cases_gives_empty_scores(llava_dir: Path) -> None:
    scores = HFLVLMReader.from_pretrained(llava_dir, get_task("retinamnist")).score([], [])
    assert scores.log_probs.shape == (0, 0, 5) and scores.predictions() == []


def test_dtype_option_loads_lower_precision_weights(llava_dir: Path, cases: list[Case], kb_items: list[KBItem]) -> None:
    task = get_task("retinamnist")
    half = HFLVLMReader.from_pretrained(llava_dir, task, dtype="bfloat16", device="cpu")
    assert half.model.dtype == torch.bfloat16 and half.device == torch.device("cpu")
    scores = half.score(cases[:1], [kb_items[:2]])
    assert scores.log_probs.dtype == np.float64  # log-softmax runs in float32, returned as float64
    np.testing.assert_allclose(np.exp(scores.log_probs).sum(-1), 1.0, atol=1e-6)
    full = HFLVLMReader.from_pretrained(llava_dir, task).score(cases[:1], [kb_items[:2]])
    # bf16 keeps ~3 significant digits: the distributions agree to a few hundredths.
    np.testing.assert_allclose(np.exp(scores.log_probs), np.exp(full.log_probs), atol=0.05)
