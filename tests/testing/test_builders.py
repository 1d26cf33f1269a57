from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, AutoTokenizer, CLIPTokenizer

from llama_index_lvlm_retriever.testing import (
    build_clip_tokenizer,
    build_tiny_clip,
    build_tiny_siglip,
    save_clip_tokenizer,
    train_byte_level_bpe,
)
from llama_index_lvlm_retriever.testing.tokenizer import train_clip_bpe

# Real cost is ~0.1 s each. The bound only catches a builder that downloads or trains (minutes); it
# is 600x the real cost so that a 2-core machine at load 11 (seen in CI: ~6x slower) never flakes.
SECONDS_LIMIT = 60.0


@pytest.mark.parametrize("builder", [build_tiny_clip, build_tiny_siglip])
def test_tiny_models_build_and_reload_fast(builder: object, tmp_path: Path) -> None:
    start = time.perf_counter()
    folder = builder(tmp_path / "model")  # type: ignore[operator]
    built = time.perf_counter()
    model = AutoModel.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    loaded = time.perf_counter()
    assert built - start < SECONDS_LIMIT
    assert loaded - built < SECONDS_LIMIT
    assert hasattr(model, "get_image_features") and hasattr(processor, "tokenizer")
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= {
        p.name for p in folder.iterdir()
    }


def test_tiny_clip_config_matches_the_arguments(tmp_path: Path) -> None:
    folder = build_tiny_clip(
        tmp_path / "clip",
        image_size=24,
        patch_size=6,
        hidden=16,
        layers=1,
        heads=2,
        projection_dim=8,
    )
    config = AutoModel.from_pretrained(folder).config
    processor = AutoProcessor.from_pretrained(folder)
    assert config.projection_dim == 8
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (24, 6)
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (16, 1)
    assert config.text_config.vocab_size == len(processor.tokenizer)
    pixels = processor.image_processor(images=[Image.new("RGB", (70, 50))], return_tensors="pt")
    assert tuple(pixels["pixel_values"].shape) == (1, 3, 24, 24)


def test_text_config_uses_the_real_eos_id(tmp_path: Path) -> None:
    folder = build_tiny_clip(tmp_path / "clip")
    config = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.bos_token == "<|startoftext|>"
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1)
    # eos_token_id 2 would switch on transformers' legacy argmax pooling.
    assert config["text_config"]["eos_token_id"] == tokenizer.eos_token_id == 1


def test_seed_controls_the_weights(tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    weights = [
        AutoModel.from_pretrained(build_tiny_clip(tmp_path / name, seed=seed)).state_dict()
        for name, seed in [("a", 0), ("b", 0), ("c", 1)]
    ]
    # Building did not consume the caller's random stream.
    assert torch.equal(torch.rand(3), before)
    key = "text_model.embeddings.token_embedding.weight"
    assert torch.equal(weights[0][key], weights[1][key])
    assert not torch.equal(weights[0][key], weights[2][key])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 30, "patch_size": 8}, "patch_size=8 does not divide image_size=30"),
        ({"hidden": 30, "heads": 4}, "heads=4 does not divide hidden=30"),
    ],
)
def test_bad_shapes_are_refused(tmp_path: Path, kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_tiny_clip(tmp_path / "bad", **kwargs)


def test_tokenizer_round_trips_text() -> None:
    tokenizer = build_clip_tokenizer(model_max_length=64)
    for text in [
        "frontal chest radiograph shows a small left pleural effusion",
        "grade 4 melanoma",
    ]:
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_merges_corpus_words() -> None:
    tokenizer = build_clip_tokenizer()
    # "radiograph" is in the training corpus: BPE needs fewer tokens than its 10 characters.
    assert len(tokenizer.tokenize("radiograph")) < len("radiograph")


def test_unseen_bytes_never_become_the_unknown_token() -> None:
    tokenizer = build_clip_tokenizer()
    ids = tokenizer("Überraschung ✓ 肺 zq").input_ids
    # CLIP's unknown token is <|endoftext|>; it may only appear once, at the end.
    assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id


def test_bpe_training_is_deterministic() -> None:
    corpus = ["pleural effusion", "pleural thickening", "effusion resolved"]
    # 0 special tokens + 256 byte symbols + 256 word-final forms = 512, leaving 28 merges.
    first = train_byte_level_bpe(corpus, vocab_size=540, end_of_word_suffix="</w>")
    second = train_byte_level_bpe(corpus, vocab_size=540, end_of_word_suffix="</w>")
    assert first == second
    # Only pairs inside "pleural" and "effusion" occur twice; ties go to the smallest pair:
    # ("a", "l</w>") < ("e", "f") < ("e", "u") < ... (all others occur once).
    assert first.merges[:3] == [("a", "l</w>"), ("e", "f"), ("e", "u")]
    # Pairs from the twice-seen words keep count 2 while all others stay at 1, so the first
    # 6 + 7 = 13 merges make "pleural" (7 symbols) and "effusion" (8 symbols) whole tokens.
    merged_words = {left + right for left, right in first.merges[:13]}
    assert {"pleural</w>", "effusion</w>"} <= merged_words
    assert len(first.vocab) == 540


def test_clip_bpe_copies_are_independent() -> None:
    first = train_clip_bpe()
    first.vocab["mutated"] = -1
    first.merges.clear()
    second = train_clip_bpe()
    assert "mutated" not in second.vocab and len(second.merges) > 0


def test_generic_bpe_has_full_byte_coverage_and_special_ids() -> None:
    bpe = train_byte_level_bpe(
        ["a tiny corpus", "a tiny test"], vocab_size=300, special_tokens=["<s>", "</s>"]
    )
    assert (bpe.vocab["<s>"], bpe.vocab["</s>"]) == (0, 1)
    assert sorted(bpe.vocab.values()) == list(range(len(bpe.vocab)))
    # Byte-level, no suffix: 2 special tokens + the 256 byte symbols + at most one token per merge.
    assert 0 < len(bpe.merges) and len(bpe.vocab) <= 2 + 256 + len(bpe.merges)
    assert len(bpe.vocab) <= 300
    for left, right in bpe.merges:
        assert left + right in bpe.vocab


def test_bpe_refuses_a_vocab_without_room() -> None:
    # 2 special tokens + 256 byte symbols = 258 > 200.
    with pytest.raises(
        ValueError,
        match=r"vocab_size=200 cannot hold the 2 special tokens and 256 byte symbols \(258 tokens\)",
    ):
        train_byte_level_bpe(vocab_size=200, special_tokens=["<s>", "</s>"])


def test_saved_tokenizer_loads_from_vocab_and_merges_alone(tmp_path: Path) -> None:
    folder = save_clip_tokenizer(tmp_path / "tok", model_max_length=20)
    reference = CLIPTokenizer.from_pretrained(folder)
    only_pair = tmp_path / "pair"
    only_pair.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (only_pair / name).write_bytes((folder / name).read_bytes())
    from_pair = CLIPTokenizer.from_pretrained(only_pair)
    text = "no acute cardiopulmonary process"
    assert from_pair(text).input_ids == reference(text).input_ids
    assert reference.model_max_length == 20
    assert (folder / "merges.txt").read_text().startswith("#version: 0.2\n")
