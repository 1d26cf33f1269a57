"""The demo's data: the offline miniature (ELPV, default, or Fashion-MNIST) or a MedMNIST task in real mode.

The miniature renders every image with a random tint and contrast (:mod:`.nuisance`), gives it one of
six disjoint roles (:mod:`.roles`), and writes the captions each role needs: label-only and
nuisance captions for the encoder's two pre-training stages, nuisance + label captions for the
knowledge base.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from llama_index_lvlm_retriever.data.elpv import ELPV_LICENSE, load_elpv_arrays
from llama_index_lvlm_retriever.data.fashion_mnist import load_fashion_mnist
from llama_index_lvlm_retriever.data.loaders import load_medmnist_npz
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.demo.config import MINIATURE_DATASETS, DemoConfig
from llama_index_lvlm_retriever.demo.miniature import ELPV_TASK, FASHION_MNIST_TASK
from llama_index_lvlm_retriever.demo.nuisance import describe, draw_nuisance, render
from llama_index_lvlm_retriever.demo.roles import (
    ROLES,
    assign_roles,
    check_roles_disjoint,
    role_table,
)
from llama_index_lvlm_retriever.storage.files import atomic_write_bytes
from llama_index_lvlm_retriever.tasks import TaskSpec, get_task

logger = logging.getLogger(__name__)

__all__ = ["DemoData", "kb_items_as_cases", "load_demo_data", "medmnist_npz_path"]

# MedMNIST's own download class per flag (medmnist.INFO[flag]["python_class"]).
_MEDMNIST_CLASSES = {"retinamnist": "RetinaMNIST", "dermamnist": "DermaMNIST", "breastmnist": "BreastMNIST"}


@dataclass(frozen=True)
class DemoData:
    """Knowledge base, labelled cases per role and the task, with where they come from.

    Args:
        kb: The knowledge base's pairs.
        train: Retriever-training queries (stage-2 feedback).
        val: Validation cases (all selection).
        test: Test cases.
        task: The diagnosis task.
        description: One line on the data.
        licence: The data's licence.
        reader_sft: The reader's SFT queries (empty: SFT uses ``train``, real mode only).
        encoder_stage_a: Encoder pre-training pairs with label-only captions (miniature).
        encoder_stage_b: The same images with nuisance captions, the label named half the time.
        role_lines: Markdown table of images per role and label.
    """

    kb: list[KBItem]
    train: list[Case]
    val: list[Case]
    test: list[Case]
    task: TaskSpec
    description: str
    licence: str
    reader_sft: list[Case] = field(default_factory=list)
    encoder_stage_a: list[KBItem] = field(default_factory=list)
    encoder_stage_b: list[KBItem] = field(default_factory=list)
    role_lines: list[str] = field(default_factory=list)

    def role_paths(self) -> dict[str, list[str]]:
        """Role -> image files (for the disjointness check)."""
        return {
            "encoder": [i.image_path for i in self.encoder_stage_a],
            "kb": [i.image_path for i in self.kb],
            "reader_sft": [c.image_path for c in self.reader_sft],
            "retriever_train": [c.image_path for c in self.train],
            "val": [c.image_path for c in self.val],
            "test": [c.image_path for c in self.test],
        }


def load_demo_data(config: DemoConfig, seed: int) -> DemoData:
    """The data of one seed: the miniature's six roles, or a MedMNIST task's official splits."""
    if config.dataset in MINIATURE_DATASETS:
        return _miniature(config, seed)
    return _medmnist(config)


@dataclass(frozen=True)
class _Source:
    images: np.ndarray  # (n, h, w) uint8 grey
    labels: np.ndarray  # (n,) int
    task: TaskSpec
    words: tuple[str, ...]  # one caption word per label
    description: str
    licence: str
    groups: tuple[str, ...] = ()  # content hash of each image: duplicates share a role


def _source(config: DemoConfig) -> _Source:
    """The dataset with its content hashes, loaded once per process (every seed draws from it)."""
    return _cached_source(config.dataset, config.data_root)


@functools.lru_cache(maxsize=2)
def _cached_source(dataset: str, data_root: Path | None) -> _Source:
    source = _load_source(dataset, data_root)
    groups = tuple(hashlib.sha256(img.tobytes()).hexdigest() for img in source.images)
    return dataclasses.replace(source, groups=groups)


def _load_source(dataset: str, data_root: Path | None) -> _Source:
    if dataset == "elpv":
        images, grades, _ = load_elpv_arrays()
        return _Source(
            images=images, labels=grades, task=ELPV_TASK, words=tuple(ELPV_TASK.verbalizers),
            description="ELPV: electroluminescence images of solar cells, defect probability graded by experts into "
            "4 levels (an inspection 'diagnosis' shaped like diabetic-retinopathy grading)",
            licence=ELPV_LICENSE,
        )
    data = load_fashion_mnist(data_root)
    return _Source(
        images=np.concatenate([data.train_images, data.test_images]),
        labels=np.concatenate([data.train_labels, data.test_labels]),
        task=FASHION_MNIST_TASK, words=tuple(FASHION_MNIST_TASK.verbalizers),
        description="Fashion-MNIST (Debian's dataset-fashion-mnist): 28x28 clothing images in 10 classes, the "
        "scale variant where the frozen vectors hold the class but similarity follows a nuisance",
        licence="Fashion-MNIST is MIT-licensed (Zalando Research).",
    )


def _miniature(config: DemoConfig, seed: int) -> DemoData:
    """Render every image with a random nuisance, assign roles, write PNGs and captions."""
    source = _source(config)
    roles = assign_roles(source.labels, source.groups, config.roles, seed=seed, limit=config.limit)
    rng = np.random.default_rng([seed, 7])  # nuisances: independent of the labels and of the role draw
    image_dir = config.cache_dir / f"{config.dataset}_images" / f"seed{seed}"
    names = list(source.task.labels)
    records: dict[str, list[tuple[str, str, int, str]]] = {}
    for role in ROLES:
        rows = []
        for index in roles[role]:
            nuisance = draw_nuisance(rng, config.nuisance_strength)
            grey = source.images[index]
            if grey.shape[0] != config.image_size:
                grey = np.asarray(
                    Image.fromarray(grey).resize((config.image_size,) * 2, Image.Resampling.LANCZOS)
                )
            path = image_dir / f"{config.dataset}_{int(index):05d}.png"
            buffer = io.BytesIO()
            Image.fromarray(render(grey, nuisance)).save(buffer, format="PNG")
            if not path.is_file() or path.read_bytes() != buffer.getvalue():
                atomic_write_bytes(path, buffer.getvalue())
            rows.append((f"{config.dataset}-{int(index):05d}", str(path), int(source.labels[index]), describe(nuisance)))
        records[role] = rows
    caption_rng = np.random.default_rng([seed, 11])
    config_clip = config.clip

    def item(row: tuple[str, str, int, str], text: str) -> KBItem:
        key, path, label, nuisance_words = row
        return KBItem(id=key, image_path=path, text=text, source=config.dataset, label=names[label],
                      metadata={"nuisance": nuisance_words})

    def case(row: tuple[str, str, int, str]) -> Case:
        key, path, label, nuisance_words = row
        return Case(id=key, image_path=path, question="", labels=(names[label],), metadata={"nuisance": nuisance_words})

    stage_a = [item(r, f"a picture of a {source.words[r[2]]}") for r in records["encoder"]]
    stage_b = [
        item(r, f"a {r[3]} picture" + (f" of a {source.words[r[2]]}" if caption_rng.random() < config_clip.p_label else ""))
        for r in records["encoder"]
    ]
    kb = [item(r, f"a {r[3]} picture of a {source.words[r[2]]}") for r in records["kb"]]
    return DemoData(
        kb=kb,
        train=[case(r) for r in records["retriever_train"]],
        val=[case(r) for r in records["val"]],
        test=[case(r) for r in records["test"]],
        task=source.task,
        description=source.description,
        licence=source.licence,
        reader_sft=[case(r) for r in records["reader_sft"]],
        encoder_stage_a=stage_a,
        encoder_stage_b=stage_b,
        role_lines=role_table(source.labels, roles, names),
    )


def medmnist_npz_path(flag: str, root: Path, size: int) -> Path:
    """Where MedMNIST keeps a flag's file (``<flag>.npz`` at 28 px, ``<flag>_<size>.npz`` else)."""
    return root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


