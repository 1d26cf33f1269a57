"""Turn a MedMNIST ``.npz`` into the three files a training recipe reads.

Writes into ``--out``:

* ``kb.jsonl``: the train split as image-caption pairs (the knowledge base);
* ``train.jsonl``: the val split as labelled cases (reader feedback is collected on them; using a
  split outside the KB keeps a case from retrieving its own image);
* ``test.jsonl``: the test split as labelled cases (evaluation);
* ``images/``: every image as PNG.

Labels are named with the built-in task's label names (MedMNIST index order), so the cases'
``answers`` are valid labels of ``--task``. Usage::

    python training/prepare_medmnist.py --npz ~/.medmnist/retinamnist_224.npz --task retinamnist \\
        --caption "A fundus photograph with diabetic retinopathy grade {label_name}." --out data/retinamnist
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from llama_index_lvlm_retriever.data.loaders import load_medmnist_npz
from llama_index_lvlm_retriever.tasks import get_task

logger = logging.getLogger(__name__)

# split of the .npz -> (file written, what it is)
SPLITS = {"train": "kb.jsonl", "val": "train.jsonl", "test": "test.jsonl"}


def prepare_medmnist(npz: str | Path, task: str, out: str | Path, *, caption: str = "{label_name}", limit: int | None = None) -> dict[str, Path]:
    """Write ``kb.jsonl``, ``train.jsonl``, ``test.jsonl`` and ``images/`` under ``out``.

    Args:
        npz: The MedMNIST file (e.g. ``retinamnist_224.npz``).
        task: A built-in single-label task name (its labels name the classes by index).
        out: Output folder.
        caption: KB caption template (placeholders of ``load_medmnist_npz``: ``{label_name}``, ...).
        limit: Keep only the first ``limit`` samples of each split (for a quick run).

    Returns:
        ``{split: path of the JSONL written}``.

    Raises:
        ValueError: A multi-label task (cases would need one answer list per row; write them yourself).
    """
    spec = get_task(task)
    if spec.multi_label:
        raise ValueError(f"task {spec.name!r} is multi-label; prepare_medmnist handles single-label tasks only")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for split, filename in SPLITS.items():
        items = load_medmnist_npz(
            npz, split=split, image_dir=root / "images", label_names=list(spec.labels), caption_template=caption,
            source=spec.name, limit=limit,
        )
        if split == "train":
            records = [item.to_dict() for item in items]
        else:
            records = [{"id": item.id, "image_path": item.image_path, "answers": item.label} for item in items]
        path = root / filename
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        logger.info("wrote %d %s records to %s", len(records), split, path)
        written[split] = path
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the files written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--npz", required=True, help="MedMNIST .npz file")
    parser.add_argument("--task", required=True, help="built-in task name (retinamnist, dermamnist, breastmnist, ...)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--caption", default="{label_name}", help="KB caption template")
    parser.add_argument("--limit", type=int, default=None, help="first N samples of each split only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for split, path in prepare_medmnist(args.npz, args.task, args.out, caption=args.caption, limit=args.limit).items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
