from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llama_index_lvlm_retriever.data.images import ImageLoadError, image_content_hash, load_image

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402


def _png(path: Path, colour: tuple[int, int, int] = (10, 200, 30)) -> Path:
    Image.new("RGB", (8, 6), colour).save(path)
    return path


def test_all_input_kinds_decode_to_the_same_rgb(tmp_path: Path) -> None:
    path = _png(tmp_path / "a.png")
    data = path.read_bytes()
    images = [load_image(path), load_image(str(path)), load_image(data), load_image(io.BytesIO(data)), load_image(Image.open(path))]
    for img in images:
        assert img.mode == "RGB" and img.size == (8, 6)
        assert img.getpixel((3, 3)) == (10, 200, 30)


def test_grey_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    Image.new("L", (4, 4), 77).save(path)
    assert load_image(path).getpixel((0, 0)) == (77, 77, 77)


def test_ct_dicom_rescale_and_minmax_window() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * 1.0 - 1024.0  # slope 1, intercept -1024
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (128, 128)
    arr = np.asarray(img)[..., 0].astype(np.float64)
    # No VOI window in this file: min-max scaling of the HU values to 0..255.
    expected = np.round((hu - hu.min()) / (hu.max() - hu.min()) * 255.0)
    np.testing.assert_array_equal(arr, expected)


def test_mr_dicom_uses_its_voi_window() -> None:
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float64)
    lo, hi = 600 - 1600 / 2, 600 + 1600 / 2  # WindowCenter 600, WindowWidth 1600
    expected = np.round(np.clip((raw - lo) / (hi - lo), 0, 1) * 255.0)
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 1], expected)


def test_rgb_ultrasound_dicom() -> None:
    img = load_image(get_testdata_file("US1_UNCR.dcm"))
    assert img.mode == "RGB" and img.size == (640, 480)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    normal = np.asarray(load_image(get_testdata_file("MR_small.dcm")))
    ds.PhotometricInterpretation = "MONOCHROME1"
    out = tmp_path / "mono1.dcm"
    ds.save_as(out)
    inverted = np.asarray(load_image(out)).astype(int)
    # Equal up to rounding of exact .5 values (round-half-even on both sides).
    assert np.abs(inverted - (255 - normal.astype(int))).max() <= 1
    assert inverted.mean() == pytest.approx(255 - normal.mean(), abs=0.5)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "image file not found"),
        (b"", "image file is empty"),
        (b"this is text, not pixels", "cannot read image .*bad.png"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=match):
        load_image(path)


def test_truncated_png(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_image(cut)


def test_content_hash_ignores_encoding(tmp_path: Path) -> None:
    png = _png(tmp_path / "a.png")
    Image.open(png).save(tmp_path / "a.bmp")
    other = _png(tmp_path / "b.png", (10, 200, 31))
    assert image_content_hash(png) == image_content_hash(tmp_path / "a.bmp")
    assert image_content_hash(png) != image_content_hash(other)
