"""Image decoding for every entry point: paths, bytes, PIL images and DICOM files.

All model code goes through :func:`load_image`, so one place decides how a 16-bit, float or DICOM
image is windowed to 8 bits, how a greyscale image becomes RGB, and what error a broken file
gives. :func:`image_content_hash` identifies an image by its pixels *before* windowing.

An image file is size-checked (``os.stat``) before it is read: files over
:data:`MAX_IMAGE_FILE_BYTES` (512 MiB) raise :class:`ImageLoadError` naming the file instead of
filling memory, and any ``OSError`` of the read (no permission, I/O error) becomes an
``ImageLoadError`` naming the file (callers add the item or case).
"""

from __future__ import annotations

import io
import stat
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from llama_index_lvlm_retriever.data._pixels import (
    DecodedPixels,
    check_window_percentiles,
    rgb_hash,
    source_hash,
    window_to_uint8,
)
from llama_index_lvlm_retriever.errors import ImageLoadError

ImageInput = str | Path | bytes | io.BytesIO | Image.Image

MAX_IMAGE_FILE_BYTES = 512 * 1024 * 1024
"""Largest image file read (512 MiB; a 16-bit 8k x 8k TIFF is 128 MiB). Pass ``max_file_bytes=`` to
:func:`load_image`, or raise this module attribute, to read larger trusted files."""

