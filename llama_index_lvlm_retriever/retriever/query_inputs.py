"""The retriever's query inputs: checks, conversions and frozen embeddings.

Images, questions and per-query exclusions are checked (every message names the argument and what
to pass instead); query images and questions are embedded, in batches, by the knowledge base's own
encoder, and processed into ``pixel_values`` for image-input heads.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

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


def embed_query_images(model: Any, images: Sequence[ImageInput], show_progress: bool = False) -> np.ndarray:
    """Frozen image embeddings ``(n, dim)`` of the query images, in one batch (not normalised)."""
    embed_images = getattr(model, "embed_images", None)
    if callable(embed_images):
        vectors = embed_images(list(images))
    else:
        vectors = model.get_image_embedding_batch([embeddable(img) for img in images], show_progress=show_progress)
    return np.asarray(vectors, dtype=np.float32).reshape(len(images), -1)  # (n, dim)


def embed_query_texts(model: Any, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
    """Frozen text embeddings ``(m, dim)`` of questions (not normalised).

    Questions go through the same path as the KB's captions (CLIP-family dual encoders embed queries
    and documents alike), so they land in the caption index's space.
    """
    embed_texts = getattr(model, "embed_texts", None)
    if callable(embed_texts):
        vectors = embed_texts(list(texts))
    else:
        vectors = model.get_text_embedding_batch(list(texts), show_progress=show_progress)
    return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)  # (m, dim)


def query_pixel_values(model: Any, name: str, images: Sequence[ImageInput] | None, n: int) -> Any:
    """The query images processed by the knowledge base's embedding model, ``(n, C, H, W)``.

    Raises:
        ValueError: Not one image per query, or an embedding model without ``processor.image_processor``.
    """
    if images is None or len(images) != n:
        got = "none" if images is None else str(len(images))
        raise ValueError(
            f"the {name} head reads query images (needs_image=True) but search_heads got {got} images "
            f"for {n} query embeddings; pass images= with one image per query"
        )
    processor = getattr(getattr(model, "processor", None), "image_processor", None)
    if processor is None:
        raise ValueError(
            f"the {name} head reads query images but the knowledge base's embedding model "
            f"{type(model).__name__} has no processor.image_processor; use a CLIPEmbedding"
        )
    return processor(images=[load_image(img) for img in images], return_tensors="pt")["pixel_values"]


__all__ = [
    "check_questions",
    "embed_query_images",
    "embed_query_texts",
    "embeddable",
    "per_query",
    "query_pixel_values",
    "unit_rows",
]
