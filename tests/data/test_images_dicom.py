"""DICOM decoding in load_image, checked against renderings built here from pydicom's own helpers.

Files come from pydicom's bundled test data and the pydicom-data package.
"""

from __future__ import annotations

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

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import (  # noqa: E402
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
)


def _file(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is in neither pydicom's test files nor pydicom-data")
    return str(path)


def _dataset(name: str) -> pydicom.Dataset:
    """The dataset with its pixels decoded, or a skip naming the missing decoder plugin."""
    ds = pydicom.dcmread(_file(name))
    try:
        ds.pixel_array  # noqa: B018 - decodes now, so a missing plugin skips instead of failing
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(
            f"no pydicom decoder for {name} ({ds.file_meta.TransferSyntaxUID.name}); install "
            f"pylibjpeg + pylibjpeg-libjpeg or pillow: {err}"
        )
    return ds


def _to_8bit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.round(np.clip((values.astype(np.float64) - low) / (high - low), 0, 1) * 255)


def _grey(path: str | Path) -> np.ndarray:
    arr = np.asarray(load_image(path)).astype(np.float64)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0]


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference in grey levels."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [
        ("SC_ybr_full_uncompressed.dcm", 1.0),
        ("SC_ybr_full_422_uncompressed.dcm", 1.0),
        ("SC_rgb_jpeg_dcmtk.dcm", 1.0),  # JPEG baseline, YBR_FULL
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", 4.0),  # JPEG baseline, YBR_FULL_422: lossy chroma
    ],
)
def test_ybr_is_converted_to_rgb_once(name: str, tolerance: float) -> None:
    ds = _dataset(name)
    assert ds.PhotometricInterpretation.startswith("YBR")
    img = np.asarray(load_image(_file(name)))
    # pydicom 3's pixel_array is already RGB; converting again shifted colours by ~96 levels.
    np.testing.assert_array_equal(img, ds.pixel_array)
    assert _mad(img, np.asarray(load_image(_file("SC_rgb.dcm")))) < tolerance


def test_rgb_ultrasound_dicom() -> None:
    img = load_image(_file("US1_UNCR.dcm"))
    assert img.mode == "RGB" and img.size == (640, 480)
    np.testing.assert_array_equal(np.asarray(img), pydicom.dcmread(_file("US1_UNCR.dcm")).pixel_array)


def test_16bit_rgb_keeps_its_high_byte() -> None:
    ds = _dataset("SC_rgb_16bit.dcm")
    expected = ds.pixel_array >> 8  # BitsStored 16
    np.testing.assert_array_equal(np.asarray(load_image(_file("SC_rgb_16bit.dcm"))), expected)


def test_palette_color_goes_through_the_color_lut() -> None:
    ds = _dataset("OBXXXX1A.dcm")
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    colours = apply_color_lut(ds.pixel_array, ds)  # (600, 800, 3) uint16: 16-bit LUT entries
    expected = colours[..., :3] >> 8
    img = np.asarray(load_image(_file("OBXXXX1A.dcm")))
    assert _mad(img, expected) < 1.0
    assert not (img[..., 0] == img[..., 2]).all()  # colour, not the grey palette indices of before


def test_ct_rescale_then_default_percentile_window() -> None:
    ds = _dataset("CT_small.dcm")
    hu = apply_modality_lut(ds.pixel_array, ds)  # slope 1, intercept -1024
    # No VOI in this file: the 0.5/99.5 percentile window of the HU values.
    low, high = np.percentile(hu, DEFAULT_WINDOW_PERCENTILES)
    assert _mad(_grey(_file("CT_small.dcm")), _to_8bit(hu, low, high)) < 1.0
    minmax = np.asarray(load_image(_file("CT_small.dcm"), window_percentiles=(0, 100)))[..., 0]
    assert _mad(minmax, _to_8bit(hu, hu.min(), hu.max())) < 1.0


