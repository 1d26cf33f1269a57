"""The CLI side of issue 12, item 1: one ``error:`` line, exit 2 for usage and 1 for data errors.

A tiny saved CLIP builds a real knowledge base through ``build-kb``; each test then damages an
input or passes a bad option and checks the exit code, that stderr is exactly one line naming
the file or option, and that no traceback is printed (``--debug`` re-raises instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from llama_index_lvlm_retriever.cli import main
from llama_index_lvlm_retriever.errors import KBFormatError
from llama_index_lvlm_retriever.testing import build_tiny_clip

from .conftest import rewrite_stored, stored_file  # noqa: E402


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "model")


@pytest.fixture(scope="module")
def items_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("items")
    rows = []
    for item_id, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        Image.new("RGB", (32, 32), colour).save(folder / f"{item_id}.png")
        rows.append({"id": item_id, "image_path": f"{item_id}.png", "text": f"a {item_id} square"})
    (folder / "kb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "kb.jsonl"


@pytest.fixture()
def kb_dir(clip_dir: Path, items_jsonl: Path, tmp_path: Path) -> Path:
    out = tmp_path / "kb"
    assert main(["build-kb", "--items", str(items_jsonl), "--embed-model", str(clip_dir), "--out", str(out), "--no-progress"]) == 0
    return out


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    # Other stderr lines are log records and transformers' weight-loading progress bars.
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


def test_truncated_image_faiss_is_one_line_exit_1(clip_dir: Path, items_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kb_dir = tmp_path / "hnsw-kb"  # an index with files of its own (a flat index is rebuilt from the vectors)
    assert main(["build-kb", "--items", str(items_jsonl), "--embed-model", str(clip_dir), "--out", str(kb_dir),
                 "--index", "hnsw", "--no-progress"]) == 0
    index = stored_file(kb_dir, "image")
    rewrite_stored(kb_dir, "image", index.read_bytes()[:40], reseal=True)  # written corrupt, checksum and all
    capsys.readouterr()
    assert main(["query", "--kb", str(kb_dir), "--image", str(items_jsonl.parent / "red.png")]) == 1
    line = _one_error_line(capsys)
    assert f"{index} is not a readable faiss index" in line and "rebuild" in line
    with pytest.raises(KBFormatError):  # --debug: the exception itself, with its traceback
        main(["--debug", "query", "--kb", str(kb_dir), "--image", str(items_jsonl.parent / "red.png")])


def test_manifest_encoder_not_an_object_in_info_is_exit_1(kb_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = kb_dir / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "encoder": "clip"}))
    capsys.readouterr()
    assert main(["info", "--kb", str(kb_dir)]) == 1
    assert "field 'encoder' must be a JSON object" in _one_error_line(capsys)


def test_device_cuda_on_cpu_only_torch_is_exit_2(
    items_jsonl: Path, clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["build-kb", "--items", str(items_jsonl), "--embed-model", str(clip_dir), "--out", str(tmp_path / "kb"), "--device", "cuda"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "--device cuda: this torch installation has no usable CUDA GPU" in line and "--device cpu" in line
    assert not (tmp_path / "kb").exists()


@pytest.mark.parametrize("case", ["file", "non-empty-folder"])
def test_build_kb_checks_out_before_embedding(items_jsonl: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    if case == "file":
        out.write_text("not a folder")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("precious")
    # A model path that does not exist: the --out error must come first, before any model loads.
    code = main(["build-kb", "--items", str(items_jsonl), "--embed-model", str(tmp_path / "no-model"), "--out", str(out)])
    assert code == 2
    line = _one_error_line(capsys)
    assert f"--out {out}:" in line
    assert ("not a folder" in line) if case == "file" else ("refusing to replace it" in line)
    if case == "non-empty-folder":
        assert (out / "notes.txt").read_text() == "precious"


def test_usage_errors_exit_2_and_data_errors_exit_1(items_jsonl: Path, clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Usage: an option value the command rejects (our CLIError, like argparse's own errors).
    assert main(["build-kb", "--items", str(items_jsonl), "--embed-model", str(clip_dir), "--out", str(tmp_path / "a"), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1, got 0" in _one_error_line(capsys)
    # Data: a malformed KB listing names its file and line.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "image_path": "x.png"}\n{"id": "y"}\n')
    assert main(["build-kb", "--items", str(bad), "--embed-model", str(clip_dir), "--out", str(tmp_path / "b")]) == 1
    assert f"{bad}:2: record has no 'image_path'" in _one_error_line(capsys)
    # Data: an image that is not an image.
    (tmp_path / "x.png").write_bytes(b"not a png")
    listing = tmp_path / "one.jsonl"
    listing.write_text('{"id": "x", "image_path": "x.png"}\n')
    assert main(["build-kb", "--items", str(listing), "--embed-model", str(clip_dir), "--out", str(tmp_path / "c"), "--no-progress"]) == 1
    assert f"item 'x': cannot read image {tmp_path / 'x.png'}" in _one_error_line(capsys)
