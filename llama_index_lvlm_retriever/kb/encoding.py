"""Embedding helpers of the knowledge base: batched image/text embedding through any LlamaIndex
``MultiModalEmbedding``, and the encoder record (name, fingerprint, probe) that a persisted
knowledge base keeps so a mismatched encoder can be refused.

Private module; :class:`~llama_index_lvlm_retriever.kb.KnowledgeBase` is the API.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.embeddings import MultiModalEmbedding
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from llama_index_lvlm_retriever.data.images import ImageLoadError, image_content_hash, load_image
from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import EmbeddingError

logger = logging.getLogger(__name__)

# Cosine below which two encoders' probe embeddings count as different models (the agreed
# contract). Different checkpoints fall far below it; fp32/fp16 re-runs of the same weights stay
# above it, bf16 can come close, which is one reason a model's fingerprint() takes precedence.
PROBE_MIN_COSINE = 0.999
PROBE_TEXT = "Probe caption: frontal chest radiograph, heart size normal, lungs clear, no effusion."
_PROBE_SIZE = 64
_DICOM_SUFFIXES = {".dcm", ".dicom"}


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows of ``(n, dim)`` as float32; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (n, 1)
    return vectors / np.maximum(norms, 1e-12)  # eps: leave zero rows at zero instead of NaN


def embeddable(path: str, decoded: Image.Image) -> str | io.BytesIO:
    """What to hand an embedding model for an image file.

    The path itself for ordinary image files; for DICOM (which ``load_image`` decodes with
    windowing but third-party embedding classes cannot read) or anything else PIL cannot open,
    the decoded pixels re-encoded as an in-memory PNG, which every LlamaIndex ``ImageType``
    consumer accepts.
    """
    if not _is_dicom_file(path):
        try:
            with Image.open(path):
                return path
        except (UnidentifiedImageError, OSError):
            pass
    buffer = io.BytesIO()
    decoded.save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def _is_dicom_file(path: str) -> bool:
    # Same rule as load_image: a DICOM suffix, or "DICM" after the 128-byte preamble (some
    # DICOM preambles are valid TIFF headers, so PIL must not get the first say).
    if Path(path).suffix.lower() in _DICOM_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def embed_images(model: MultiModalEmbedding, images: Sequence[Any]) -> np.ndarray:
    """Embed one batch of images as ``(n, dim)`` float32 (not normalised).

    Uses the model's ``embed_images(images)`` array method when it has one (our
    ``CLIPEmbedding``), else LlamaIndex's ``get_image_embedding_batch``.
    """
    method = getattr(model, "embed_images", None)
    if callable(method):
        vectors = method(list(images), **_one_batch(method, len(images)))
    else:
        vectors = model.get_image_embedding_batch(list(images), show_progress=False)
    return _as_matrix(vectors, len(images), "image")


def embed_texts(model: MultiModalEmbedding, texts: Sequence[str]) -> np.ndarray:
    """Embed one batch of texts as ``(n, dim)`` float32 (not normalised); see :func:`embed_images`."""
    method = getattr(model, "embed_texts", None)
    if callable(method):
        vectors = method(list(texts), **_one_batch(method, len(texts)))
    else:
        vectors = model.get_text_embedding_batch(list(texts), show_progress=False)
    return _as_matrix(vectors, len(texts), "text")


def _one_batch(method: Any, n: int) -> dict[str, int]:
    # We already cut the input into the caller's batches; ask an array method that takes a
    # batch_size to run each one as a single forward pass instead of re-batching it.
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return {}
    return {"batch_size": max(n, 1)} if "batch_size" in parameters else {}


def _as_matrix(vectors: Any, n: int, what: str) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != n:
        raise ValueError(
            f"the embedding model returned {what} embeddings of shape {array.shape} for {n} inputs; "
            f"expected ({n}, dim)"
        )
    return array


@dataclass(frozen=True)
class EmbeddedItems:
    """Result of :func:`embed_items`: the readable items with their vectors, in input order."""

    items: list[KBItem]
    image: np.ndarray  # (m, dim) L2-normalised
    text: np.ndarray  # (m, dim) L2-normalised
    hashes: list[str]
    skipped: list[tuple[str, str]]


def embed_items(
    model: MultiModalEmbedding,
    items: Sequence[KBItem],
    *,
    batch_size: int | None,
    show_progress: bool,
    skip_bad: bool,
) -> EmbeddedItems:
    """Decode, hash and embed the images and texts of ``items`` in batches (one tqdm bar).

    Every image is decoded with ``load_image`` first, so a missing, truncated or non-image file is
    caught here (raised naming the item and file, or skipped with ``skip_bad``) before the model
    sees it; the decoded pixels also give the content hash.
    """
    size = batch_size or int(model.embed_batch_size)
    kept: list[KBItem] = []
    hashes: list[str] = []
    skipped: list[tuple[str, str]] = []
    image_parts: list[np.ndarray] = []
    text_parts: list[np.ndarray] = []
    with tqdm(total=len(items), desc="Embedding knowledge base", unit="pair", disable=not show_progress) as bar:
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            good: list[KBItem] = []
            inputs: list[Any] = []
            for item in batch:
                try:
                    decoded = load_image(item.image_path)
                except ImageLoadError as err:
                    if not skip_bad:
                        raise ImageLoadError(
                            f"knowledge-base item {item.id!r}: {err} To skip unreadable items "
                            "instead, pass skip_bad=True."
                        ) from err
                    logger.warning("skipping knowledge-base item %r: %s", item.id, err)
                    skipped.append((item.id, str(err)))
                    continue
                good.append(item)
                hashes.append(image_content_hash(decoded))
                inputs.append(embeddable(item.image_path, decoded))
            if good:
                image_parts.append(embed_images(model, inputs))  # (b, dim)
                text_parts.append(embed_texts(model, [it.text for it in good]))  # (b, dim)
                _check_batch(good, image_parts[-1], text_parts[-1])
                kept.extend(good)
            bar.update(len(batch))
    if not kept:
        empty = np.zeros((0, 0), np.float32)
        return EmbeddedItems(kept, empty, empty, hashes, skipped)
    image = unit_rows(np.concatenate(image_parts))  # (m, dim)
    text = unit_rows(np.concatenate(text_parts))  # (m, dim)
    return EmbeddedItems(kept, image, text, hashes, skipped)


def _check_batch(items: Sequence[KBItem], image: np.ndarray, text: np.ndarray) -> None:
    if image.shape[1] != text.shape[1]:
        raise EmbeddingError(
            f"the embedding model returns {image.shape[1]}-d image embeddings but {text.shape[1]}-d "
            "text embeddings; a knowledge base needs one shared space (a CLIP-family dual encoder)"
        )
    for name, vectors in (("image", image), ("text", text)):
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if bad.size:
            raise EmbeddingError(
                f"the embedding model returned non-finite {name} embeddings for item "
                f"{items[int(bad[0])].id!r} ({bad.size} of {len(items)} in its batch); check the input and the "
                "model's dtype (float16 overflows: try float32)"
            )


def hash_item(item: KBItem) -> str:
    """``image_content_hash`` of an item's image; the error names the item."""
    try:
        return image_content_hash(item.image_path)
    except ImageLoadError as err:
        raise ImageLoadError(f"knowledge-base item {item.id!r}: {err}") from err


