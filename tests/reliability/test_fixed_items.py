"""Issue 12 "Found" items fixed earlier, reproduced here so this folder covers every item.

Deeper checks of each live next to the code (tests/data/test_images*.py, test_loaders.py); these
are the issue's own reproductions, one per item.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llama_index_lvlm_retriever.data.cases import load_cases_jsonl
from llama_index_lvlm_retriever.data.images import image_content_hash, load_image
from llama_index_lvlm_retriever.data.loaders import load_kb_csv, load_kb_jsonl
from llama_index_lvlm_retriever.errors import ImageLoadError, InputFormatError


def _png16(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buf, format="PNG")  # mode I;16
    return buf.getvalue()


def test_16bit_images_are_windowed_not_clipped() -> None:
    # A 12-bit gradient 0..4095: convert("RGB") used to turn 94% of it into 255.
    gradient = np.tile(np.arange(4096, dtype=np.uint16), (8, 1))  # (8, 4096)
    grey = np.asarray(load_image(_png16(gradient)))[..., 0]
    assert (grey == 255).mean() < 0.02
    assert len(np.unique(grey)) > 200  # the ramp survives as a ramp
    # Two different 16-bit images whose 8-bit clipping was identical now hash differently.
    assert image_content_hash(_png16(gradient)) != image_content_hash(_png16(gradient // 2 + 300))


def test_float_tiff_is_windowed_not_one_value(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)).save(path)  # mode F
    assert len(np.unique(np.asarray(load_image(path)))) > 200


def test_ybr_and_palette_dicom_decode_like_pydicom() -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    ybr, rgb, palette = (get_testdata_file(n) for n in ("SC_ybr_full_uncompressed.dcm", "SC_rgb.dcm", "OBXXXX1A.dcm"))
    if None in (ybr, rgb, palette):
        pytest.skip("pydicom-data files are not installed")
    # Converted twice, YBR differed from the RGB original by ~96 grey levels on average.
    diff = np.abs(np.asarray(load_image(ybr), np.float64) - np.asarray(load_image(rgb), np.float64)).mean()
    assert diff < 1.0
    ds = pydicom.dcmread(palette)
    expected = apply_color_lut(ds.pixel_array, ds)[..., :3] >> 8  # 16-bit LUT entries -> 8 bits
    img = np.asarray(load_image(palette))
    assert np.abs(img.astype(np.float64) - expected).mean() < 1.0
    assert not (img[..., 0] == img[..., 2]).all()  # colour, not grey palette indices


def test_decompression_bomb_is_an_image_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (400, 400)).save(path)
    # Pillow raises DecompressionBombError above 2x MAX_IMAGE_PIXELS; lower it instead of writing 20000x20000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 // 2)
    with pytest.raises(ImageLoadError, match=rf"image {path} is too large to open safely.*--skip-bad"):
        load_image(path)


def test_non_utf8_and_bom_files(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    bom = b"\xef\xbb\xbf"
    (tmp_path / "kb.jsonl").write_bytes(bom + b'{"id": "a", "image_path": "a.png", "text": "ok"}\n')
    (tmp_path / "kb.csv").write_bytes(bom + b"image,text\na.png,ok\n")
    (tmp_path / "cases.jsonl").write_bytes(bom + b'{"id": "c", "image_path": "a.png", "answers": ["x"]}\n')
    # A BOM is accepted alike by every loader (one of them used to reject it).
    assert load_kb_jsonl(tmp_path / "kb.jsonl")[0].text == "ok"
    assert load_kb_csv(tmp_path / "kb.csv", tmp_path)[0].text == "ok"
    assert load_cases_jsonl(tmp_path / "cases.jsonl")[0].id == "c"
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"id": "a", "image_path": "a.png", "text": "Befund: Läsion"}\n'.encode("latin-1"))
    with pytest.raises(InputFormatError, match=rf"{latin1}:1: not valid UTF-8 \(byte 0xe4\).*Save it as UTF-8"):
        load_kb_jsonl(latin1)
