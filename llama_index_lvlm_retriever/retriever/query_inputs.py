"""Checks and conversions of the retriever's query inputs: images, questions, per-query exclusions.

Every message names the argument and what to pass instead.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from llama_index_lvlm_retriever.data.images import ImageInput, load_image

_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


def check_questions(questions: Sequence[str] | None, n: int) -> None:
    if questions is None:
        return
    if isinstance(questions, str):
        raise TypeError("questions must be a sequence with one question per image, got a single str")
    if len(questions) != n:
        raise ValueError(f"got {len(questions)} questions for {n} query images; pass one per image (or None)")


def per_query(
    name: str, values: Sequence[Collection[str]] | None, n: int
) -> list[Collection[str]] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must hold one collection per query (e.g. [{{'kb-1'}}, set()]), got a str")
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} queries; pass one collection per query")
    for entry in values:
        if isinstance(entry, (str, bytes)):
            raise ValueError(
                f"{name} must hold one collection per query (e.g. [{{'kb-1'}}, set()]), "
                f"got the string {entry!r} as an entry; wrap it: [{{{entry!r}}}]"
            )
    return values


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)  # (n, 1)
    # eps keeps an all-zero row at zero instead of NaN.
    return x / np.maximum(norms, 1e-12)


def embeddable(image: ImageInput) -> str | io.BytesIO:
    """Turn any supported image input into what ``MultiModalEmbedding`` accepts (path or BytesIO)."""
    if isinstance(image, (str, Path)):
        if Path(image).suffix.lower() not in _DICOM_SUFFIXES:  # PIL's probe warns on DICOM files
            try:
                with Image.open(image):
                    return str(image)
            except (UnidentifiedImageError, OSError):
                pass
        # Not PIL-readable (e.g. DICOM) or missing: decode it ourselves, which also gives the
        # clear ImageLoadError for a missing or broken file.
        image = load_image(image)
    if isinstance(image, (bytes, bytearray)):
        return io.BytesIO(bytes(image))
    if isinstance(image, io.BytesIO):
        return io.BytesIO(image.getvalue())  # a fresh stream: the caller's position is untouched
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        buffer.seek(0)
        return buffer
    raise TypeError(f"unsupported query image of type {type(image).__name__}; pass a path, bytes, BytesIO or PIL image")


__all__ = ["check_questions", "embeddable", "per_query", "unit_rows"]
