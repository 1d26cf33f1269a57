"""The offline miniature's own models: a small CLIP retriever and a small LLaVA reader.

No pretrained weights can be downloaded offline, so the demo trains stand-ins with the package's
own code: :class:`~llama_index_lvlm_retriever.training.clip_pretrain.CLIPPretrainEngine` for the
retriever's encoder and :class:`~llama_index_lvlm_retriever.training.reader_sft.ReaderSFTEngine`
(stage 1) for the reader. Both are saved and loaded with ``from_pretrained`` like real checkpoints.

The reader is a standard ``LlavaForConditionalGeneration`` whose vision tower starts from the
trained CLIP's image tower: a feasibility probe found that a randomly initialised tiny LLaVA learns
to copy the retrieved caption's grade and ignores the images, while one that starts from the
retriever's tower reads them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, CLIPModel

from llama_index_lvlm_retriever.data.elpv import ELPV_LABEL_NAMES
from llama_index_lvlm_retriever.data.fashion_mnist import FASHION_MNIST_LABEL_NAMES
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.demo.config import MiniCLIPSettings, MiniReaderSettings
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.tasks import TaskSpec
from llama_index_lvlm_retriever.testing import build_tiny_clip, build_tiny_llava
from llama_index_lvlm_retriever.training.clip_pretrain import CLIPPretrainConfig, CLIPPretrainEngine
from llama_index_lvlm_retriever.training.reader_sft import ReaderSFTConfig, ReaderSFTEngine
from llama_index_lvlm_retriever.training.sft_data import SFTSample, build_sft_samples

logger = logging.getLogger(__name__)

__all__ = [
    "ELPV_TASK",
    "FASHION_MNIST_TASK",
    "copy_clip_vision_tower",
    "group_by_label",
    "same_and_other_label",
    "sampled_neighbour_samples",
    "train_small_clip",
    "train_small_reader",
]

ELPV_TASK = TaskSpec(
    name="elpv_defect_grade",
    labels=ELPV_LABEL_NAMES,
    # Single words whose first tokens differ under the small tokenizer (checked when the reader is
    # built), so the reader scores them from next-token logits.
    verbalizers=("intact", "slight", "likely", "defective"),
    # No instruction text: the small reader learns the words from SFT, and a short prompt is fast.
    question="Defect grade of this solar cell? Answer {options}.",
    description="ELPV electroluminescence solar-cell images, expert defect probability in 4 grades.",
)
"""The demo's diagnosis task: the defect grade of a solar cell (four expert levels)."""

FASHION_MNIST_TASK = TaskSpec(
    name="fashion_mnist_class",
    labels=FASHION_MNIST_LABEL_NAMES,
    # One word per class whose first token is its own under the small tokenizer (checked at build).
    verbalizers=("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"),
    question="Which garment is this? Answer {options}.",
    description="Fashion-MNIST: 28x28 greyscale clothing images, 10 classes.",
)
"""The scale variant's task: the class of a clothing image (ten classes)."""


