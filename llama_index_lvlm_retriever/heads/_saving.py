"""How query heads are saved and found again: one folder, ``config.json`` + ``model.safetensors``.

``config.json`` names the head's class (``class_name``) next to its constructor settings and the
package versions; :func:`load_head` reads that name and hands the folder to the class registered
under it, so any saved head loads through one call (and through ``QueryHead.from_pretrained``).
Every head class registers itself with :func:`register_head` where it is defined.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as _safetensors_bytes

from llama_index_lvlm_retriever._io import atomic_write_bytes, json_bytes
from llama_index_lvlm_retriever.version import package_versions

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CLASS_KEY = "class_name"
VERSIONS_KEY = "versions"
TRAINED_ON_KEY = "trained_on"
"""Config key of a trained head's record of the encoder and knowledge base it was trained for."""

HEAD_CLASSES: dict[str, type] = {}
"""Saved ``class_name`` -> head class (filled by :func:`register_head`)."""


def register_head(cls: type) -> type:
    """Class decorator: make :func:`load_head` load folders whose config names ``cls``."""
    HEAD_CLASSES[cls.__name__] = cls
    return cls


def write_head(
    folder: str | Path,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    class_name: str,
    trained_on: dict[str, Any] | None = None,
) -> Path:
    """Write the weights, then the config (the config last: its presence marks a complete head).

    ``trained_on`` (the encoder and knowledge base a trained head was fitted for, see
    :data:`TRAINED_ON_KEY`) is stored next to the constructor settings when given.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(out / WEIGHTS_NAME, _safetensors_bytes(tensors, metadata={"format": "pt"}))
    record = {CLASS_KEY: class_name, **config, VERSIONS_KEY: package_versions()}
    if trained_on is not None:
        record[TRAINED_ON_KEY] = trained_on
    atomic_write_bytes(out / CONFIG_NAME, json_bytes(record))
    return out


def read_head_config(folder: str | Path) -> tuple[str | None, dict[str, Any]]:
    """Return ``(class_name, settings)`` of a saved head (versions and ``trained_on`` dropped).

    Raises:
        FileNotFoundError: The folder, its ``config.json`` or its ``model.safetensors`` is missing.
        ValueError: ``config.json`` is not a JSON object.
    """
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(
            f"query head directory not found: {path}; pass a folder written by a head's save_pretrained, "
            "or None for the identity head (standard RAG)"
        )
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"query head directory {path} has no {name}; expected {CONFIG_NAME} + {WEIGHTS_NAME} as "
                "written by save_pretrained"
            )
    try:
        record = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / CONFIG_NAME} is not valid JSON ({err}); re-save the head") from err
    if not isinstance(record, dict):
        raise ValueError(f"{path / CONFIG_NAME} must hold a JSON object, got {type(record).__name__}; re-save the head")
    record.pop(VERSIONS_KEY, None)
    record.pop(TRAINED_ON_KEY, None)  # provenance, not a constructor argument: see read_trained_on
    return record.pop(CLASS_KEY, None), record


def read_trained_on(folder: str | Path) -> dict[str, Any] | None:
    """The ``trained_on`` record of a saved head (encoder and KB fingerprints), ``None`` when absent.

    Older saves and untrained heads have none; a head with one is checked against the knowledge base
    it is used with (see ``LVLMAwareRetriever``).
    """
    record = json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8"))
    value = record.get(TRAINED_ON_KEY) if isinstance(record, dict) else None
    return value if isinstance(value, dict) else None


def load_head(folder: str | Path, *, device: str | torch.device = "cpu") -> Any:
    """Load any saved query head, dispatching on the ``class_name`` in its ``config.json``.

    Args:
        folder: A folder written by ``QueryHead``/``EncoderQueryHead``/``PlaceboQueryHead.save_pretrained``.
        device: Where to put the weights.

    Returns:
        The head, in eval mode. A config without ``class_name`` (older saves) is a ``QueryHead``.

    Raises:
        FileNotFoundError: The folder or one of its files is missing.
        ValueError: The config names a class no head module registered.

    Example:
        >>> from llama_index_lvlm_retriever.heads import load_head  # doctest: +SKIP
        >>> head = load_head("runs/heads/image_head")  # doctest: +SKIP
    """
    class_name, _ = read_head_config(folder)
    cls = HEAD_CLASSES.get(class_name or "QueryHead")
    if cls is None:
        raise ValueError(
            f"{Path(folder) / CONFIG_NAME} names head class {class_name!r}, which this package does not know "
            f"(known: {sorted(HEAD_CLASSES)}); upgrade llama-index-lvlm-retriever or re-save the head"
        )
    return cls._load_folder(folder, device=device)


__all__ = [
    "CLASS_KEY",
    "CONFIG_NAME",
    "HEAD_CLASSES",
    "TRAINED_ON_KEY",
    "VERSIONS_KEY",
    "WEIGHTS_NAME",
    "load_head",
    "read_head_config",
    "read_trained_on",
    "register_head",
    "write_head",
]
