"""DICOM display pipeline on pydicom's helpers (imported only when a DICOM is decoded).

Greyscale: ``apply_modality_lut`` -> ``apply_voi_lut`` -> output range onto 0..255 -> MONOCHROME1
inverted. PALETTE COLOR: ``apply_color_lut``. RGB/YBR: pydicom 3 already returns RGB.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from llama_index_lvlm_retriever.data._pixels import DecodedPixels, scale_to_uint8, window_to_uint8

# Converted to RGB by pydicom 3's pixel_array (Dataset.pixel_array, "versionchanged 3.0"); other
# YBR flavours (YBR_ICT/YBR_RCT of JPEG 2000) are converted by the decoders themselves.
_YBR_CONVERTED_BY_PYDICOM3 = {"YBR_FULL", "YBR_FULL_422"}
# Far enough outside a window that LINEAR clips to its output ends and SIGMOID is within e^-200 of them.
_WINDOW_PROBE_WIDTHS = 50.0


def render_dicom(ds: Any, pixels: np.ndarray, percentiles: tuple[float, float]) -> DecodedPixels:
    """Render one DICOM image (the middle frame) to 8-bit RGB; see ``dicom_to_pil``."""
    arr = np.asarray(pixels)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if arr.ndim == (3 if samples == 1 else 4):
        arr = arr[arr.shape[0] // 2]  # (frames, h, w[, 3]) -> (h, w[, 3]): the middle frame
    if samples == 3:
        rgb = _as_rgb(ds, arr, photometric)
        return DecodedPixels(Image.fromarray(_high_byte(rgb, int(getattr(ds, "BitsStored", 8) or 8))), rgb)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        colours = np.asarray(apply_color_lut(arr, ds))[..., :3]  # (h, w, 3 or 4) -> (h, w, 3): no alpha
        bits = 8 if colours.dtype == np.uint8 else 16  # apply_color_lut returns uint8 or uint16 entries
        return DecodedPixels(Image.fromarray(_high_byte(colours, bits)), colours)
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(arr, ds))  # (h, w): rescaled or Modality LUT values
    grey = _voi_to_uint8(ds, values, percentiles)
    interpretation = ""
    if photometric == "MONOCHROME1":
        grey = 255 - grey  # MONOCHROME1 stores white as the minimum
        interpretation = photometric
    return DecodedPixels(Image.fromarray(grey).convert("RGB"), values, interpretation)


def _as_rgb(ds: Any, arr: np.ndarray, photometric: str) -> np.ndarray:
    if photometric not in _YBR_CONVERTED_BY_PYDICOM3 or _pixel_array_is_rgb(ds):
        return arr
    from pydicom.pixels import convert_color_space

    return np.asarray(convert_color_space(arr, photometric, "RGB"))


def _pixel_array_is_rgb(ds: Any) -> bool:
    """Whether ``pixel_array`` already converted YBR_FULL(_422) to RGB (never convert twice)."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        return True
    # pydicom 2: compressed syntaxes are converted by their decoder (Pillow's JPEG), uncompressed
    # YBR is returned as stored.
    file_meta = getattr(ds, "file_meta", None)
    syntax = getattr(file_meta, "TransferSyntaxUID", None)
    return bool(getattr(syntax, "is_compressed", False))


def _high_byte(arr: np.ndarray, bits: int) -> np.ndarray:
    # Colour keeps its high 8 bits: exact for 8-bit LUT entries stored as 16 bits (v * 256).
    if arr.dtype == np.uint8 or bits <= 8:
        return np.clip(arr, 0, 255).astype(np.uint8)
    return (np.clip(arr, 0, 2**bits - 1).astype(np.uint32) >> (bits - 8)).astype(np.uint8)


def _voi_probe(ds: Any) -> tuple[np.ndarray, bool] | None:
    """Inputs whose VOI output spans its range, and whether a VOI LUT (not a window) applies.

    Mirrors the dispatch of ``pydicom.pixels.apply_voi_lut`` (a valid LUT is preferred).
    """
    sequence = ds.get("VOILUTSequence")
    if sequence:
        item = sequence[0]
        if item.get("LUTDescriptor") is not None and item.get("LUTData") is not None:
            entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
            return np.arange(first, first + entries), True  # every input the LUT maps
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        center, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
        reach = _WINDOW_PROBE_WIDTHS * abs(width) + 1.0
        return np.array([center - reach, center + reach]), False
    return None


def _voi_to_uint8(ds: Any, values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    from pydicom.pixels import apply_voi_lut

    probe = _voi_probe(ds)
    if probe is None:
        return window_to_uint8(values, percentiles)  # no stored VOI: the documented default window
    inputs, is_lut = probe
    if is_lut and not np.issubdtype(values.dtype, np.integer):
        # A LUT is indexed by integers; a rescale with slope 1 gives integral float64 values.
        values = np.rint(values).astype(np.int64)
    out = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
    ends = np.asarray(apply_voi_lut(inputs, ds, index=0), dtype=np.float64)
    # The VOI output range (LUT entries, or the stored-bits range pydicom windows onto) -> 0..255.
    return scale_to_uint8(out, float(ends.min()), float(ends.max()))


def _first_value(value: object) -> float:
    # Multi-valued windows (pydicom MultiValue): the first is the one apply_voi_lut uses (index 0).
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]
