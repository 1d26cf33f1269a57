"""Pixel helpers shared by the PIL and DICOM decoders: windowing to 8 bits and content hashes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class DecodedPixels:
    """An 8-bit RGB rendering and, when it was windowed, the values it was windowed from.

    Args:
        rgb: The 8-bit RGB image the models see.
        source: The decoded values before windowing; ``None`` when ``rgb`` holds the original
            8-bit pixels.
        interpretation: Hashed with ``source`` where it changes what the values mean
            (``"MONOCHROME1"``: high values are dark).
    """

    rgb: Image.Image
    source: np.ndarray | None = None
    interpretation: str = ""


def check_window_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    """Validate ``(low, high)`` window percentiles and return them as floats."""
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"window_percentiles must be two numbers (low, high), got {percentiles!r}"
        ) from err
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(
            f"window_percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}; "
            "(0, 100) is the min-max window"
        )
    return low, high


def scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low..high`` linearly onto 0..255 (clipped; NaN -> 0; ``high <= low`` -> all 0)."""
    data = np.asarray(values, dtype=np.float64)
    if not high > low:
        return np.zeros(data.shape, np.uint8)
    with np.errstate(invalid="ignore"):  # inf - inf when the data hold both infinities
        scaled = (data - low) / (high - low)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def window_to_uint8(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Window ``values`` from their ``low`` to ``high`` percentile (of finite values) to uint8."""
    data = np.asarray(values, dtype=np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape, np.uint8)
    low, high = np.percentile(finite, percentiles)  # (0, 100) gives exactly min and max
    return scale_to_uint8(data, float(low), float(high))


def rgb_hash(img: Image.Image) -> str:
    """SHA-256 of ``"<w>x<h>"`` and the RGB bytes: the hash of every 8-bit image.

    The formula is fixed: knowledge bases store these hashes and the demo splits data by them.
    """
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    h = hashlib.sha256()
    h.update(f"{rgb.width}x{rgb.height}".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def source_hash(source: np.ndarray, interpretation: str = "") -> str:
    """SHA-256 of decoded values before windowing (see ``image_content_hash``)."""
    arr = np.asarray(source)
    plain_8bit = arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3))
    if plain_8bit and not interpretation:
        # (h, w) -> mode L, (h, w, 3) -> RGB: the same pixels hash as they would in a PNG.
        return rgb_hash(Image.fromarray(arr))
    # Values as little-endian float64 (exact for every integer type PIL and DICOM produce), so
    # uint16 vs int32 vs float32 containers and byte order do not change the hash; + 0.0 folds
    # -0.0 into 0.0.
    values = np.ascontiguousarray(arr, dtype="<f8") + 0.0
    h = hashlib.sha256()
    h.update(f"values{tuple(arr.shape)}{interpretation}".encode())
    h.update(values.tobytes())
    return h.hexdigest()
