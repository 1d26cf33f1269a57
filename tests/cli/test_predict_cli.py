"""``lvlm-retriever predict`` end to end: a folder of 20 PNGs, a DICOM directory, a case file."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llama_index_lvlm_retriever.cli import main
from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.testing import build_tiny_clip, build_tiny_llava

# pydicom's own test files plus pydicom-data's: grey CT/MR, ultrasound palette, RGB, multi-frame.
DICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "SC_rgb.dcm", "OBXXXX1A.dcm", "emri_small.dcm")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict_cli")
    rng = np.random.default_rng(1)
    items = []
    for i in range(5):
        path = root / f"kb{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        items.append(KBItem(id=f"kb{i}", image_path=str(path), text=f"reference case {i}"))
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(20):
        folder = images / "sub" if i >= 15 else images  # recursive: five images one level down
        Image.fromarray(rng.integers(0, 255, (36, 36), dtype=np.uint8)).save(folder / f"scan{i:02d}.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kb = KnowledgeBase.build(items, CLIPEmbedding.from_pretrained(build_tiny_clip(root / "clip")), show_progress=False)
        kb.persist(root / "kb")
        reader = build_tiny_llava(root / "llava")
    finally:
        torch.set_num_threads(threads)
    cases = root / "cases.jsonl"
    cases.write_text(
        "\n".join(
            json.dumps({"id": f"c{i}", "image_path": str(images / f"scan{i:02d}.png"), "answers": ["malignant", "benign"][i % 2]})
            for i in range(3)
        )
        + "\n"
    )
    return {"root": root, "kb": root / "kb", "reader": reader, "images": images, "cases": cases}


def _base(setup: dict[str, Path], out: Path) -> list[str]:
    return ["predict", "--kb", str(setup["kb"]), "--reader", str(setup["reader"]), "--task", "breastmnist",
            "--out", str(out), "--no-progress", "--batch-size", "8"]


def test_predict_folder_of_pngs(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main([*_base(setup, out), "--images", str(setup["images"]), "--min-support", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("20 cases: ") and "evidence viewer ->" in printed
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and rows[-1]["case_id"] == "sub/scan19.png"
    with (out / "predictions.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 20
    assert (out / "evidence.html").read_text().count('<article class="case"') == 20
    provenance = json.loads((out / "predict_run.json").read_text())["provenance"]
    assert provenance["inputs"]["images"]["files"] == 20 and len(provenance["inputs"]["images"]["sha256"]) == 64
    assert provenance["inputs"]["kb"]["path"] == str(setup["kb"].resolve())
    assert provenance["options"]["min_support"] == 0.5 and provenance["models"]["reader"]["model_name"]
    # Rerunning the same command resumes: every row is already there, nothing changes.
    before = (out / "predictions.jsonl").read_text()
    assert main([*_base(setup, out), "--images", str(setup["images"]), "--min-support", "0.5"]) == 0
    assert (out / "predictions.jsonl").read_text() == before


def test_predict_dicom_directory(setup: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    folder = tmp_path / "dicom"
    folder.mkdir()
    for name in DICOM_FILES:
        source = get_testdata_file(name)
        if source is None:
            pytest.skip(f"{name} is in neither pydicom's test files nor pydicom-data")
        shutil.copy(source, folder / name)
    shutil.copy(folder / "CT_small.dcm", folder / "IM0001")  # no suffix: found by the DICM marker
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main([*_base(setup, out), "--dicom-dir", str(folder), "--viewer-images", "copy"]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(row["case_id"] for row in rows) == sorted([*DICOM_FILES, "IM0001"])
    assert all(row["error"] is None and row["answer"] in ("malignant", "benign") for row in rows)
    page = (out / "evidence.html").read_text()
    assert page.count('<article class="case"') == len(rows) and "data:image" not in page
    assert len(list((out / "evidence_files").glob("*.jpg"))) >= len(rows)


def test_predict_case_file_with_gold(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([*_base(setup, out), "--cases", str(setup["cases"])]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["case_id"] for row in rows] == ["c0", "c1", "c2"]
    assert all(row["correct"] == (row["answer"] == row["gold"][0]) for row in rows)


def test_predict_bad_inputs(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _base(setup, tmp_path / "out")
    assert main(base) == 2
    assert "pass exactly one of --images FOLDER, --dicom-dir DIR, --cases FILE (got none)" in capsys.readouterr().err
    assert main([*base, "--images", str(setup["images"]), "--cases", str(setup["cases"])]) == 2
    assert "(got --images, --cases)" in capsys.readouterr().err
    assert main([*base, "--images", str(tmp_path / "nowhere")]) == 2
    assert "--images" in capsys.readouterr().err
    assert main([*base, "--images", str(setup["images"]), "--min-support", "0"]) == 2
    assert "--min-support must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert main([*base, "--images", str(setup["images"]), "--heads", str(tmp_path), "--image-head", str(tmp_path)]) == 2
    assert "pass either --heads DIR or --image-head/--text-head" in capsys.readouterr().err
    assert main([*base, "--images", str(setup["images"]), "--k-image", "0", "--k-text", "0"]) == 2
    assert "--k-image and --k-text are both 0" in capsys.readouterr().err


def test_predict_takes_the_threshold_file_of_evaluate(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llama_index_lvlm_retriever.evaluation.risk_control import (
        choose_min_support,
        save_threshold_file,
    )

    # 30 unanimous right validation cases, 10 at support 1/2 with 5 errors: min_support 0.51 (test_risk_control)
    control = choose_min_support(np.array([1.0] * 30 + [0.5] * 10), np.array([True] * 30 + [True, False] * 5), 0.1, 0.1)
    threshold = save_threshold_file(tmp_path / "threshold.json", control)
    out = tmp_path / "out"
    assert main([*_base(setup, out), "--cases", str(setup["cases"]), "--threshold-file", str(threshold)]) == 0
    assert "(support < 0.51)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(row["abstain"] == (row["support"] < 0.51) for row in rows)
    assert json.loads((out / "predict_run.json").read_text())["provenance"]["options"]["min_support"] == 0.51
    assert main([*_base(setup, tmp_path / "o2"), "--cases", str(setup["cases"]), "--threshold-file", str(tmp_path / "none.json")]) == 2
    assert "--threshold-file: no threshold file at" in capsys.readouterr().err