DEFAULT_WINDOW_PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Default low/high percentiles of the window for images with more than 8 bits and no stored one."""

_DICOM_SUFFIXES = {".dcm", ".dicom"}
# PIL modes whose values do not fit in 8 bits: convert("RGB") would clip them (a 12-bit gradient
# becomes mostly 255, a float image one value), so they are windowed instead.
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# load_image records in a windowed image's ``info`` the hash of the pixels it came from, next to the
# hash of the 8-bit rendering itself: image_content_hash of that same rendering (a knowledge base
# hashes the image it already decoded) then gives the source's hash, not the rendering's.
_SOURCE_HASH_KEY = "lvlm_retriever.source_sha256"
_RENDER_HASH_KEY = "lvlm_retriever.render_sha256"


def _is_dicom_bytes(data: bytes) -> bool:
    # DICOM Part 10 files carry "DICM" after a 128-byte preamble.
    return len(data) >= 132 and data[128:132] == b"DICM"


def _decode_dicom(data: bytes, name: str, percentiles: tuple[float, float]) -> DecodedPixels:
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{name} is a DICOM file; reading it needs pydicom: "
            'pip install "llama-index-lvlm-retriever[dicom]"'
        ) from err
    from llama_index_lvlm_retriever.data._dicom import render_dicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        pixels = ds.pixel_array
    except Exception as err:
        raise ImageLoadError(
            f"cannot decode DICOM pixel data of {name}: {err}. "
            "Check that the file is complete and its transfer syntax is supported "
            "(compressed syntaxes may need pylibjpeg or gdcm)."
        ) from err
    try:
        return render_dicom(ds, pixels, percentiles)
    except (ValueError, NotImplementedError, AttributeError, KeyError, IndexError) as err:
        # pydicom's LUT/window helpers raise these for inconsistent display attributes.
        raise ImageLoadError(
            f"cannot apply the display transforms (modality LUT, VOI LUT/window or palette) of "
            f"DICOM {name}: {err}. Fix or remove the offending attribute, or skip the file."
        ) from err


def dicom_to_pil(
    ds: object,
    pixels: np.ndarray,
    *,
    window_percentiles: tuple[float, float] = DEFAULT_WINDOW_PERCENTILES,
) -> Image.Image:
    """Turn DICOM pixel data into an 8-bit RGB image with pydicom's display helpers.

    Takes the middle frame of a multi-frame image. Greyscale images go through
    ``apply_modality_lut`` (rescale or Modality LUT) and ``apply_voi_lut`` (the first VOI LUT or
    window stored in the file, including the SIGMOID function); the VOI output range is mapped onto
    0..255, and MONOCHROME1 is inverted. Without a stored VOI the percentile window of
    :func:`load_image` is used. PALETTE COLOR goes through ``apply_color_lut``. Colour with more
    than 8 bits keeps its high 8 bits.

    Args:
        ds: The pydicom ``Dataset``.
        pixels: ``ds.pixel_array`` as pydicom returns it by default (pydicom 3 already converts
            YBR_FULL and YBR_FULL_422 to RGB; with pydicom 2, uncompressed YBR is converted here).
        window_percentiles: Low/high percentiles of the window used when the file stores none.

    Returns:
        The RGB image.

    Raises:
        ValueError: ``window_percentiles`` is not ``0 <= low < high <= 100``, or a display
            attribute of the file is invalid (raised by pydicom).

    Example:
        >>> import pydicom  # doctest: +SKIP
        >>> ds = pydicom.dcmread("ct.dcm")  # doctest: +SKIP
        >>> dicom_to_pil(ds, ds.pixel_array).mode  # doctest: +SKIP
        'RGB'
    """
    from llama_index_lvlm_retriever.data._dicom import render_dicom

    return _tagged(render_dicom(ds, pixels, check_window_percentiles(window_percentiles)))


def _decode_pil(img: Image.Image, percentiles: tuple[float, float]) -> DecodedPixels:
    if img.mode in _HIGH_DEPTH_MODES:
        source = np.asarray(img)  # (h, w) uint16 / int32 / float32 in the file's byte order
        grey = Image.fromarray(window_to_uint8(source, percentiles))  # (h, w) uint8 -> mode L
        return DecodedPixels(grey.convert("RGB"), source)
    return DecodedPixels(img.convert("RGB"))


def _read_file(path: Path, label: str, max_bytes: int) -> bytes:
    """The bytes of an image file, size-checked first; every failure an ImageLoadError naming it."""
    where = label if label == str(path) else f"{label} ({path})"
    try:
        info = path.stat()
    except FileNotFoundError:
        info = None
    except OSError as err:  # no permission on a parent folder, a name too long, an I/O error
        raise ImageLoadError(f"cannot read image file {where}: {err}") from err
    if info is None or not stat.S_ISREG(info.st_mode):
        raise ImageLoadError(f"image file not found: {label}. Check the path (relative paths are resolved against the file that lists them).")
    if info.st_size > max_bytes:
        raise ImageLoadError(
            f"image file {where} is {info.st_size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit "
            "(MAX_IMAGE_FILE_BYTES); downscale it, skip it (build-kb --skip-bad), or for a trusted file pass "
            "load_image(..., max_file_bytes=) / raise llama_index_lvlm_retriever.data.images.MAX_IMAGE_FILE_BYTES"
        )
    try:
        return path.read_bytes()
    except OSError as err:
        raise ImageLoadError(f"cannot read image file {where}: {err}") from err


def _decode(
    image: ImageInput, name: str | None, percentiles: tuple[float, float], max_bytes: int | None = None
) -> DecodedPixels:
    if isinstance(image, Image.Image):
        return _decode_pil(image, percentiles)
    if isinstance(image, (str, Path)):
        path = Path(image)
        label = name or str(path)
        data = _read_file(path, label, MAX_IMAGE_FILE_BYTES if max_bytes is None else max_bytes)
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
        return _decode_dicom(data, label, percentiles)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _decode_pil(img, percentiles)
    except Image.DecompressionBombError as err:
        # Neither OSError nor ValueError: without this it escapes callers' skip_bad handling.
        raise ImageLoadError(
            f"image {label} is too large to open safely: {err} If the file is trusted, raise "
            "PIL.Image.MAX_IMAGE_PIXELS (None disables the check) before loading it; otherwise "
            "downscale it or skip it (build-kb --skip-bad)."
        ) from err
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        # Pillow's plugins report corrupt headers with any of these (e.g. "Truncated IHDR chunk").
        raise ImageLoadError(
            f"cannot read image {label}: {err}. The file is truncated or not an image; "
            "replace it or skip it (build-kb --skip-bad)."
        ) from err


def _tagged(decoded: DecodedPixels) -> Image.Image:
    rgb = decoded.rgb
    if decoded.source is not None:
        rgb.info[_SOURCE_HASH_KEY] = source_hash(decoded.source, decoded.interpretation)
        rgb.info[_RENDER_HASH_KEY] = rgb_hash(rgb)
    return rgb


def load_image(
    image: ImageInput,
    *,
    name: str | None = None,
    window_percentiles: tuple[float, float] = DEFAULT_WINDOW_PERCENTILES,
    max_file_bytes: int | None = None,
) -> Image.Image:
    """Decode any supported image input into an 8-bit RGB ``PIL.Image``.

    8-bit images (grey, RGB, palette, with or without alpha) are converted to RGB as they are.
    Images with more dynamic range are *windowed* before the 8-bit conversion, which would
    otherwise clip them:

    * 16-bit, 32-bit integer and float images (PIL modes ``I;16``, ``I;16B``, ``I``, ``F``; e.g.
      16-bit PNG/TIFF, float32 TIFF): the window runs from the ``low`` to the ``high`` percentile
      of the image's finite values (default 0.5 and 99.5, the percentiles nnU-Net clips CT at, so
      a few hot or dead pixels do not squash the contrast); values are mapped linearly onto
      0..255, below the window to 0, above it to 255, NaN to 0. ``(0, 100)`` is the plain min-max
      window. A constant image becomes black.
    * DICOM: the file's own modality LUT/rescale and first VOI LUT or window (see
      :func:`dicom_to_pil`); the percentile window only when the file stores none.

    Args:
        image: A file path, raw bytes, a ``BytesIO`` or a PIL image. DICOM files (by suffix or by
            their ``DICM`` marker) are decoded when pydicom is installed.
        name: How to call the image in error messages (defaults to the path).
        window_percentiles: ``(low, high)`` percentiles of the window for images with more than
            8 bits and no stored window; ``0 <= low < high <= 100``.
        max_file_bytes: Largest image file read (checked with ``os.stat`` before reading);
            ``None`` = :data:`MAX_IMAGE_FILE_BYTES` (512 MiB).

    Returns:
        A fully loaded RGB image. A windowed image remembers the hash of its source pixels in its
        ``info``, so :func:`image_content_hash` of it (unchanged) equals that of the file.

    Raises:
        ImageLoadError: The file is missing, unreadable (the ``OSError`` is in the message),
            larger than ``max_file_bytes``, truncated, not an image, too large for Pillow's
            decompression-bomb limit, or a DICOM whose display attributes are invalid; the message
            names it.
        ValueError: ``window_percentiles`` is out of range.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> ramp = Image.fromarray(np.arange(4096, dtype=np.uint16).reshape(64, 64))  # 12-bit
        >>> img = load_image(ramp, window_percentiles=(0, 100))
        >>> img.mode, img.getpixel((0, 0)), img.getpixel((63, 63))
        ('RGB', (0, 0, 0), (255, 255, 255))
    """
    return _tagged(_decode(image, name, check_window_percentiles(window_percentiles), max_file_bytes))


def image_content_hash(image: ImageInput) -> str:
    """SHA-256 of an image's pixels before windowing, so re-encoded copies hash the same.

    * 8-bit images: the hash of the size and the RGB bytes (grey replicated to RGB), as always;
      a PNG, a BMP and a lossless TIFF of the same picture hash the same.
    * Images with more than 8 bits (16-bit, float, DICOM): the hash of the decoded values as
      numbers (shape plus float64 values, so byte order or an integer vs float container does not
      matter) before any window, so two different images that window to the same 8-bit picture
      hash differently. A DICOM's values are those after its modality LUT/rescale (or palette)
      of the frame :func:`load_image` shows; MONOCHROME1 is part of the hash. A DICOM whose values
      are plain 8-bit grey or RGB hashes like a PNG of those pixels.
    * A PIL image returned by :func:`load_image`, unchanged: the hash of its source.

    Args:
        image: Anything :func:`load_image` accepts.

    Returns:
        The hex digest.

    Raises:
        ImageLoadError: The image cannot be decoded (see :func:`load_image`).

    Example:
        >>> from PIL import Image
        >>> a, b = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), (255, 0, 0))
        >>> image_content_hash(a) == image_content_hash(b)
        True
    """
    # The window does not enter the hash; min-max is the cheapest one to render.
    decoded = _decode(image, None, (0.0, 100.0))
    if decoded.source is not None:
        return source_hash(decoded.source, decoded.interpretation)
    digest = rgb_hash(decoded.rgb)
    # Only in-memory images are trusted to carry our tags (a file's text chunks land in info too).
    if isinstance(image, Image.Image) and image.info.get(_RENDER_HASH_KEY) == digest:
        return str(image.info.get(_SOURCE_HASH_KEY, digest))
    return digest
