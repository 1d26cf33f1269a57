"""The demo's data: ELPV offline (default) or a MedMNIST task in real mode."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from llama_index_lvlm_retriever.data.elpv import ELPV_LICENSE, load_elpv_splits
from llama_index_lvlm_retriever.data.images import image_content_hash
from llama_index_lvlm_retriever.data.loaders import load_medmnist_npz
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.demo.config import DemoConfig
from llama_index_lvlm_retriever.demo.miniature import ELPV_TASK
from llama_index_lvlm_retriever.tasks import TaskSpec, get_task

logger = logging.getLogger(__name__)

__all__ = ["DemoData", "kb_items_as_cases", "load_demo_data", "medmnist_npz_path"]

# MedMNIST's own download class per flag (medmnist.INFO[flag]["python_class"]).
_MEDMNIST_CLASSES = {"retinamnist": "RetinaMNIST", "dermamnist": "DermaMNIST", "breastmnist": "BreastMNIST"}


@dataclass(frozen=True)
class DemoData:
    """Knowledge base, labelled case splits and the task, with where they come from."""

    kb: list[KBItem]
    train: list[Case]
    val: list[Case]
    test: list[Case]
    task: TaskSpec
    description: str
    licence: str


def load_demo_data(config: DemoConfig, seed: int) -> DemoData:
    """The splits of one seed: a stratified ELPV split, or a MedMNIST task's official splits."""
    if config.dataset == "elpv":
        splits = load_elpv_splits(
            config.cache_dir / "elpv_images",
            image_size=config.image_size,
            seed=seed,
            fractions=config.fractions,
            limit=config.limit,
        )
        return DemoData(
            kb=splits.kb, train=splits.train, val=splits.val, test=splits.test, task=ELPV_TASK,
            description=(
                "ELPV: electroluminescence images of solar cells, defect probability graded by experts "
                "into 4 levels (an inspection 'diagnosis' shaped like diabetic-retinopathy grading)"
            ),
            licence=ELPV_LICENSE,
        )
    return _medmnist(config)


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
    """No image (by content hash) in two of knowledge base / train / val / test.

    Raises:
        ValueError: A shared image, naming both places.
    """
    seen: dict[str, str] = {}
    groups = {"kb": [i.image_path for i in data.kb], "train": [c.image_path for c in data.train],
              "val": [c.image_path for c in data.val], "test": [c.image_path for c in data.test]}
    for split, paths in groups.items():
        for path in paths:
            digest = image_content_hash(path)
            other = seen.setdefault(digest, split)
            if other != split:
                raise ValueError(f"image {path} of split {split!r} also appears in split {other!r}")
