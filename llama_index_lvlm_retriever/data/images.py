"""Image decoding for every entry point: paths, bytes, PIL images and DICOM files.

All model code goes through :func:`load_image`, so one place decides how a DICOM is windowed,
how a greyscale image becomes RGB, and what error a broken file gives.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageInput = str | Path | bytes | io.BytesIO | Image.Image

_DICOM_SUFFIXES = {".dcm", ".dicom"}


class ImageLoadError(ValueError):
    """An image could not be read; the message names the file and what to do."""


def _is_dicom_bytes(data: bytes) -> bool:
    # DICOM Part 10 files carry "DICM" after a 128-byte preamble.
    return len(data) >= 132 and data[128:132] == b"DICM"


def _decode_dicom(data: bytes, name: str) -> Image.Image:
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{name} is a DICOM file; reading it needs pydicom: "
            'pip install "llama-index-lvlm-retriever[dicom]"'
        ) from err
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        pixels = ds.pixel_array
    except Exception as err:
        raise ImageLoadError(
            f"cannot decode DICOM pixel data of {name}: {err}. "
            "Check that the file is complete and its transfer syntax is supported "
            "(compressed syntaxes may need pylibjpeg or gdcm)."
        ) from err
    return dicom_to_pil(ds, pixels)


def dicom_to_pil(ds: object, pixels: np.ndarray) -> Image.Image:
    """Turn DICOM pixel data into an 8-bit RGB image.

    Applies the modality rescale (slope/intercept), then the first VOI window stored in the file
    (or the min-max range when there is none), inverts MONOCHROME1, and takes the middle frame of a
    multi-frame volume.
    """
    arr = np.asarray(pixels)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples == 1 and arr.ndim == 3:
        arr = arr[arr.shape[0] // 2]  # (frames, h, w) -> (h, w): the middle slice
    elif samples == 3 and arr.ndim == 4:
        arr = arr[arr.shape[0] // 2]  # (frames, h, w, 3) -> (h, w, 3)
    if samples == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = arr.astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), mode="RGB")

    arr = arr.astype(np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    arr = arr * slope + intercept
    center = getattr(ds, "WindowCenter", None)
    width = getattr(ds, "WindowWidth", None)
    if center is not None and width is not None:
        c, w = _first_value(center), _first_value(width)
        lo, hi = c - w / 2.0, c + w / 2.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
    scaled = np.clip((arr - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * 255.0
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled  # MONOCHROME1 stores white as the minimum
    grey = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    return grey.convert("RGB")


def _first_value(value: object) -> float:
    # Multi-valued windows (pydicom MultiValue): the first is the one the modality recommends.
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def load_image(image: ImageInput, *, name: str | None = None) -> Image.Image:
    """Decode any supported image input into an RGB ``PIL.Image``.

    Args:
        image: A file path, raw bytes, a ``BytesIO`` or a PIL image. DICOM files (by suffix or by
            their ``DICM`` marker) are decoded when pydicom is installed.
        name: How to call the image in error messages (defaults to the path).

    Returns:
        A fully loaded RGB image.

    Raises:
        ImageLoadError: The file is missing, truncated or not an image; the message names it.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        path = Path(image)
        label = name or str(path)
        if not path.is_file():
            raise ImageLoadError(f"image file not found: {label}. Check the path (relative paths are resolved against the file that lists them).")
        data = path.read_bytes()
        is_dicom = path.suffix.lower() in _DICOM_SUFFIXES or _is_dicom_bytes(data)
    elif isinstance(image, (bytes, bytearray, io.BytesIO)):
        data = image.getvalue() if isinstance(image, io.BytesIO) else bytes(image)
        label = name or "<image bytes>"
        is_dicom = _is_dicom_bytes(data)
    else:
        raise TypeError(f"unsupported image input of type {type(image).__name__}; pass a path, bytes, BytesIO or PIL image")
    if not data:
        raise ImageLoadError(f"image file is empty: {label}")
    if is_dicom:
        return _decode_dicom(data, label)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageLoadError(
            f"cannot read image {label}: {err}. The file is truncated or not an image; "
            "replace it or skip it (build-kb --skip-bad)."
        ) from err


def image_content_hash(image: ImageInput) -> str:
    """SHA-256 of the decoded pixels (size + RGB bytes), so re-encoded copies hash the same."""
    img = load_image(image)
    h = hashlib.sha256()
    h.update(f"{img.width}x{img.height}".encode())
    h.update(img.tobytes())
    return h.hexdigest()