def train_small_clip(
    items: Sequence[KBItem],
    out_dir: Path,
    *,
    image_size: int,
    settings: MiniCLIPSettings,
    seed: int,
    show_progress: bool = True,
    stage_a_items: Sequence[KBItem] = (),
    device: str = "cpu",
) -> Path:
    """Build a small random ``CLIPModel``, pre-train it contrastively, save it.

    Args:
        items: Stage-B pairs (the miniature: nuisance captions, the label named half the time).
        out_dir: Where the model goes.
        image_size: Image side.
        settings: Architecture and epochs.
        seed: Seed of the weights and the batches.
        show_progress: tqdm bars.
        stage_a_items: Stage-A pairs trained first for ``settings.stage_a_epochs`` (label-only
            captions), so the vectors learn the label before stage B makes the nuisance dominate.
        device: Torch device of the training (e.g. ``"cuda"``).

    Returns:
        ``out_dir``, loadable with ``CLIPEmbedding.from_pretrained``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        init = build_tiny_clip(
            Path(tmp) / "init",
            image_size=image_size,
            patch_size=settings.patch_size,
            hidden=settings.hidden,
            layers=settings.layers,
            heads=settings.heads,
            projection_dim=settings.projection_dim,
            max_text_length=64,  # captions are ~30 tokens under the small tokenizer
            seed=seed,
        )

        def engine_for(start: Path | str, pairs: Sequence[KBItem], epochs: int) -> CLIPPretrainEngine:
            config = CLIPPretrainConfig(epochs=epochs, batch_size=settings.batch_size, lr=settings.lr, seed=seed,
                                        show_progress=show_progress, device=device)
            return CLIPPretrainEngine(start, pairs, config)

        if stage_a_items and settings.stage_a_epochs:
            stage_a = engine_for(init, stage_a_items, settings.stage_a_epochs)
            first = stage_a.finetune()
            logger.info("small CLIP stage A (label captions): loss %.3f -> %.3f", first[0]["loss"], first[-1]["loss"])
            init = stage_a.save(Path(tmp) / "stage_a")
        engine = engine_for(init, items, settings.epochs)
        history = engine.finetune()
        logger.info("small CLIP: contrastive loss %.3f -> %.3f", history[0]["loss"], history[-1]["loss"])
        return engine.save(out_dir)


def copy_clip_vision_tower(clip: CLIPModel, tower: torch.nn.Module) -> int:
    """Copy a ``CLIPModel``'s image tower into a ``CLIPVisionModel`` (e.g. LLaVA's) by parameter name.

    Returns:
        The number of tensors copied (all of the tower's).

    Raises:
        ValueError: The towers differ in structure or shape.
    """
    source = {
        key.removeprefix("vision_model."): value
        for key, value in clip.state_dict().items()
        if key.startswith("vision_model.")
    }
    target = tower.state_dict()
    missing = [key for key in target if key.removeprefix("vision_model.") not in source]
    if missing:
        raise ValueError(f"the CLIP image tower has no tensor for {missing[:3]}; build the reader's tower from its config")
    state = {}
    for key, value in target.items():
        weight = source[key.removeprefix("vision_model.")]
        if weight.shape != value.shape:
            raise ValueError(f"shape mismatch for {key}: CLIP {tuple(weight.shape)} vs tower {tuple(value.shape)}")
        state[key] = weight.to(value.dtype)
    tower.load_state_dict(state, strict=True)
    return len(state)


def group_by_label(items: Sequence[KBItem]) -> dict[str, list[KBItem]]:
    """Labelled KB items grouped by label (unlabelled ones left out)."""
    groups: dict[str, list[KBItem]] = {}
    for item in items:
        if item.label is not None:
            groups.setdefault(str(item.label), []).append(item)
    return groups


def same_and_other_label(
    groups: dict[str, list[KBItem]], gold: str, *, exclude_id: str | None = None
) -> tuple[list[KBItem], list[KBItem]]:
    """The KB items with label ``gold`` (without ``exclude_id``) and those with any other label."""
    same = [item for item in groups.get(gold, []) if item.id != exclude_id]
    other = [item for label, group in groups.items() if label != gold for item in group]
    return same, other


def sampled_neighbour_samples(
    cases: Sequence[Case], items: Sequence[KBItem], task: TaskSpec, *, same: int, other: int, seed: int
) -> list[SFTSample]:
    """SFT samples pairing each case with random same-label and other-label KB pairs (head ``"sampled"``)."""
    rng = np.random.default_rng([seed, 3])
    groups = group_by_label(items)
    labels = list(task.labels)
    out: list[SFTSample] = []
    for case in cases:
        gold = case.labels[0]
        pool_same, pool_other = same_and_other_label(groups, gold, exclude_id=case.id)
        picks = [("same", pool_same, same), ("other", pool_other, other)]
        for _, pool, n in picks:
            for rank, index in enumerate(rng.choice(len(pool), size=min(n, len(pool)), replace=False) if pool else []):
                answer = labels.index(gold)
                out.append(SFTSample(case, pool[int(index)], "sampled", rank, answer, task.answer_texts[answer]))
    return out


def _reader_corpus(items: Sequence[KBItem], task: TaskSpec) -> list[str]:
    # The tokenizer learns the captions, the question and the verbalizers, so prompts stay short.
    texts = sorted({item.text for item in items})
    words = [*task.verbalizers, *(f" {v}" for v in task.verbalizers)]
    return [*texts, task.question, task.instruction or "", *words]


def train_small_reader(
    clip_dir: Path,
    retriever: LVLMAwareRetriever,
    train_cases: Sequence,
    out_dir: Path,
    *,
    task: TaskSpec,
    settings: MiniReaderSettings,
    seed: int,
    reader_batch_size: int,
    show_progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Build a small LLaVA reader (tower from the CLIP), fine-tune it with stage-1 SFT, save it.

    Each SFT query is paired with its top ``per_head`` neighbours of each head of the frozen
    ``retriever`` (the paper's retrieval-augmented SFT) plus ``same_label`` random same-label and
    ``other_label`` random other-label KB pairs, so the reader learns when a neighbour's caption
    helps and when to trust the query image instead (a reader trained on retrieved neighbours only
    sees mostly same-label ones and learns to copy them).

    Returns:
        ``out_dir``, loadable with ``HFLVLMReader.from_pretrained``.
    """
    clip = CLIPModel.from_pretrained(str(clip_dir))
    with tempfile.TemporaryDirectory() as tmp:
        init = build_tiny_llava(
            Path(tmp) / "init",
            seed=seed,
            hidden=settings.hidden,
            layers=settings.layers,
            heads=settings.heads,
            initializer_range=0.02,
            extra_corpus=_reader_corpus(retriever.knowledge_base.items, task),
            vision_config=clip.config.vision_config.to_dict(),
        )
        model = AutoModelForImageTextToText.from_pretrained(str(init))
        processor = AutoProcessor.from_pretrained(str(init))
    if settings.init_from_retriever:
        copy_clip_vision_tower(clip, model.model.vision_tower)
    model.to(device)
    reader = HFLVLMReader(model, processor, task, batch_size=reader_batch_size, model_name="small-llava")
    if not reader.uses_fast_path:
        raise RuntimeError(f"the verbalizers {task.verbalizers} share first tokens under the small tokenizer")
    heads = tuple(h for h, k in (("image", retriever.k_image), ("text", retriever.k_text)) if k > 0)
    samples = (
        build_sft_samples(train_cases, retriever, task, per_head=settings.per_head, heads=heads)
        if settings.per_head
        else []
    )
    samples += sampled_neighbour_samples(
        train_cases, retriever.knowledge_base.items, task, same=settings.same_label, other=settings.other_label, seed=seed
    )
    engine = ReaderSFTEngine(
        reader,
        samples,
        ReaderSFTConfig(
            mode="full", epochs=settings.epochs, learning_rate=settings.lr, batch_size=settings.batch_size,
            warmup_ratio=0.05, seed=seed, show_progress=show_progress,
        ),
    )
    history = engine.finetune()
    logger.info("small reader SFT on %d samples: loss %.3f -> %.3f", len(samples), history[0]["loss"], history[-1]["loss"])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    return engine.save(out_dir)
