"""Evidence-viewer write time and page size: 50 cases x 4 neighbours of real ELPV images.

The 50 query images and a 500-image knowledge base are electroluminescence solar cells from the
``elpv-dataset`` package (300 x 300 grey PNGs, as ``predict`` on ELPV sees them); each case gets 4
neighbours drawn (seeded) from the first ``--pool`` knowledge-base images (125: some neighbours
repeat across cases, as real retrieval does; 500: nearly all 250 images are distinct). The page is written with images embedded (``predict``'s default up to 200
cases) and timed (best of 3 runs, each with a fresh image cache).

With ``--baseline REV`` the viewer module of an earlier commit (``git show REV:...``) writes the same
rows, for a before/after comparison in the same run. With ``--screenshots DIR`` headless Chromium
screenshots the page into ``DIR/viewer_benchmark.png``.

Usage::

    python benchmarks/viewer.py                      # ~10 s
    python benchmarks/viewer.py --baseline 957979d   # also the viewer before issue 20
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

N_CASES = 50
N_KB = 500
K = 4
RUNS = 3
_MODULE = "llama_index_lvlm_retriever/evaluation/evidence_viewer.py"


def _elpv_images() -> np.ndarray:
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise SystemExit('this benchmark needs the elpv extra: pip install ".[elpv]"') from error
    images, *_ = load_dataset()
    return np.asarray(images)


def _old_names(answer: dict[str, Any]) -> dict[str, Any]:
    """The same answer under the names a ``--baseline`` viewer from before the one vocabulary reads.

    Each neighbour carries both ``prediction`` and its old name ``label`` (see ``_rows``).
    """
    return {"label": answer["answer"], "label_probability": answer["probability"], "answer_support": answer["support"],
            "answer_support_weighted": answer["weighted_support"], "neighbour_predictions": answer["neighbours"]}


def _rows(folder: Path, pool: int) -> list[dict[str, Any]]:
    pixels = _elpv_images()
    rng = np.random.default_rng(0)
    picks = rng.choice(len(pixels), N_CASES + N_KB, replace=False)
    paths = []
    for i, index in enumerate(picks):
        path = folder / f"img{i:04d}.png"
        Image.fromarray(pixels[index]).save(path)
        paths.append(str(path))
    queries, kb = paths[:N_CASES], paths[N_CASES:]
    rows = []
    for i, query in enumerate(queries):
        neighbours = [
            {"kb_id": f"kb{j}", "head": ("image", "text")[r % 2], "retrieval_score": 0.9 - 0.05 * r,
             "prediction": "defective", "label": "defective", "probability": 0.7, "image_path": kb[j],
             "text": f"mono solar cell, defective, defect probability 0.{j % 10}", "kb_label": "defective"}
            for r, j in enumerate(rng.choice(pool, K, replace=False))  # neighbours from the first `pool` KB images
        ]
        answer = {"answer": "defective", "probability": 0.7, "distribution": {"defective": 0.7, "functional": 0.3},
                  "support": 1.0, "weighted_support": 1.0, "consistent": True, "abstain": False, "neighbours": neighbours}
        rows.append({"case_id": f"case{i:02d}", "image_path": query, "question": "", "gold": ["defective"],
                     "correct": True, "error": None, **answer, **_old_names(answer)})
    return rows


def _load_module(revision: str | None) -> Any:
    if revision is None:
        from llama_index_lvlm_retriever.evaluation import evidence_viewer

        return evidence_viewer
    source = subprocess.run(["git", "show", f"{revision}:{_MODULE}"], check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "evidence_viewer_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("evidence_viewer_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _measure(module: Any, rows: list[dict[str, Any]], out: Path) -> tuple[float, int]:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        module.write_evidence_viewer(rows, out, images="embed", labels=["defective", "functional"])
        times.append(time.perf_counter() - start)
    return min(times), out.stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="git revision whose viewer to compare with")
    parser.add_argument("--pool", type=int, default=125, help=f"neighbours come from this many KB images (max {N_KB}; fewer: more repeats)")
    parser.add_argument("--screenshots", default=None, help="folder for a Chromium screenshot of the page")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = _rows(folder, args.pool)
        distinct = len({r["image_path"] for r in rows} | {n["image_path"] for r in rows for n in r["neighbours"]})
        print(f"{N_CASES} cases x {K} neighbours, {distinct} distinct images (ELPV, 300x300 grey)")
        results = {"this checkout": _measure(_load_module(None), rows, folder / "now.html")}
        if args.baseline:
            results[f"baseline {args.baseline}"] = _measure(_load_module(args.baseline), rows, folder / "before.html")
        print("| viewer | write time (best of 3) | page size |")
        print("|---|---:|---:|")
        for name, (seconds, size) in results.items():
            print(f"| {name} | {seconds:.2f} s | {size / 1e6:.2f} MB |")
        if args.screenshots:
            shot = Path(args.screenshots) / "viewer_benchmark.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--window-size=1400,1000", f"--screenshot={shot}", (folder / "now.html").as_uri()], check=True,
                           capture_output=True, timeout=120)
            print(f"screenshot -> {shot}")


if __name__ == "__main__":
    sys.exit(main())