def model_fingerprint(model: MultiModalEmbedding) -> str | None:
    """The model's weights fingerprint when it offers ``fingerprint()``, else ``None``."""
    method = getattr(model, "fingerprint", None)
    return str(method()) if callable(method) else None


def model_class_name(model: MultiModalEmbedding) -> str:
    """The model's Python class name (a subclass need not override LlamaIndex's ``class_name()``)."""
    return type(model).__name__


def model_dtype(model: MultiModalEmbedding) -> str | None:
    """The weight dtype name the model runs in (``CLIPEmbedding.dtype``), ``None`` when it has none."""
    value = getattr(model, "dtype", None)
    return value if isinstance(value, str) else None


def probe_image() -> Image.Image:
    """A fixed synthetic RGB image (smooth gradients plus a bright square) used as the probe."""
    y, x = np.mgrid[0:_PROBE_SIZE, 0:_PROBE_SIZE]  # (size, size) each
    red = 40 + 3 * x
    green = 200 - 2 * y
    blue = 60 + (x * y) % 120
    pixels = np.stack([red, green, blue], axis=-1).astype(np.uint8)  # (size, size, 3)
    pixels[20:36, 28:44] = (230, 230, 90)
    return Image.fromarray(pixels, mode="RGB")


def probe_embeddings(model: MultiModalEmbedding) -> tuple[np.ndarray, np.ndarray]:
    """The model's (image, text) embeddings of the fixed probe, each ``(dim,)`` float32."""
    with tempfile.TemporaryDirectory(prefix="kb-probe-") as tmp:
        path = Path(tmp) / "probe.png"
        probe_image().save(path)
        image = embed_images(model, [str(path)])[0]
    text = embed_texts(model, [PROBE_TEXT])[0]
    return image, text


