"""``lvlm-retriever demo``: the interim offline demo on ELPV solar-cell images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llama_index_lvlm_retriever.cli import main
from llama_index_lvlm_retriever.cli.demo import ELPVCell, load_elpv_arrays


def test_caption_and_label_come_from_the_metadata() -> None:
    cell = ELPVCell(index=7, pixels=np.zeros((2, 2), np.uint8), defect_probability=1 / 3, cell_type="poly")
    assert cell.caption == (
        "Electroluminescence image of a polycrystalline solar cell; expert defect probability 0.33."
    )
    assert cell.label == "defect_p=0.33"


def test_demo_builds_kb_and_prints_three_queries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-items", "12", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed and "not meaningful" in printed
    assert f"knowledge base: 12 ELPV images (16-d) persisted to {out / 'kb'}" in printed
    assert len(re.findall(r"^query query-\d{4} \(Electroluminescence image of a", printed, re.M)) == 3
    assert re.search(r"timing: .* query mean [\d.]+ ms", printed)

    images = sorted((out / "images").glob("*.png"))
    assert len(images) == 12
    assert len(list((out / "queries").glob("*.png"))) == 3
    # The PNGs are the real ELPV pixels and their captions tell the truth about them.
    all_pixels, probabilities, types = load_elpv_arrays()
    items = [json.loads(line) for line in (out / "kb" / "items.jsonl").read_text().splitlines() if line.strip()]
    assert len(items) == 12
    for item in items[:3]:
        index = item["metadata"]["elpv_index"]
        assert np.array_equal(np.asarray(Image.open(item["image_path"])), all_pixels[index])
        kind = {"mono": "monocrystalline", "poly": "polycrystalline"}[str(types[index])]
        assert item["text"] == (
            f"Electroluminescence image of a {kind} solar cell; expert defect probability {probabilities[index]:.2f}."
        )
    # Held-out queries are not in the knowledge base.
    query_indices = {int(p.stem.split("-")[1]) for p in (out / "queries").glob("*.png")}
    assert query_indices.isdisjoint({item["metadata"]["elpv_index"] for item in items})


def test_demo_rejects_bad_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--n-items", "0"]) == 2
    assert "--n-items must be >= 1, got 0" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--n-items", "2622"]) == 2
    assert "the demo needs 2625 ELPV images" in capsys.readouterr().err
