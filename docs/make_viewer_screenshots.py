"""Screenshots of the three evidence viewers (predict, evaluate, diagnose) for the docs, offline.

Builds the offline ELPV miniature (``training/run_offline_recipe.py``: tiny random CLIP and LLaVA,
real solar-cell images), runs ``build-kb``, ``predict``, ``evaluate --target-risk`` and
``diagnose --viewer``, then takes headless-Chromium screenshots of each page into ``docs/``.
The models are random, so the answers are meaningless: the pictures show the page, not a result.

Usage::

    python docs/make_viewer_screenshots.py            # needs chromium on PATH and the elpv extra
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent


def _recipe():
    spec = importlib.util.spec_from_file_location("run_offline_recipe", REPO / "training" / "run_offline_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shot(page: Path, out: Path, height: int = 1000) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    command = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--window-size=1400,{height}", f"--screenshot={out}", page.as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    print(f"{page.name} -> {out}")


def main() -> int:
    from llama_index_lvlm_retriever.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        root = _recipe().prepare_workdir(Path(tmp), n_kb=24, n_train=2, n_test=12)
        kb, cases = str(root / "kb"), str(root / "data" / "test.jsonl")
        common = ["--reader", str(root / "models" / "reader"), "--task", str(root / "data" / "task.json")]
        steps = [
            ["build-kb", "--items", str(root / "data" / "kb.jsonl"), "--embed-model", str(root / "models" / "clip"), "--out", kb],
            ["predict", "--kb", kb, "--cases", cases, *common, "--out", str(root / "predict"), "--min-support", "0.75"],
            ["evaluate", "--kb", kb, "--cases", cases, *common, "--out", str(root / "eval"), "--bootstrap", "100",
             "--no-closed-book", "--target-risk", "0.5", "--risk-delta", "0.2"],
        ]
        image = root / "data" / json.loads(Path(cases).read_text().splitlines()[0])["image_path"]
        steps.append(["diagnose", "--kb", kb, "--image", str(image), *common, "--viewer", str(root / "diagnose.html")])
        for step in steps:
            if cli([*step, "--no-progress"] if step[0] != "diagnose" else step) != 0:
                raise SystemExit(f"{step[0]} failed")
        _shot(root / "predict" / "evidence.html", DOCS / "viewer_predict.png")
        _shot(root / "eval" / "evidence_standard_RAG.html", DOCS / "viewer_evaluate.png")
        _shot(root / "diagnose.html", DOCS / "viewer_diagnose.png", height=700)
    return 0


if __name__ == "__main__":
    sys.exit(main())