def describe_encoder(model: MultiModalEmbedding, *, with_probe: bool = True) -> dict[str, Any]:
    """The encoder record a persisted knowledge base keeps in its manifest."""
    info: dict[str, Any] = {
        "class_name": model_class_name(model),
        "model_name": getattr(model, "model_name", None),
        "fingerprint": model_fingerprint(model),
        "dtype": model_dtype(model),
    }
    if with_probe:
        image, text = probe_embeddings(model)
        info["probe"] = {"text": PROBE_TEXT, "image": image.tolist(), "text_embedding": text.tolist()}
    return info


def encoder_label(info: dict[str, Any]) -> str:
    """A short human description of an encoder record for error messages."""
    parts = [str(info.get("class_name") or "unknown encoder")]
    if info.get("model_name"):
        parts.append(f"model {info['model_name']!r}")
    if info.get("fingerprint"):
        parts.append(f"fingerprint {str(info['fingerprint'])[:12]}")
    if info.get("dtype"):
        parts.append(str(info["dtype"]))
    return ", ".join(parts)


def encoder_mismatch(saved: dict[str, Any], model: MultiModalEmbedding) -> str | None:
    """Why ``model`` is not the encoder described by ``saved``; ``None`` when it is.

    Fingerprints decide when both sides have one and ran in the same dtype; otherwise (no
    fingerprint, or the same checkpoint loaded in another dtype, whose fingerprint necessarily
    differs) the model re-embeds the probe and each of its image and text embeddings must be
    within cosine :data:`PROBE_MIN_COSINE` of the recorded ones: what matters is that the vectors
    agree, not the bytes of the weights.
    """
    saved_fp = saved.get("fingerprint")
    given_fp = model_fingerprint(model)
    saved_dtype, given_dtype = saved.get("dtype"), model_dtype(model)
    other_dtype = bool(saved_dtype and given_dtype and saved_dtype != given_dtype)
    if saved_fp and given_fp and not (other_dtype and saved.get("probe")):
        return None if saved_fp == given_fp else f"weights fingerprint {given_fp[:12]} != {str(saved_fp)[:12]}"
    probe = saved.get("probe")
    if not probe:
        return "the manifest records no probe embeddings to compare against"
    image, text = probe_embeddings(model)
    for what, recorded, current in (
        ("image", probe.get("image"), image),
        ("text", probe.get("text_embedding"), text),
    ):
        reference = np.asarray(recorded, dtype=np.float32)
        if reference.shape != current.shape:
            return f"probe {what} embedding is {current.shape[0]}-d, the knowledge base's is {reference.size}-d"
        cosine = _cosine(reference, current)
        if cosine < PROBE_MIN_COSINE:
            dtypes = f"; built in {saved_dtype}, given {given_dtype}" if other_dtype else ""
            return f"probe {what} embedding cosine {cosine:.4f} < {PROBE_MIN_COSINE}{dtypes}"
    return None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na < 1e-12 and nb < 1e-12:
        return 1.0  # both encoders map the probe to zero: indistinguishable, not a mismatch
    if na < 1e-12 or nb < 1e-12:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def encoder_digest(info: dict[str, Any]) -> str:
    """A short stable id of an encoder record: its weights fingerprint, else a hash of its probe.

    Database backends store it in their collections, so a collection rebuilt with another encoder
    is refused on reopen (the probe of one record always hashes the same; comparing two encoders'
    probes by cosine is :func:`encoder_mismatch`'s job).
    """
    if info.get("fingerprint"):
        return f"fp:{info['fingerprint']}"
    probe = json.dumps(info.get("probe") or {}, sort_keys=True)
    return "probe:" + hashlib.sha256(probe.encode("utf-8")).hexdigest()[:16]
