"""cases_from_folder: unlabelled cases from an image folder or a DICOM directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from llama_index_lvlm_retriever.data.folders import cases_from_folder


def _dicom_like(path: Path) -> None:
    # The Part 10 layout is all the scan looks at: a 128-byte preamble, then b"DICM".
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)


def test_image_folder(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".cache").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "z.png")
    Image.new("L", (4, 4)).save(tmp_path / "b" / "a.JPG")
    Image.new("L", (4, 4)).save(tmp_path / ".cache" / "hidden.png")
    (tmp_path / "notes.txt").write_text("x")
    cases = cases_from_folder(tmp_path, question="Is it malignant?")
    assert [c.id for c in cases] == ["b/a.JPG", "z.png"]
    assert all(Path(c.image_path).is_absolute() and c.question == "Is it malignant?" and c.labels == () for c in cases)


def test_dicom_directory(tmp_path: Path) -> None:
    (tmp_path / "series").mkdir()
    _dicom_like(tmp_path / "series" / "IM0001")  # no suffix: found by its marker
    _dicom_like(tmp_path / "b.dcm")
    _dicom_like(tmp_path / "DICOMDIR")  # the directory index is not an image
    (tmp_path / "readme.txt").write_text("x" * 200)
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.png")
    assert [c.id for c in cases_from_folder(tmp_path, "dicom")] == ["b.dcm", "series/IM0001"]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image folder not found: .*nowhere"):
        cases_from_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"no images \(.png, .*\) found below"):
        cases_from_folder(tmp_path)
    with pytest.raises(ValueError, match=r"no DICOM files \(.dcm/.dicom or the DICM marker\) found below"):
        cases_from_folder(tmp_path, "dicom")
    with pytest.raises(ValueError, match="kind must be 'images' or 'dicom', got 'video'"):
        cases_from_folder(tmp_path, "video")  # type: ignore[arg-type]
