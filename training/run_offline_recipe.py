"""Run a training recipe end to end, offline: build-kb -> collect-feedback -> train-retriever -> query -> evaluate.

With the default ``offline_tiny.json`` it first writes everything the recipe needs into the work
folder: a tiny random CLIP encoder and a tiny random LLaVA reader (``llama_index_lvlm_retriever.testing``),
and a knowledge base plus training and test cases made of real electroluminescence images of solar
cells (the ``elpv-dataset`` package, labels ``defective`` / ``functional``). Nothing is downloaded.

The offline data needs the ``elpv`` extra (the ``elpv-dataset`` package)::

    pip install ".[elpv]"        # from a checkout; or: pip install "llama-index-lvlm-retriever[elpv]"

Usage::

    python training/run_offline_recipe.py --workdir /tmp/offline-recipe
    # a real recipe (data from prepare_medmnist.py; needs the checkpoints, a GPU helps):
    python training/run_offline_recipe.py --no-prepare --recipe training/retinamnist.json \\
        --data data/retinamnist --workdir runs/retinamnist

Each recipe step is one ``lvlm-retriever`` subcommand whose options (``{workdir}`` filled in) are
passed as that command's ``--config`` file, exactly as a user would.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llama_index_lvlm_retriever.cli import evaluate, kb, retriever_training
from llama_index_lvlm_retriever.cli._common import apply_config_defaults, write_json_atomic

logger = logging.getLogger(__name__)

DEFAULT_RECIPE = Path(__file__).with_name("offline_tiny.json")
LABELS = ("defective", "functional")
# elpv gives each cell a defect probability in {0, 1/3, 2/3, 1}; >= 0.5 counts as defective.
DEFECT_THRESHOLD = 0.5
IMAGE_SIDE = 64  # the tiny models read 32x32; 64x64 PNGs keep the files small and the decode fast


def elpv_task() -> dict[str, Any]:
    """The two-label solar-cell task, as the JSON a ``--task`` option reads."""
    return {
        "name": "elpv",
        "labels": list(LABELS),
        "verbalizers": ["yes", "no"],
        "question": "Is this solar cell defective? Answer yes or no.",
        "description": "elpv electroluminescence solar cells: defective (probability >= 0.5) or functional.",
    }


def prepare_workdir(workdir: str | Path, *, n_kb: int = 24, n_train: int = 12, n_test: int = 8, seed: int = 0) -> Path:
    """Write tiny models, images, a KB JSONL, train/test case JSONLs and the task JSON under ``workdir``.

    Cells are drawn at random (``seed``) with both labels in every split.

    Returns:
        ``workdir`` as a ``Path``.
    """
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as err:
        raise ImportError(
            'the offline recipe draws its images from the elpv-dataset package: pip install ".[elpv]" '
            "(from a checkout), or pass --no-prepare with your own --data"
        ) from err

    from llama_index_lvlm_retriever.testing import build_tiny_clip, build_tiny_llava

    root = Path(workdir)
    images_dir = root / "data" / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    build_tiny_clip(root / "models" / "clip")
    build_tiny_llava(root / "models" / "reader", extra_corpus=(elpv_task()["question"],))
    write_json_atomic(root / "data" / "task.json", elpv_task())

    pixels, probs, kinds = load_dataset()
    rng = np.random.default_rng(seed)
    defective = np.flatnonzero(probs >= DEFECT_THRESHOLD)
    functional = np.flatnonzero(probs < DEFECT_THRESHOLD)
    n_total = n_kb + n_train + n_test
    # Half of each split from each class, interleaved so every split holds both labels.
    picks = np.stack([rng.choice(defective, n_total // 2 + 1, replace=False), rng.choice(functional, n_total // 2 + 1, replace=False)], axis=1).reshape(-1)
    splits = {"kb": picks[:n_kb], "train": picks[n_kb : n_kb + n_train], "test": picks[n_kb + n_train : n_total]}
    for split, rows in splits.items():
        lines = []
        for i, row in enumerate(rows):
            label = LABELS[0] if probs[row] >= DEFECT_THRESHOLD else LABELS[1]
            name = f"{split}-{i:03d}.png" if split == "kb" else f"case-{split}-{i:03d}.png"
            Image.fromarray(pixels[row]).convert("RGB").resize((IMAGE_SIDE, IMAGE_SIDE)).save(images_dir / name)
            if split == "kb":
                text = f"{kinds[row]} solar cell, {label}, defect probability {probs[row]:.2f}"
                lines.append({"id": f"kb-{i:03d}", "image_path": f"images/{name}", "text": text, "source": "elpv", "label": label})
            else:
                lines.append({"id": f"{split}-{i:03d}", "image_path": f"images/{name}", "answers": label})
        out = root / "data" / f"{split}.jsonl"
        out.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return root


def _fill(value: Any, places: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, path in places.items():
            value = value.replace("{" + name + "}", path)
        return value
    if isinstance(value, list):
        return [_fill(v, places) for v in value]
    return value


def run_command(command: str, options: dict[str, Any], config_path: Path) -> str:
    """Run one subcommand with ``options`` as its ``--config`` file; returns what it printed.

    Raises:
        RuntimeError: The command exited with a non-zero code.
    """
    parser = argparse.ArgumentParser(prog="lvlm-retriever")
    subparsers = parser.add_subparsers(dest="command", required=True)
    registry: dict[str, argparse.ArgumentParser] = {}
    for module in (kb, retriever_training, evaluate):
        registry.update(module.register(subparsers))
    write_json_atomic(config_path, options)
    apply_config_defaults(registry[command], str(config_path))
    args = parser.parse_args([command, "--config", str(config_path)])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = int(args.handler(args) or 0)
    if code != 0:
        raise RuntimeError(f"step {command!r} exited with code {code}; see {config_path}")
    return printed.getvalue()


def run_recipe(recipe: str | Path, workdir: str | Path, data: str | Path | None = None) -> dict[str, str]:
    """Run every step of ``recipe`` in order; returns ``{command: printed output}``.

    ``{workdir}`` and ``{data}`` in option values are replaced by ``workdir`` and ``data``
    (default: ``workdir/data``).
    """
    root = Path(workdir)
    places = {"workdir": str(root), "data": str(Path(data) if data is not None else root / "data")}
    steps = json.loads(Path(recipe).read_text(encoding="utf-8"))["steps"]
    (root / "configs").mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str] = {}
    for i, step in enumerate(steps):
        command = step["command"]
        options = {key: _fill(value, places) for key, value in step["options"].items()}
        logger.info("step %d: %s", i + 1, command)
        outputs[command] = run_command(command, options, root / "configs" / f"{i + 1:02d}-{command}.json")
    return outputs


def main(argv: list[str] | None = None) -> int:
    """Prepare the work folder (offline recipe only) and run the recipe; prints each step's output."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workdir", required=True, help="folder for models, data and every output")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="recipe JSON (a list of steps)")
    parser.add_argument("--data", default=None, help="folder that {data} in the recipe stands for (default: WORKDIR/data)")
    parser.add_argument("--no-prepare", action="store_true", help="skip writing the tiny models and elpv data (real recipes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.no_prepare:
        prepare_workdir(args.workdir)
    for command, printed in run_recipe(args.recipe, args.workdir, args.data).items():
        print(f"== {command}\n{printed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