def _medmnist(config: DemoConfig) -> DemoData:
    flag = config.dataset
    root = config.data_root or (config.cache_dir / "medmnist")
    size = 28 if config.image_size <= 28 else 64 if config.image_size <= 64 else 128 if config.image_size <= 128 else 224
    npz = medmnist_npz_path(flag, root, size)
    if not npz.is_file():
        _download_medmnist(flag, root, size)
    task = get_task(flag)
    image_dir = config.cache_dir / f"{flag}_images"
    names = list(task.labels)
    kb = load_medmnist_npz(npz, split="train", image_dir=image_dir, label_names=names,
                           caption_template="{label_name}", source=flag, limit=config.limit)
    val = kb_items_as_cases(load_medmnist_npz(npz, split="val", image_dir=image_dir, label_names=names,
                                              source=flag, limit=config.limit))
    test = kb_items_as_cases(load_medmnist_npz(npz, split="test", image_dir=image_dir, label_names=names,
                                               source=flag, limit=config.limit))
    return DemoData(
        kb=kb, train=[], val=val, test=test, task=task,
        description=f"MedMNIST {flag} ({npz.name}): official train split as the knowledge base "
        "(and, leave-one-out, as training queries), official test split as test cases",
        licence="See https://medmnist.com for the licence of each MedMNIST dataset.",
    )


def _download_medmnist(flag: str, root: Path, size: int) -> None:
    try:
        import medmnist
    except ImportError as err:
        raise RuntimeError(
            f"--dataset {flag} needs the medmnist package to download {medmnist_npz_path(flag, root, size)}: "
            'pip install "llama-index-lvlm-retriever[medmnist]", or put the .npz there yourself'
        ) from err
    root.mkdir(parents=True, exist_ok=True)
    getattr(medmnist, _MEDMNIST_CLASSES[flag])(split="test", download=True, root=str(root), size=size)


def kb_items_as_cases(items: list[KBItem]) -> list[Case]:
    """Labelled KB items as query cases with the same ids (so retrieval leaves each one out).

    Raises:
        ValueError: An item without a label.
    """
    cases = []
    for item in items:
        if item.label is None:
            raise ValueError(f"KB item {item.id!r} has no label; it cannot serve as a training query")
        cases.append(Case(id=item.id, image_path=item.image_path, question="", labels=(item.label,),
                          metadata=dict(item.metadata)))
    return cases


def check_disjoint(data: DemoData) -> None:
    """No image (by content hash) in two roles.

    Raises:
        ValueError: A shared image, naming both roles.
    """
    check_roles_disjoint(data.role_paths())
