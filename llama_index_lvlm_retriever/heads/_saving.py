"""How query heads are saved and found again: one folder, ``config.json`` + ``model.safetensors``.

``config.json`` names the head's class (``class_name``) next to its constructor settings and the
package versions; :func:`load_head` reads that name and hands the folder to the class registered
under it, so any saved head loads through one call (and through ``QueryHead.from_pretrained``).
Every head class registers itself with :func:`register_head` where it is defined.

Saving is versioned (see :mod:`~llama_index_lvlm_retriever.storage.versioned`): the weights go to
``model.<gen>.safetensors``, then ``config.json`` is replaced with one that names that file and its
sha256 (under ``files``), then the previous weights are deleted, all under the folder's write lock.
Re-saving over a head, killed at any point, leaves the old head or the new one; a load reads the
weights its config names and checks their sha256. Folders with a plain ``model.safetensors`` and no
``files`` entry (older saves) still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_bytes

from llama_index_lvlm_retriever.errors import HeadFormatError
from llama_index_lvlm_retriever.storage.dirswap import restore_previous
from llama_index_lvlm_retriever.storage.files import json_bytes
from llama_index_lvlm_retriever.storage.locking import folder_lock
from llama_index_lvlm_retriever.storage.versioned import (
    FILES_KEY,
    VersionedWriter,
    file_entry,
    is_tagged,
    load_consistent,
    read_checked,
)
from llama_index_lvlm_retriever.version import package_versions

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
"""The weights file's base name; saves tag it per write (``model.<gen>.safetensors``)."""
WEIGHTS_KEY = "weights"
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
    """Write the weights, then the config that names them (the config last: the commit point).

    ``trained_on`` (the encoder and knowledge base a trained head was fitted for, see
    :data:`TRAINED_ON_KEY`) is stored next to the constructor settings when given.

    Raises:
        StoreLockedError: Another process is saving into the same folder.
    """
    out = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    data = _safetensors_bytes(tensors, metadata={"format": "pt"})
    record = {CLASS_KEY: class_name, **config, VERSIONS_KEY: package_versions()}
    if trained_on is not None:
        record[TRAINED_ON_KEY] = trained_on
    with folder_lock(out):
        writer = VersionedWriter(out, CONFIG_NAME, owns=lambda name: is_tagged(name, WEIGHTS_NAME))
        try:
            writer.path(WEIGHTS_KEY, WEIGHTS_NAME).write_bytes(data)
            writer.commit(record, json_bytes)
        except BaseException:
            writer.abort()
            raise
    return out


@dataclass
class SavedHead:
    """One consistent version of a saved head folder, as :func:`read_head` read it."""

    class_name: str | None
    settings: dict[str, Any]
    trained_on: dict[str, Any] | None
    state: dict[str, torch.Tensor]
    config_path: Path
    weights_path: Path


def read_head(folder: str | Path) -> SavedHead:
    """Read a saved head's config and the weights it names (sha256-checked), as one version.

    Raises:
        FileNotFoundError: The folder, its ``config.json`` or its weights file is missing.
        HeadFormatError: ``config.json`` is not a JSON object, or the weights are corrupt or fail their checksum.
    """
    path = Path(folder)
    return load_consistent(path / CONFIG_NAME, lambda: _read_head_once(path))


def _read_head_once(path: Path) -> SavedHead:
    class_name, record, raw = _read_config(path)
    name, _ = file_entry(raw, WEIGHTS_KEY, WEIGHTS_NAME)
    weights_path = path / name
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"query head directory {path} has no {name}; expected {CONFIG_NAME} + its weights file as written by "
            "save_pretrained"
        )
    data = read_checked(path, raw, WEIGHTS_KEY, WEIGHTS_NAME, manifest_name=CONFIG_NAME)
    try:
        state = _safetensors_load(data)
    except Exception as err:  # safetensors' own SafetensorError is not importable by a stable name
        raise HeadFormatError(f"{weights_path} is not a readable safetensors file ({err}); re-save the head") from err
    trained_on = raw.get(TRAINED_ON_KEY)
    return SavedHead(class_name, record, trained_on if isinstance(trained_on, dict) else None, state,
                     path / CONFIG_NAME, weights_path)


def read_head_config(folder: str | Path) -> tuple[str | None, dict[str, Any]]:
    """Return ``(class_name, settings)`` of a saved head (versions, files and ``trained_on`` dropped).

    Raises:
        FileNotFoundError: The folder or its ``config.json`` is missing.
        ValueError: ``config.json`` is not a JSON object.
    """
    class_name, record, _ = _read_config(Path(folder))
    return class_name, record


def _read_config(path: Path) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    if not path.is_dir():
        raise FileNotFoundError(
            f"query head directory not found: {path}; pass a folder written by a head's save_pretrained, "
            "or None for the identity head (standard RAG)"
        )
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"query head directory {path} has no {CONFIG_NAME}; expected {CONFIG_NAME} + {WEIGHTS_NAME} as "
            "written by save_pretrained"
        )
    try:
        raw = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HeadFormatError(f"{path / CONFIG_NAME} is not valid JSON ({err}); re-save the head") from err
    if not isinstance(raw, dict):
        raise HeadFormatError(f"{path / CONFIG_NAME} must hold a JSON object, got {type(raw).__name__}; re-save the head")
    record = dict(raw)
    for key in (VERSIONS_KEY, FILES_KEY, TRAINED_ON_KEY):  # provenance and layout, not constructor arguments
        record.pop(key, None)
    return record.pop(CLASS_KEY, None), record, raw


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
    folder = Path(folder)
    if not folder.exists() and not folder.parent.exists():
        # A retriever folder (image_head/ + text_head/) whose save was killed between its two
        # renames: the previous one waits aside; put it back.
        restore_previous(folder.parent)
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
    "SavedHead",
    "TRAINED_ON_KEY",
    "VERSIONS_KEY",
    "WEIGHTS_NAME",
    "load_head",
    "read_head",
    "read_head_config",
    "read_trained_on",
    "register_head",
    "write_head",
]
