"""Loading an image-text-to-text checkpoint (model + processor) with errors that say what to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel

__all__ = ["DTypeName", "load_model", "load_processor", "resolve_device", "resolve_source"]

DTypeName = Literal["auto", "float32", "float16", "bfloat16"]

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_source(name_or_dir: str | Path) -> str:
    """An existing local path (user-expanded), else the string as a hub id."""
    path = Path(name_or_dir).expanduser()
    return str(path) if path.exists() else str(name_or_dir)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(source: str, dtype: DTypeName, device: str) -> PreTrainedModel:
    """``AutoModelForImageTextToText.from_pretrained`` on ``device``, in eval mode.

    Raises:
        OSError: No weights or config at ``source`` (or a hub id that cannot be fetched).
    """
    torch_dtype: Any = "auto" if dtype == "auto" else _TORCH_DTYPES[dtype]
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype)
    except OSError as err:
        raise OSError(
            f"cannot load an image-text-to-text model from {source!r}: {err}. Point at a folder "
            "written by save_pretrained (config.json + weights), or a hub id that is downloaded "
            "or reachable"
        ) from err
    return model.to(resolve_device(device)).eval()


def load_processor(source: str) -> Any:
    """``AutoProcessor.from_pretrained``, refusing anything without an image processor.

    Raises:
        ValueError: No processor files at ``source``, or only a tokenizer.
    """
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"no processor could be loaded from {source!r} ({type(err).__name__}: {err}). A reader "
            "needs the model's processor (image processor, tokenizer, chat template) next to the "
            "weights: save it with processor.save_pretrained(dir), or pass processor="
        ) from err
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"{source!r} has no image processor (AutoProcessor returned a "
            f"{type(processor).__name__}); save the full processor with "
            "processor.save_pretrained(dir) (preprocessor/processor_config.json), or pass processor="
        )
    return processor
