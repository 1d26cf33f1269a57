"""SIGKILL of the whole ``demo`` process at random points (issue 12): the rerun gives identical results.

A tiny demo (ELPV, 200 images, one epoch per model) runs in a subprocess that is killed after a
random delay drawn over its measured duration, 10 times into the same output folder; after each
kill every JSON file the demo wrote must parse (no torn file) and every cached stage must be either
absent or complete. Then the demo runs to the end in that folder, reusing whatever stages the killed
runs finished, and its report must equal an uninterrupted run's in another folder.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("elpv_dataset", reason="the demo's data comes from the elpv-dataset package")

KILLS = 10
_SCRIPT = """
import sys
from pathlib import Path
from llama_index_lvlm_retriever.demo.config import (
    MiniCLIPSettings, MiniReaderSettings, RetrieverTrainingSettings, quick_config,
)
from llama_index_lvlm_retriever.demo.run import run_demo

config = quick_config(
    output_dir=Path(sys.argv[1]), limit=200, n_bootstrap=20, show_progress=False,
    clip=MiniCLIPSettings(stage_a_epochs=1, epochs=1, patch_size=8),
    reader=MiniReaderSettings(epochs=1, lr=3e-3),
    retriever_training=RetrieverTrainingSettings(
        n_candidates=4, max_steps=4, batch_size=32, eval_every=2, n_train_candidates=4, rounds=1, mode="adapter",
    ),
)
run_demo(config, echo=lambda *args, **kwargs: None)
"""


def _start(out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _run(out: Path) -> float:
    start = time.perf_counter()
    process = _start(out)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()[-2000:]
    return time.perf_counter() - start


def _results(out: Path) -> dict[str, object]:
    # Rows name image files under the output folder: compare them relative to it.
    report = json.loads((out / "report.json").read_text().replace(str(out), "<out>"))
    return {key: report[key] for key in ("systems", "n_cases", "metrics", "comparisons", "rows")}


def _check_consistent(out: Path) -> None:
    for path in out.rglob("*.json"):
        json.loads(path.read_text())  # every JSON file on disk is whole (atomic writes)
    for stage in (out / "cache").glob("seed*/*"):
        if stage.is_dir() and not stage.name.startswith("."):
            # A stage folder at its path is a finished one (swapped in whole, with its record).
            assert any(stage.iterdir()), f"empty stage folder {stage}"


def test_killing_the_demo_at_random_points_then_rerunning_gives_the_same_report(tmp_path: Path) -> None:
    duration = _run(tmp_path / "reference")
    reference = _results(tmp_path / "reference")
    out = tmp_path / "killed"
    rng = random.Random(0)
    finished = 0
    for _ in range(KILLS):
        process = _start(out)
        try:
            process.wait(timeout=rng.uniform(0.0, duration * 1.1))
            finished += 1
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        _check_consistent(out)
    assert finished < KILLS  # most kills landed mid-run
    _run(out)  # the rerun, reusing the stages the killed runs completed
    assert _results(out) == reference
    assert not [p for p in out.rglob(".*tmp*")], "leftovers of killed writes remain after the rerun"