def _voi_expected(ds: pydicom.Dataset) -> np.ndarray:
    """pydicom's windowing maps onto the stored-bits range; that range becomes 0..255."""
    voi = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    bits = ds.BitsStored
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    return _to_8bit(voi, low, high)


def test_mr_uses_its_voi_window() -> None:
    ds = _dataset("MR_small.dcm")
    assert (ds.WindowCenter, ds.WindowWidth) == (600, 1600)
    assert _mad(_grey(_file("MR_small.dcm")), _voi_expected(ds)) < 1.0


def test_sigmoid_voi_function(tmp_path: Path) -> None:
    ds = _dataset("MR_small.dcm")
    ds.VOILUTFunction = "SIGMOID"
    path = tmp_path / "sigmoid.dcm"
    ds.save_as(path)
    grey = _grey(path)
    assert _mad(grey, _voi_expected(ds)) < 1.0
    assert _mad(grey, _grey(_file("MR_small.dcm"))) > 1.0  # not the LINEAR window


def test_first_of_several_windows() -> None:
    name = "MR-SIEMENS-DICOM-WithOverlays.dcm"
    ds = _dataset(name)
    assert len(ds.WindowCenter) == 2
    assert _mad(_grey(_file(name)), _voi_expected(ds)) < 1.0


def test_voi_lut_sequence() -> None:
    ds = _dataset("vlut_04.dcm")
    lut_out = apply_voi_lut(ds.pixel_array, ds)  # uint16 LUT entries spanning 0..65535
    assert _mad(_grey(_file("vlut_04.dcm")), _to_8bit(lut_out, 0, 65535)) < 1.0


def test_multiframe_shows_the_middle_frame() -> None:
    ds = _dataset("emri_small.dcm")
    frames = ds.pixel_array  # (10, 64, 64)
    middle = frames[frames.shape[0] // 2].astype(np.float64)
    low, high = np.percentile(middle, DEFAULT_WINDOW_PERCENTILES)
    assert _mad(_grey(_file("emri_small.dcm")), _to_8bit(middle, low, high)) < 1.0


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_file("MR_small.dcm"))
    normal = np.asarray(load_image(_file("MR_small.dcm")))
    ds.PhotometricInterpretation = "MONOCHROME1"
    out = tmp_path / "mono1.dcm"
    ds.save_as(out)
    inverted = np.asarray(load_image(out)).astype(int)
    np.testing.assert_array_equal(inverted, 255 - normal.astype(int))
    # Same stored values, opposite meaning: a different image.
    assert image_content_hash(out) != image_content_hash(_file("MR_small.dcm"))


def test_hash_is_of_the_values_before_windowing(tmp_path: Path) -> None:
    ct = _file("CT_small.dcm")
    ds = pydicom.dcmread(ct)
    ds.WindowCenter, ds.WindowWidth = 40, 400  # another window, same pixel data
    windowed = tmp_path / "windowed.dcm"
    ds.save_as(windowed)
    assert _mad(_grey(windowed), _grey(ct)) > 1.0
    assert image_content_hash(windowed) == image_content_hash(ct)
    # What a knowledge base hashes (the decoded image) is the file's hash.
    assert image_content_hash(load_image(ct)) == image_content_hash(ct)
    # The 8-bit rendering is another image; 8-bit RGB DICOM pixels hash like a PNG of them.
    load_image(ct).save(tmp_path / "ct.png")
    assert image_content_hash(tmp_path / "ct.png") != image_content_hash(ct)
    us = _file("US1_UNCR.dcm")
    Image.fromarray(pydicom.dcmread(us).pixel_array).save(tmp_path / "us.png")
    assert image_content_hash(tmp_path / "us.png") == image_content_hash(us)


def test_invalid_window_names_the_file(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_file("MR_small.dcm"))
    ds.WindowWidth = 0  # LINEAR needs a width >= 1
    path = tmp_path / "zero_width.dcm"
    ds.save_as(path)
    with pytest.raises(ImageLoadError, match=r"display transforms .*zero_width\.dcm"):
        load_image(path)
