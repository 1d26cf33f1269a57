"""Where does the offline miniature leave room for stage 2? A sweep over image size and nuisance strength.

For each setting, on the demo's own roles of one seed: render the images, pre-train the small CLIP
(its encoder role only), build the knowledge base and run ``diagnose_kb`` on it: a linear probe on
the frozen KB vectors (is the label in them?) against the frozen top-k label precision (does
similarity use it?) and the majority class. Nothing here reads validation or test cases; the demo's
defaults are picked from this table (the probe must beat the majority by >= 5 points while the
frozen top-k precision stays well below the probe). Writes ``<out>/room.json``. Usage::

    python training/miniature_room.py --dataset elpv --sizes 48 64 --strengths 1.0 0.5 0.25 --out room
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from llama_index_lvlm_retriever.demo.config import dataset_config
from llama_index_lvlm_retriever.demo.data import load_demo_data
from llama_index_lvlm_retriever.demo.miniature import train_small_clip
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.evaluation.kb_diagnostics import diagnose_kb
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.storage.files import atomic_write_json


def room(dataset: str, size: int, strength: float, seed: int, out: Path) -> dict[str, float]:
    """The KB diagnostics of one (image size, nuisance strength) on one seed."""
    folder = out / f"{dataset}_{size}px_s{strength}_seed{seed}"
    config = dataset_config(dataset, output_dir=folder, seeds=(seed,), image_size=size, nuisance_strength=strength,
                            show_progress=False)
    start = time.perf_counter()
    data = load_demo_data(config, seed)
    clip_dir = folder / "clip"
    if not (clip_dir / "config.json").is_file():
        train_small_clip(data.encoder_stage_b, clip_dir, image_size=size, settings=config.clip, seed=seed,
                         show_progress=False, stage_a_items=data.encoder_stage_a)
    embed = CLIPEmbedding.from_pretrained(str(clip_dir))
    kb = KnowledgeBase.build(data.kb, embed, show_progress=False)
    found = diagnose_kb(kb, k=config.k)
    return {
        "dataset": dataset, "image_size": size, "nuisance_strength": strength, "seed": seed,
        "linear_probe": found.linear_probe_accuracy, "majority": found.majority_baseline,
        "probe_minus_majority": found.linear_probe_accuracy - found.majority_baseline,
        "topk_precision_image": found.topk_precision_image, "topk_precision_text": found.topk_precision_text,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="elpv", choices=["elpv", "fashion-mnist"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 64])
    parser.add_argument("--strengths", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("room"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for size in args.sizes:
        for strength in args.strengths:
            row = room(args.dataset, size, strength, args.seed, args.out)
            rows.append(row)
            print(json.dumps(row), flush=True)
            atomic_write_json(args.out / "room.json", rows)
    print("\n| size | strength | probe | majority | probe - majority | top-k precision image / text |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['image_size']} | {r['nuisance_strength']} | {r['linear_probe']:.3f} | {r['majority']:.3f} | "
              f"{100 * r['probe_minus_majority']:+.1f} | {r['topk_precision_image']:.3f} / {r['topk_precision_text']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
