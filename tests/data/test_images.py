"""load_image and image_content_hash on PIL inputs: 8-bit, 16-bit and float windowing, hashes, errors.

DICOM decoding is tested in ``test_images_dicom.py``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llama_index_lvlm_retriever.data.images import (
    DEFAULT_WINDOW_PERCENTILES,
    ImageLoadError,
    image_content_hash,
    load_image,
)


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


def _old_hash(img: Image.Image) -> str:
    # The formula before windowing existed (size + RGB bytes); 8-bit hashes must not change.
    rgb = img.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}".encode() + rgb.tobytes()).hexdigest()


def _mode(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def _ramp_12bit() -> np.ndarray:
    return np.arange(4096, dtype=np.uint16).reshape(64, 64)  # (64, 64): every 12-bit value once


def _grey(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    assert img.mode == "RGB" and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0].astype(np.int64)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)),  # RGB
        lambda rng: Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8)),  # L
        lambda rng: Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8)).convert("P"),
        lambda rng: Image.fromarray(rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)),  # RGBA
    ],
    ids=["rgb", "grey", "palette", "rgba"],
)
def test_8bit_hash_is_unchanged(tmp_path: Path, make) -> None:
    img = make(np.random.default_rng(3))
    path = tmp_path / "x.png"
    img.save(path)
    with Image.open(path) as reread:
        expected = _old_hash(reread)
    assert image_content_hash(path) == image_content_hash(img) == expected
    assert image_content_hash(load_image(path)) == expected


def test_12bit_png_is_windowed_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "ramp16.png"
    Image.fromarray(_ramp_12bit()).save(path)
    assert _mode(path) == "I;16"
    grey = _grey(load_image(path))
    # Before: convert("RGB") clipped every value above 255, i.e. 94% of the ramp.
    assert (grey == 255).mean() < 0.01 and (grey == 0).mean() < 0.01
    assert (np.diff(grey.ravel()) >= 0).all() and grey.min() == 0 and grey.max() == 255
    # Min-max window: v -> round(v / 4095 * 255).
    minmax = _grey(load_image(path, window_percentiles=(0, 100)))
    np.testing.assert_array_equal(minmax, np.round(_ramp_12bit() / 4095 * 255))


def test_percentile_window_ignores_a_few_hot_pixels() -> None:
    values = _ramp_12bit().astype(np.float32)
    values[0, :8] = 60000.0  # 8 hot pixels (0.2%) that a min-max window would scale to
    low, high = np.percentile(values, DEFAULT_WINDOW_PERCENTILES)
    expected = np.round(np.clip((values - low) / (high - low), 0, 1) * 255)
    grey = _grey(load_image(Image.fromarray(values)))
    np.testing.assert_array_equal(grey, expected)
    assert grey[0, :8].tolist() == [255] * 8 and grey.mean() == pytest.approx(127.5, abs=2)
    # Min-max: the hot pixels take the top and the ramp is squashed into 0..17.
    assert _grey(load_image(Image.fromarray(values), window_percentiles=(0, 100)))[1:].max() <= 18


def test_float32_tiff_is_windowed(tmp_path: Path) -> None:
    values = np.linspace(-1.5, 2.5, 48 * 32, dtype=np.float32).reshape(32, 48)
    values[3, 3] = np.nan
    path = tmp_path / "f.tif"
    Image.fromarray(values).save(path)
    assert _mode(path) == "F"
    grey = _grey(load_image(path, window_percentiles=(0, 100)))
    finite = np.isfinite(values)
    expected = np.round((values - values[finite].min()) / (values[finite].max() - values[finite].min()) * 255)
    np.testing.assert_array_equal(grey[finite], expected[finite])
    assert grey[3, 3] == 0  # NaN (no data) renders black
    assert len(np.unique(grey)) > 200  # before: one value for the whole image


def test_16bit_png_and_tiff_hash_the_same_and_render_the_same(tmp_path: Path) -> None:
    ramp = Image.fromarray(_ramp_12bit())
    ramp.save(tmp_path / "a.png")
    # Big-endian in another container (not via convert("I;16B"): Pillow clips that to 255).
    Image.fromarray(_ramp_12bit().astype(">u2")).save(tmp_path / "a.tif")
    assert _mode(tmp_path / "a.tif") == "I;16B"
    assert image_content_hash(tmp_path / "a.png") == image_content_hash(tmp_path / "a.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "a.png")), np.asarray(load_image(tmp_path / "a.tif")))
    # The same values as a float TIFF are the same pixels too.
    Image.fromarray(_ramp_12bit().astype(np.float32)).save(tmp_path / "a_float.tif")
    assert image_content_hash(tmp_path / "a_float.tif") == image_content_hash(tmp_path / "a.png")


def test_different_16bit_images_with_the_same_rendering_hash_differently(tmp_path: Path) -> None:
    Image.fromarray(_ramp_12bit()).save(tmp_path / "ramp.png")
    Image.fromarray(_ramp_12bit() * 4 + 100).save(tmp_path / "scaled.png")  # 14 bits, offset
    render_a, render_b = load_image(tmp_path / "ramp.png"), load_image(tmp_path / "scaled.png")
    np.testing.assert_array_equal(np.asarray(render_a), np.asarray(render_b))
    assert image_content_hash(tmp_path / "ramp.png") != image_content_hash(tmp_path / "scaled.png")
    # The 8-bit rendering saved as PNG is a different (8-bit) image from its 16-bit source.
    render_a.save(tmp_path / "render.png")
    assert image_content_hash(tmp_path / "render.png") != image_content_hash(tmp_path / "ramp.png")


def test_hash_of_a_loaded_rendering_is_its_source_hash(tmp_path: Path) -> None:
    path = tmp_path / "ramp.png"
    Image.fromarray(_ramp_12bit()).save(path)
    rendering = load_image(path)
    assert image_content_hash(rendering) == image_content_hash(path)
    assert image_content_hash(rendering.copy()) == image_content_hash(path)
    # Once its pixels change it is hashed as the 8-bit image it now is.
    rendering.putpixel((0, 0), (1, 2, 3))
    assert image_content_hash(rendering) == _old_hash(rendering)


@pytest.mark.parametrize(
    "bad",
    [(50, 50), (-1, 99), (1, 101), (99.5,), "low-high", None],
)
def test_bad_window_percentiles(tmp_path: Path, bad: object) -> None:
    path = _png(tmp_path / "a.png")
    with pytest.raises(ValueError, match="window_percentiles must"):
        load_image(path, window_percentiles=bad)  # type: ignore[arg-type]


def test_decompression_bomb_becomes_image_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.png"
    Image.new("L", (30, 30)).save(path)
    # Pillow refuses images over 2 x MAX_IMAGE_PIXELS; 900 > 2 x 100 stands in for 20000 x 20000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageLoadError, match=r"huge\.png is too large .*MAX_IMAGE_PIXELS") as info:
        load_image(path)
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)
    with pytest.raises(ImageLoadError, match="huge.png"):
        image_content_hash(path)
