"""Stage-1 reader SFT on a tiny saved LLaVA, a tiny CLIP knowledge base and generated images.

The KB has six noise images with captions. Case ``kb-0`` *is* the KB's pair ``kb-0`` (same id, same
file) and case ``copy-1`` has ``kb-1``'s pixels under another id: both must be excluded from their
own candidates (by id and by content hash).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llama_index_lvlm_retriever.data.images import image_content_hash
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.tasks import TaskSpec
from llama_index_lvlm_retriever.testing import build_tiny_clip, build_tiny_llava
from llama_index_lvlm_retriever.training.reader_sft import (
    IGNORE_INDEX,
    SFT_CONFIG_NAME,
    ReaderSFTConfig,
    ReaderSFTEngine,
)
from llama_index_lvlm_retriever.training.sft_data import (
    SFTSample,
    build_sft_samples,
    export_sft_jsonl,
)

TASK = TaskSpec(
    name="toy-lesion",
    labels=("benign", "malignant"),
    verbalizers=("benign", "malignant lesion"),
    question="Is the lesion benign or malignant? Answer {options}.",
)
CAPTIONS = [
    "benign cyst with smooth margins",
    "irregular spiculated mass",
    "round benign nodule",
    "malignant tumour with invasion",
    "normal tissue",
    "lobulated mass with calcifications",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _noise_png(path: Path, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[KBItem], list[Case]]:
    folder = tmp_path_factory.mktemp("sft_images")
    items = [
        KBItem(id=f"kb-{j}", image_path=_noise_png(folder / f"kb{j}.png", 100 + j), text=text, label=TASK.labels[j % 2])
        for j, text in enumerate(CAPTIONS)
    ]
    copy = folder / "copy1.png"
    copy.write_bytes(Path(items[1].image_path).read_bytes())
    cases = [
        Case(id="kb-0", image_path=items[0].image_path, labels=("benign",)),
        Case(id="copy-1", image_path=str(copy), labels=("malignant",)),
        Case(id="q-2", image_path=_noise_png(folder / "q2.png", 7), labels=("benign",)),
    ]
    return items, cases


@pytest.fixture(scope="module")
def retriever(data: tuple[list[KBItem], list[Case]], tmp_path_factory: pytest.TempPathFactory) -> LVLMAwareRetriever:
    embed = CLIPEmbedding.from_pretrained(build_tiny_clip(tmp_path_factory.mktemp("clip") / "model"))
    kb = KnowledgeBase.build(data[0], embed, show_progress=False)
    return LVLMAwareRetriever(kb, k_image=2, k_text=2)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "model", extra_corpus=list(TASK.answer_texts))


@pytest.fixture(scope="module")
def samples(data: tuple[list[KBItem], list[Case]], retriever: LVLMAwareRetriever) -> list[SFTSample]:
    return build_sft_samples(data[1], retriever, TASK, per_head=2)


def _reader(folder: Path) -> HFLVLMReader:
    return HFLVLMReader.from_pretrained(folder, TASK, scoring="full", batch_size=8)


def test_samples_take_top_two_per_head_excluding_the_query(
    samples: list[SFTSample], data: tuple[list[KBItem], list[Case]], retriever: LVLMAwareRetriever
) -> None:
    _, cases = data
    # 3 cases x 2 heads x 2 pairs, one sample per pair (single-label task).
    assert len(samples) == 12
    for case in cases:
        own = [s for s in samples if s.case.id == case.id]
        assert [(s.head, s.rank) for s in own] == [("image", 0), ("image", 1), ("text", 0), ("text", 1)]
        query_hash = image_content_hash(case.image_path)
        for sample in own:
            assert sample.candidate.id != case.id
            assert image_content_hash(sample.candidate.image_path) != query_hash
            gold = TASK.label_index(case.label)
            assert (sample.answer_index, sample.target) == (gold, TASK.answer_texts[gold])
    # The hits are the retriever's own top-2 per head once the query's pair is removed.
    kb = retriever.knowledge_base
    emb = retriever.embed_queries([cases[1].image_path])
    hits = retriever.search_heads(emb, k_image=2, k_text=2, exclude_ids=[{"copy-1"}], exclude_hashes=[{kb.content_hash_of(cases[1].image_path)}])
    expected = [h.item.id for head in ("image", "text") for h in hits[head][0]]
    assert [s.candidate.id for s in samples if s.case.id == "copy-1"] == expected
    assert "kb-1" not in expected


def test_gold_label_outside_the_label_set_is_rejected(
    data: tuple[list[KBItem], list[Case]], retriever: LVLMAwareRetriever
) -> None:
    bad = Case(id="bad", image_path=data[1][2].image_path, labels=("cyst",))
    with pytest.raises(ValueError, match=r"case 'bad' has gold label 'cyst'.*toy-lesion"):
        build_sft_samples([bad], retriever, TASK)
    with pytest.raises(ValueError, match="per_head must be >= 1"):
        build_sft_samples(data[1], retriever, TASK, per_head=0)


def test_multi_label_pairs_give_one_yes_no_sample_per_label(
    data: tuple[list[KBItem], list[Case]], retriever: LVLMAwareRetriever
) -> None:
    task = TaskSpec(name="findings", labels=("a", "b", "c"), question="Is {label} present?", multi_label=True)
    case = Case(id="m", image_path=data[1][2].image_path, labels=("a", "c"))
    built = build_sft_samples([case], retriever, task, per_head=1)
    assert [(s.head, s.label_index, s.target, s.answer_index) for s in built] == [
        ("image", 0, "yes", 0), ("image", 1, "no", 1), ("image", 2, "yes", 0),
        ("text", 0, "yes", 0), ("text", 1, "no", 1), ("text", 2, "yes", 0),
    ]


def test_export_writes_chat_records_in_the_reader_layout(samples: list[SFTSample], tmp_path: Path) -> None:
    path = export_sft_jsonl(samples, tmp_path / "sub" / "sft.jsonl", TASK)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == len(samples)
    first, sample = records[0], samples[0]
    assert first["images"] == [sample.candidate.image_path, sample.case.image_path]
    user, answer = first["messages"]
    assert user["role"] == "user" and answer["role"] == "assistant"
    assert user["content"] == [
        {"type": "image"},
        {"type": "text", "text": f"background: {sample.candidate.text}"},
        {"type": "image"},
        {"type": "text", "text": "Is the lesion benign or malignant? Answer benign, malignant lesion."},
    ]
    assert answer["content"] == [{"type": "text", "text": sample.target}]
    assert not list(tmp_path.joinpath("sub").glob(".*tmp"))


def test_labels_mask_everything_but_the_answer(samples: list[SFTSample], llava_dir: Path) -> None:
    reader = _reader(llava_dir)
    engine = ReaderSFTEngine(reader, samples, ReaderSFTConfig(mode="full", show_progress=False))
    sample = next(s for s in samples if s.answer_index == 1)  # "malignant lesion": several tokens
    batch = engine.build_batch([sample])
    # The prompt alone, rendered the way scoring renders it.
    prompt = reader._prompts.build(sample.case, sample.candidate)
    alone = reader.processor(text=[reader._chat_text(prompt)], images=[prompt.images], return_tensors="pt")
    n = alone["input_ids"].shape[1]
    answer = reader.answer_token_ids[1]
    assert len(answer) >= 2
    labels = batch["labels"][0]
    assert labels.shape[0] == n + len(answer)
    assert torch.equal(batch["input_ids"][0, :n], alone["input_ids"][0])
    assert labels[:n].tolist() == [IGNORE_INDEX] * n
    assert labels[n:].tolist() == answer
    assert batch["input_ids"][0, n:].tolist() == answer


def test_training_loss_is_the_readers_scoring_likelihood(samples: list[SFTSample], llava_dir: Path) -> None:
    reader = _reader(llava_dir)
    engine = ReaderSFTEngine(reader, samples[:4], ReaderSFTConfig(mode="full", show_progress=False))
    scores = reader.score([s.case for s in samples[:4]], [[s.candidate] for s in samples[:4]])
    gold = np.array([scores.raw_log_likelihoods[i, 0, s.answer_index] for i, s in enumerate(samples[:4])])
    np.testing.assert_allclose(engine.sample_losses(), -gold, rtol=1e-4, atol=1e-4)


def test_full_finetune_lowers_the_loss_and_reloads_identically(
    samples: list[SFTSample], llava_dir: Path, tmp_path: Path
) -> None:
    reader = _reader(llava_dir)
    config = ReaderSFTConfig(mode="full", epochs=3, learning_rate=3e-3, batch_size=4, warmup_ratio=0.0, show_progress=False)
    engine = ReaderSFTEngine(reader, samples, config)
    before = engine.sample_losses()
    history = engine.finetune()
    after = engine.sample_losses()
    assert [h["epoch"] for h in history] == [0.0, 1.0, 2.0]
    assert all(h["steps"] == 3.0 for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert after.mean() < 0.5 * before.mean()
    folder = engine.save(tmp_path / "reader")
    saved = json.loads((folder / SFT_CONFIG_NAME).read_text())
    assert saved["config"]["mode"] == "full" and len(saved["history"]) == 3
    reloaded = HFLVLMReader.from_pretrained(folder)
    assert reloaded.task == TASK
    cases, cands = [s.case for s in samples[:3]], [[s.candidate] for s in samples[:3]]
    np.testing.assert_allclose(reloaded.score(cases, cands).log_probs, reader.score(cases, cands).log_probs, atol=1e-6)
    assert reloaded.fingerprint() == reader.fingerprint()


def test_lora_trains_only_adapters_and_saves_them_alone_or_merged(
    samples: list[SFTSample], llava_dir: Path, tmp_path: Path
) -> None:
    reader = _reader(llava_dir)
    original = {k: v.clone() for k, v in reader.model.state_dict().items()}
    config = ReaderSFTConfig(mode="lora", lora_r=2, lora_alpha=4, epochs=1, learning_rate=1e-2, batch_size=6,
                             warmup_ratio=0.0, show_progress=False)
    engine = ReaderSFTEngine(reader, samples[:6], config)
    engine.finetune()
    assert engine.trainable_parameter_names
    assert all("lora_" in name for name in engine.trainable_parameter_names)
    merged = reader.model.state_dict()
    assert set(merged) == set(original)  # merged in memory: scoring needs no peft
    changed = [k for k in merged if not torch.equal(merged[k], original[k])]
    assert changed
    assert all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    cases, cands = [s.case for s in samples[:2]], [[s.candidate] for s in samples[:2]]
    expected = reader.score(cases, cands).log_probs

    # Default: the adapters alone (how LoRA is shared), loaded on top of the base model they name.
    folder = engine.save(tmp_path / "lora_reader")
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "reader_config.json"} <= names
    assert "model.safetensors" not in names
    adapter_bytes = (folder / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < 0.2 * (llava_dir / "model.safetensors").stat().st_size
    assert json.loads((folder / SFT_CONFIG_NAME).read_text())["saved"] == "lora adapters"
    reloaded = HFLVLMReader.from_pretrained(folder)
    np.testing.assert_allclose(reloaded.score(cases, cands).log_probs, expected, atol=1e-5)

    # merge_lora: one self-contained folder.
    engine.config = config.model_copy(update={"merge_lora": True})
    merged_folder = engine.save(tmp_path / "merged_reader")
    assert (merged_folder / "model.safetensors").is_file() and not (merged_folder / "adapter_config.json").exists()
    reloaded = HFLVLMReader.from_pretrained(merged_folder)
    np.testing.assert_allclose(reloaded.score(cases, cands).log_probs, expected, atol=1e-6)


def test_bad_engine_inputs(samples: list[SFTSample], llava_dir: Path) -> None:
    reader = _reader(llava_dir)
    with pytest.raises(ValueError, match="no SFT samples"):
        ReaderSFTEngine(reader, [])
    wrong = SFTSample(samples[0].case, samples[0].candidate, "image", 0, answer_index=5, target="x")
    with pytest.raises(ValueError, match="targets answer 5 but the reader of task 'toy-lesion' has 2 answers"):
        ReaderSFTEngine(reader, [wrong])
    engine = ReaderSFTEngine(reader, samples[:1], ReaderSFTConfig(mode="lora", target_modules=("nope_proj",), show_progress=False))
    with pytest.raises(ValueError, match=r"LoRA target_modules \['nope_proj'\] match no module"):
        engine.finetune()


def test_collated_batch_equals_the_processors_own_padded_batch(samples: list[SFTSample], llava_dir: Path) -> None:
    reader = _reader(llava_dir)
    engine = ReaderSFTEngine(reader, samples, ReaderSFTConfig(mode="full", show_progress=False))
    batch_samples = [next(s for s in samples if s.answer_index == 0), next(s for s in samples if s.answer_index == 1)]
    batch = engine.build_batch(batch_samples)
    prompts = [reader._prompts.build(s.case, s.candidate) for s in batch_samples]
    direct = reader.processor(text=[reader._chat_text(p) for p in prompts], images=[p.images for p in prompts],
                              padding=True, padding_side="right", return_tensors="pt")
    assert torch.equal(batch["pixel_values"], direct["pixel_values"])
    for row, sample in enumerate(batch_samples):
        n = int(direct["attention_mask"][row].sum())
        answer = reader.answer_token_ids[sample.answer_index]
        assert torch.equal(batch["input_ids"][row, :n], direct["input_ids"][row, :n])
        assert batch["input_ids"][row, n : n + len(answer)].tolist() == answer
        assert batch["labels"][row].ne(IGNORE_INDEX).sum() == len(answer)
        assert batch["attention_mask"][row].sum() == n + len(answer)
        tail = batch["input_ids"][row, n + len(answer):]
        assert (tail == reader._pad_id).all() and (batch["labels"][row, n + len(answer):] == IGNORE_INDEX).all()
    # Batched answer likelihoods are the unbatched ones (padding changes nothing).
    model = reader.model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    per_row = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), batch["labels"][:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    ).sum(dim=1)
    engine_one = ReaderSFTEngine(reader, batch_samples, ReaderSFTConfig(mode="full", show_progress=False))
    np.testing.assert_allclose(per_row.numpy(), engine_one.sample_losses(), rtol=1e-4, atol=1e-4)


def _trained_state(llava_dir: Path, samples: list[SFTSample], **settings: object) -> dict[str, torch.Tensor]:
    reader = _reader(llava_dir)
    config = ReaderSFTConfig(mode="full", epochs=1, learning_rate=3e-3, warmup_ratio=0.0, show_progress=False,
                             **settings)
    ReaderSFTEngine(reader, samples[:8], config).finetune()
    return {k: v.clone() for k, v in reader.model.state_dict().items()}


def test_gradient_accumulation_matches_the_large_batch(samples: list[SFTSample], llava_dir: Path) -> None:
    large = _trained_state(llava_dir, samples, batch_size=4)
    accumulated = _trained_state(llava_dir, samples, batch_size=2, gradient_accumulation_steps=2)
    single = _trained_state(llava_dir, samples, batch_size=2)  # twice the steps: must differ
    gap = max(float((large[k] - accumulated[k]).abs().max()) for k in large)
    assert gap < 1e-4
    assert max(float((large[k] - single[k]).abs().max()) for k in large) > 100 * max(gap, 1e-7)


def test_validation_loss_is_recorded_and_reaches_the_model_card(
    samples: list[SFTSample], llava_dir: Path, tmp_path: Path
) -> None:
    reader = _reader(llava_dir)
    config = ReaderSFTConfig(mode="full", epochs=2, learning_rate=3e-3, batch_size=4, warmup_ratio=0.0,
                             show_progress=False)
    engine = ReaderSFTEngine(reader, samples[:8], config, validation_samples=samples[8:])
    before = ReaderSFTEngine(reader, samples[8:], config).sample_losses()
    history = engine.finetune()
    assert [h["epoch"] for h in history] == [0.0, 1.0]
    assert all(h["steps"] == 2.0 for h in history)
    # eval_loss is the token-mean answer cross-entropy of the validation samples.
    after = ReaderSFTEngine(reader, samples[8:], config).sample_losses()
    n_tokens = sum(len(reader.answer_token_ids[s.answer_index]) for s in samples[8:])
    assert history[-1]["eval_loss"] == pytest.approx(after.sum() / n_tokens, rel=1e-3)
    assert history[-1]["eval_loss"] != pytest.approx(before.sum() / n_tokens, rel=1e-3)
    folder = engine.save(tmp_path / "reader")
    card = (folder / "README.md").read_text()
    assert "final_validation_loss" in card and f"{len(samples) - 8} validation samples" in card


def test_a_killed_run_resumes_from_its_last_epoch_checkpoint(
    samples: list[SFTSample], llava_dir: Path, tmp_path: Path
) -> None:
    config = ReaderSFTConfig(mode="full", epochs=3, learning_rate=3e-3, batch_size=4, keep_checkpoints=3,
                             show_progress=False)
    straight = _reader(llava_dir)
    ReaderSFTEngine(straight, samples[:8], config).finetune(checkpoint_dir=tmp_path / "run")
    checkpoints = sorted((tmp_path / "run").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    # As if killed during epoch 2: only the first epoch's checkpoint is on disk.
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copytree(checkpoints[0], interrupted / checkpoints[0].name)
    resumed = _reader(llava_dir)
    history = ReaderSFTEngine(resumed, samples[:8], config).finetune(checkpoint_dir=interrupted, resume=True)
    assert [h["epoch"] for h in history] == [0.0, 1.0, 2.0]
    want, got = straight.model.state_dict(), resumed.model.state_dict()
    assert max(float((want[k] - got[k]).abs().max()) for k in want) < 1e-5
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        ReaderSFTEngine(resumed, samples[:8], config).finetune(resume=True)


def test_bf16_mixed_precision_trains(samples: list[SFTSample], llava_dir: Path) -> None:
    reader = _reader(llava_dir)
    config = ReaderSFTConfig(mode="full", epochs=3, learning_rate=3e-3, batch_size=4, warmup_ratio=0.0, bf16=True,
                             show_progress=False)
    engine = ReaderSFTEngine(reader, samples[:8], config)
    before = engine.sample_losses()
    history = engine.finetune()
    assert reader.model.dtype == torch.float32  # mixed precision: the weights stay float32
    assert history[-1]["loss"] < history[0]["loss"] and engine.sample_losses().mean() < before.mean()
