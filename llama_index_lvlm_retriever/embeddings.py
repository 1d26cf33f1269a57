"""CLIPEmbedding: a batched LlamaIndex multimodal embedding for any HF CLIP/SigLIP dual encoder.

One forward pass per batch under ``torch.inference_mode()``, L2-normalised float32 vectors,
images from paths, bytes, ``BytesIO``, PIL images or DICOM files (through
:func:`llama_index_lvlm_retriever.data.images.load_image`), texts truncated to the model's
position limit. ``embed_images``/``embed_texts`` return NumPy arrays for bulk work such as building
a knowledge base; the LlamaIndex hooks return lists of floats.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from llama_index.core.base.embeddings.base import Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.schema import ImageType
from tqdm.auto import tqdm
from transformers import AutoModel, AutoProcessor
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import ProcessorMixin
from transformers.utils import ModelOutput

from llama_index_lvlm_retriever._devices import check_device_available
from llama_index_lvlm_retriever.data.images import ImageInput, load_image

logger = logging.getLogger(__name__)

__all__ = ["CLIPEmbedding", "DTypeName", "TextPadding"]

DTypeName = Literal["float32", "float16", "bfloat16"]
TextPadding = Literal["auto", "longest", "max_length"]

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# SigLIP-family text towers pool the last position, so they only see the text they were trained
# on when every sequence is padded to the full length.
_PAD_TO_MAX_LENGTH_MODEL_TYPES = frozenset({"siglip", "siglip2"})
# "org/name" or "name", the shape of a Hugging Face hub id; anything else must be a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
# Tokenizers without a real limit report a huge sentinel model_max_length.
_NO_LIMIT = 1_000_000
_FINGERPRINT_HEX_CHARS = 16


class CLIPEmbedding(MultiModalEmbedding):
    """Embed images and texts with a Hugging Face CLIP-family dual encoder.

    Works with any checkpoint whose ``AutoModel`` has ``get_image_features`` and
    ``get_text_features`` (CLIP, SigLIP, SigLIP 2, ...), by hub name or local directory. Vectors
    are float32 and L2-normalised (unless ``normalize=False``), so inner product is cosine.

    Pass ready ``model=`` and ``processor=`` objects (moved to ``device``/``dtype``), or load by
    name with :meth:`from_pretrained`. With neither, the constructor loads ``model_name``.

    Args:
        model: A loaded dual-encoder model (optional; see above).
        processor: Its processor, with ``image_processor`` and ``tokenizer`` (optional).
        **kwargs: The fields below.

    Raises:
        ValueError: Only one of ``model``/``processor`` is given, or ``max_length`` exceeds the
            model's text positions.
        TypeError: The model has no ``get_image_features``/``get_text_features``.

    Example:
        >>> import tempfile
        >>> from llama_index_lvlm_retriever.testing import build_tiny_clip
        >>> embed = CLIPEmbedding.from_pretrained(build_tiny_clip(tempfile.mkdtemp()))
        >>> vectors = embed.embed_texts(["no acute findings", "left pleural effusion"])
        >>> vectors.shape
        (2, 16)
    """

    model_name: str = Field(
        default=DEFAULT_CLIP_MODEL,
        description="Hugging Face hub id or local directory of the CLIP-family checkpoint.",
    )
    device: str = Field(
        default="cpu",
        description='Torch device to run on ("cpu", "cuda", "cuda:1", ...); "auto" picks CUDA '
        "when available, else CPU.",
    )
    dtype: DTypeName = Field(
        default="float32", description="Weight dtype: float32, float16 or bfloat16."
    )
    embed_batch_size: int = Field(default=32, gt=0, description="Images or texts per forward pass.")
    normalize: bool = Field(
        default=True, description="L2-normalise the vectors (inner product is then cosine)."
    )
    max_length: int | None = Field(
        default=None,
        gt=0,
        description="Longest text in tokens; longer texts are truncated. Defaults to the model's "
        "text position limit.",
    )
    text_padding: TextPadding = Field(
        default="auto",
        description='How text batches are padded: "longest" (CLIP), "max_length" (SigLIP, which '
        'pools the last position), or "auto" to choose from the model type.',
    )

    _model: PreTrainedModel = PrivateAttr()
    _processor: ProcessorMixin = PrivateAttr()
    _torch_device: torch.device = PrivateAttr()
    _padding: str = PrivateAttr()
    _embed_dim: int | None = PrivateAttr(default=None)
    _fingerprint: str | None = PrivateAttr(default=None)

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        processor: ProcessorMixin | None = None,
        **kwargs: Any,
    ) -> None:
        if (model is None) != (processor is None):
            raise ValueError(
                "CLIPEmbedding needs model= and processor= together (got only "
                f"{'model' if processor is None else 'processor'}); pass both, or neither to load "
                "model_name, or use CLIPEmbedding.from_pretrained(name_or_dir)"
            )
        if model is not None and "model_name" not in kwargs:
            kwargs["model_name"] = model.name_or_path or type(model).__name__
        super().__init__(**kwargs)
        if model is None or processor is None:
            model, processor = _load(self.model_name, self.dtype)
        self._setup(model, processor)

    @classmethod
    def class_name(cls) -> str:
        """Stable name used by LlamaIndex serialisation."""
        return "CLIPEmbedding"

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | Path,
        *,
        device: str = "cpu",
        dtype: DTypeName = "float32",
        **kwargs: Any,
    ) -> CLIPEmbedding:
        """Load a checkpoint with ``AutoModel`` + ``AutoProcessor`` from the hub or a folder.

        Args:
            name_or_dir: Hub id (``"openai/clip-vit-base-patch32"``) or a local directory written
                by ``save_pretrained``.
            device: Torch device, or ``"auto"``.
            dtype: Weight dtype name.
            **kwargs: Other fields (``embed_batch_size``, ``normalize``, ``max_length``, ...).

        Returns:
            The embedding, on ``device`` in ``dtype``.

        Raises:
            FileNotFoundError: A local path does not exist or has no ``config.json``.
            OSError: A hub id is not cached and cannot be downloaded (offline mode says so).

        Example:
            >>> import tempfile
            >>> from llama_index_lvlm_retriever.testing import build_tiny_clip
            >>> folder = build_tiny_clip(tempfile.mkdtemp())
            >>> CLIPEmbedding.from_pretrained(folder, device="auto").class_name()
            'CLIPEmbedding'
        """
        # The constructor validates every field before it loads anything.
        return cls(model_name=str(name_or_dir), device=device, dtype=dtype, **kwargs)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value == "auto":
            return value
        try:
            torch.device(value)
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"device={value!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or 'auto'"
            ) from err
        return value

    @property
    def model(self) -> PreTrainedModel:
        """The underlying dual-encoder model (in eval mode)."""
        return self._model

    @property
    def processor(self) -> ProcessorMixin:
        """The processor (``image_processor`` + ``tokenizer``)."""
        return self._processor

    @property
    def torch_device(self) -> torch.device:
        """The resolved device the model runs on (``"auto"`` already decided)."""
        return self._torch_device

    @property
    def embed_dim(self) -> int:
        """Length of every vector this embedding returns."""
        if self._embed_dim is None:
            self._embed_dim = int(self._encode_texts(["a"]).shape[1])
        return self._embed_dim

    def embed_images(
        self,
        images: Sequence[ImageInput],
        *,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed many images, one forward pass per batch.

        Args:
            images: Paths, bytes, ``BytesIO``, PIL images or DICOM files (any mix). Each batch is
                decoded just before its forward pass, so memory stays bounded.
            batch_size: Images per forward pass (defaults to ``embed_batch_size``).
            show_progress: Show a tqdm progress bar.

        Returns:
            Array of shape ``(len(images), embed_dim)``, float32, L2-normalised rows when
            ``normalize`` is on.

        Raises:
            llama_index_lvlm_retriever.data.images.ImageLoadError: An image cannot be decoded; the
                message names it.
        """
        size = self._batch_size(batch_size)
        if len(images) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        chunks: list[np.ndarray] = []
        with tqdm(
            total=len(images), disable=not show_progress, desc="Embedding images", unit="img"
        ) as bar:
            for start in range(0, len(images), size):
                batch = [load_image(image) for image in images[start : start + size]]
                chunks.append(self._encode_images(batch))
                bar.update(len(batch))
        return np.concatenate(chunks, axis=0)  # (n, dim)

    def embed_texts(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed many texts, one forward pass per batch, truncating each to ``max_length``.

        Args:
            texts: Captions, reports or queries.
            batch_size: Texts per forward pass (defaults to ``embed_batch_size``).
            show_progress: Show a tqdm progress bar.

        Returns:
            Array of shape ``(len(texts), embed_dim)``, float32, L2-normalised rows when
            ``normalize`` is on.

        Raises:
            TypeError: An item is not a string; the message gives its position.
        """
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"text #{position} is a {type(text).__name__}, not a str; pass strings only"
                )
        size = self._batch_size(batch_size)
        if len(texts) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        chunks: list[np.ndarray] = []
        with tqdm(
            total=len(texts), disable=not show_progress, desc="Embedding texts", unit="text"
        ) as bar:
            for start in range(0, len(texts), size):
                batch = list(texts[start : start + size])
                chunks.append(self._encode_texts(batch))
                bar.update(len(batch))
        return np.concatenate(chunks, axis=0)  # (n, dim)

    def fingerprint(self) -> str:
        """Short SHA-256 of the weights as loaded: every state-dict name, dtype, shape and bytes.

        A knowledge base records it to refuse queries embedded by different weights. Loading the
        same checkpoint in another dtype gives another fingerprint (its vectors differ too).

        Returns:
            The first 16 hex digits of the digest.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self._model.state_dict().items()):
                digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                # reshape(-1) first: a 0-d tensor cannot be reinterpreted as bytes.
                raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                digest.update(raw.numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:_FINGERPRINT_HEX_CHARS]
        return self._fingerprint

    # LlamaIndex hooks.

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self.embed_texts([text])[0].tolist()

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self.embed_texts(texts).tolist()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self.embed_images([img_file_path])[0].tolist()

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return await asyncio.to_thread(self._get_image_embedding, img_file_path)

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return self.embed_images(img_file_paths).tolist()

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_image_embeddings, img_file_paths)

    # Internals.

    def _setup(self, model: PreTrainedModel, processor: ProcessorMixin) -> None:
        missing = [
            name for name in ("get_image_features", "get_text_features") if not hasattr(model, name)
        ]
        if missing:
            raise TypeError(
                f"{type(model).__name__} has no {' / '.join(missing)}; CLIPEmbedding needs a "
                "CLIP-family dual encoder (CLIP, SigLIP, ...) loaded with AutoModel"
            )
        for part in ("image_processor", "tokenizer"):
            if not hasattr(processor, part):
                raise TypeError(
                    f"{type(processor).__name__} has no {part}; pass the model's AutoProcessor"
                )
        self._torch_device = _resolve_device(self.device)
        model.to(device=self._torch_device, dtype=_TORCH_DTYPES[self.dtype])
        model.eval()
        self._model = model
        self._processor = processor
        limit = _text_position_limit(model, processor)
        if self.max_length is None:
            self.max_length = limit
        elif self.max_length > limit:
            raise ValueError(
                f"max_length={self.max_length} exceeds the {limit} text positions of "
                f"{self.model_name}; pass max_length<={limit} or leave it unset"
            )
        if self.text_padding == "auto":
            model_type = model.config.model_type
            self._padding = (
                "max_length" if model_type in _PAD_TO_MAX_LENGTH_MODEL_TYPES else "longest"
            )
        else:
            self._padding = self.text_padding
        self._embed_dim = None
        self._fingerprint = None
        logger.info(
            "CLIPEmbedding %s on %s (%s), text max_length=%d",
            self.model_name,
            self._torch_device,
            self.dtype,
            self.max_length,
        )

    def _batch_size(self, batch_size: int | None) -> int:
        if batch_size is None:
            return self.embed_batch_size
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return batch_size

    def _to_model(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = _TORCH_DTYPES[self.dtype]
        moved = {}
        for key, value in inputs.items():
            value = value.to(self._torch_device)
            # Pixel values follow the weight dtype; integer ids and masks stay as they are.
            moved[key] = value.to(dtype) if value.is_floating_point() else value
        return moved

    def _encode_images(self, images: list[Any]) -> np.ndarray:
        inputs = self._processor.image_processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            output = self._model.get_image_features(**self._to_model(dict(inputs)))
        return self._finish(_pooled(output))

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        inputs = self._processor.tokenizer(
            texts,
            padding=self._padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            output = self._model.get_text_features(**self._to_model(dict(inputs)))
        return self._finish(_pooled(output))

    def _finish(self, features: torch.Tensor) -> np.ndarray:
        features = features.float()  # (batch, dim); normalise in float32 whatever the weights
        if self.normalize:
            # eps 1e-12 (torch default) only guards an all-zero vector against division by zero.
            features = torch.nn.functional.normalize(features, p=2.0, dim=-1)
        return features.cpu().numpy()


def _pooled(output: torch.Tensor | ModelOutput | tuple[Any, ...]) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding;
    # 4.x returned the tensor itself.
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, ModelOutput) and output.get("pooler_output") is not None:
        return output["pooler_output"]
    raise TypeError(
        f"get_*_features returned {type(output).__name__} without pooler_output; CLIPEmbedding "
        "expects a tensor or a transformers output with pooler_output"
    )


def _resolve_device(device: str) -> torch.device:
    # Checked here, before the model moves, so CUDA on a CPU-only torch names the setting
    # instead of failing inside .to() with a bare AssertionError.
    check_device_available(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _text_position_limit(model: PreTrainedModel, processor: ProcessorMixin) -> int:
    text_config = model.config.get_text_config()
    if "max_position_embeddings" in text_config.to_dict():
        return int(text_config.max_position_embeddings)
    tokenizer_limit = int(processor.tokenizer.model_max_length)
    if tokenizer_limit < _NO_LIMIT:
        return tokenizer_limit
    raise ValueError(
        f"cannot tell the text length limit of {type(model).__name__}: its text config has no "
        "max_position_embeddings and the tokenizer sets no model_max_length; pass max_length="
    )


def _hub_offline() -> bool:
    from huggingface_hub import is_offline_mode

    return bool(is_offline_mode()) or os.environ.get("HF_HUB_OFFLINE", "").lower() in {
        "1",
        "true",
        "yes",
        "on",
    }


def _resolve_source(name_or_dir: str) -> str:
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model directory {path} has no config.json; point it at a folder written by "
                "save_pretrained (config.json + weights + processor files)"
            )
        return str(path)
    if path.exists() or not _HUB_ID.match(name_or_dir):
        raise FileNotFoundError(
            f"model directory not found: {name_or_dir}. Check the path, or pass a Hugging Face "
            f"hub id such as {DEFAULT_CLIP_MODEL!r}"
        )
    return name_or_dir


def _load(name_or_dir: str, dtype: DTypeName) -> tuple[PreTrainedModel, ProcessorMixin]:
    source = _resolve_source(name_or_dir)
    try:
        model = AutoModel.from_pretrained(source, dtype=_TORCH_DTYPES[dtype])
        processor = AutoProcessor.from_pretrained(source)
    except OSError as err:
        if _hub_offline():
            raise OSError(
                f"model {name_or_dir!r} is not a local directory and is not in the Hugging Face "
                "cache, so it needs a download, but HF_HUB_OFFLINE is set. Download it once with "
                "network access (unset HF_HUB_OFFLINE) or pass a local directory"
            ) from err
        raise OSError(
            f"cannot load model {name_or_dir!r}: {err}. Check the hub id, your network and "
            "HF_TOKEN for gated models, or pass a local directory"
        ) from err
    return model, processor
