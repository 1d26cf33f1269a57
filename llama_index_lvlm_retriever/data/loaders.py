"""Loaders that turn image-text pair collections into knowledge-base records (:class:`KBItem`).

Four entry points, one per common layout:

* :func:`load_kb_jsonl` - the paper's KB JSONL (``image_path``, ``text``, ``id``, ``source``, ...);
* :func:`load_kb_csv` - a CSV with one row per pair and a folder of images;
* :func:`load_medmnist_npz` - a MedMNIST ``.npz`` (images written out as PNGs, captions made
  from the label names);
* :func:`kb_items_from_records` - dicts (or ready items) built in Python.

Every loader returns items in input order, checks that ids are unique, and names the file and
line/row of any bad record. Files are read as UTF-8, with or without a byte-order mark. Image files are not opened here: a missing or unreadable image is
reported (or skipped) by ``KnowledgeBase.build``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llama_index_lvlm_retriever.data._text import csv_source, read_utf8_text, text_lines
from llama_index_lvlm_retriever.data.records import KBItem, resolve_path
from llama_index_lvlm_retriever.errors import InputFormatError, UsageError
from llama_index_lvlm_retriever.storage.files import atomic_write_bytes

__all__ = ["kb_item_from_record", "kb_items_from_records", "load_kb_csv", "load_kb_jsonl", "load_medmnist_npz"]

logger = logging.getLogger(__name__)

# Keys of a KB record that map onto KBItem fields; every other key becomes metadata.
_IMAGE_KEY = "image_path"
_IMAGE_ALIAS = "image"
_TEXT_KEY = "text"
_ID_KEY = "id"
_SOURCE_KEY = "source"
_LABEL_KEY = "label"
_METADATA_KEY = "metadata"
_RESERVED_KEYS = {_IMAGE_KEY, _IMAGE_ALIAS, _TEXT_KEY, _ID_KEY, _SOURCE_KEY, _LABEL_KEY, _METADATA_KEY}


def kb_item_from_record(
    record: Mapping[str, Any],
    *,
    where: str,
    default_id: str,
    base_dir: str | Path | None = None,
    default_source: str = "",
) -> KBItem:
    """Build one :class:`KBItem` from a loose record (a JSONL line or a Python dict).

    ``image_path`` (or its alias ``image``) is required; ``text`` defaults to ``""``; a
    ``metadata`` dict is merged with every key that is not a KBItem field.

    Args:
        record: The record.
        where: How to name the record in errors (e.g. ``"kb.jsonl:12"``).
        default_id: Id to use when the record has none.
        base_dir: Folder relative image paths resolve against (``None`` keeps them as given).
        default_source: Source tag when the record has none.

    Returns:
        The item.

    Raises:
        InputFormatError: No image path, or a field of the wrong type; the message names ``where``.

    Example:
        >>> kb_item_from_record({"image_path": "a.png", "text": "normal"}, where="demo", default_id="r0")
        KBItem(id='r0', image_path='a.png', text='normal', source='', label=None, metadata={})
    """
    image = record.get(_IMAGE_KEY, record.get(_IMAGE_ALIAS))
    if image is None or (isinstance(image, str) and not image.strip()):
        raise InputFormatError(
            f"{where}: record has no {_IMAGE_KEY!r}; every knowledge-base pair needs an image "
            f"(keys present: {sorted(record)})"
        )
    if not isinstance(image, (str, os.PathLike)):
        raise InputFormatError(f"{where}: {_IMAGE_KEY!r} must be a path string, got {type(image).__name__}")
    text = record.get(_TEXT_KEY, "")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InputFormatError(f"{where}: {_TEXT_KEY!r} must be a string, got {type(text).__name__}")
    label = record.get(_LABEL_KEY)
    if label is not None and not isinstance(label, (str, int, float, bool)):
        raise InputFormatError(
            f"{where}: {_LABEL_KEY!r} must be a single string or number, got {type(label).__name__}; "
            "put multi-label annotations under another key (they are kept as metadata)"
        )
    nested = record.get(_METADATA_KEY) or {}
    if not isinstance(nested, Mapping):
        raise InputFormatError(f"{where}: {_METADATA_KEY!r} must be a JSON object, got {type(nested).__name__}")
    metadata = dict(nested)
    metadata.update({k: v for k, v in record.items() if k not in _RESERVED_KEYS})
    item_id = record.get(_ID_KEY)
    source = record.get(_SOURCE_KEY)
    return KBItem(
        id=default_id if item_id is None or item_id == "" else str(item_id),
        image_path=resolve_path(image, base_dir),
        text=text,
        source=default_source if source is None else str(source),
        label=None if label is None else str(label),
        metadata=metadata,
    )


def _check_unique(items: Sequence[KBItem], places: Sequence[str], what: str) -> None:
    first: dict[str, str] = {}
    for item, place in zip(items, places):
        if item.id in first:
            raise InputFormatError(
                f"{what}: duplicate id {item.id!r} at {place} (first seen at {first[item.id]}); "
                "knowledge-base ids must be unique"
            )
        first[item.id] = place


def load_kb_jsonl(path: str | Path) -> list[KBItem]:
    """Load image-text pairs from the paper's knowledge-base JSONL.

    One JSON object per line with ``image_path`` (required), ``text``, ``id``, ``source`` and
    optionally ``label``; any other field (and a nested ``metadata`` object) becomes the item's
    metadata. Relative image paths resolve against the JSONL's folder; a line without ``id`` gets
    the stable id ``"<file stem>-<line number>"``. Blank lines are skipped.

    Args:
        path: The JSONL file.

    Returns:
        The items in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        InputFormatError: The file is not UTF-8 (a byte-order mark is fine), or a line is not a JSON
            object, has no ``image_path``, or repeats an id; the message names the file and line
            number.

    Example:
        >>> items = load_kb_jsonl("kb/roco_train.jsonl")  # doctest: +SKIP
        >>> items[0].image_path  # doctest: +SKIP
        '/data/kb/images/PMC123_fig1.png'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"knowledge-base JSONL not found: {path}")
    items: list[KBItem] = []
    places: list[str] = []
    with text_lines(read_utf8_text(path)) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputFormatError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(record, dict):
                raise InputFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
            items.append(
                kb_item_from_record(record, where=where, default_id=f"{path.stem}-{lineno}", base_dir=path.parent)
            )
            places.append(f"line {lineno}")
    _check_unique(items, places, str(path))
    logger.info("loaded %d knowledge-base pairs from %s", len(items), path)
    return items


def load_kb_csv(
    csv_path: str | Path,
    image_dir: str | Path | None,
    *,
    image_column: str = "image",
    text_column: str = "text",
    id_column: str | None = None,
    source: str | None = None,
    label_column: str | None = None,
) -> list[KBItem]:
    """Load image-text pairs from a CSV (header row required) and a folder of images.

    Every column that is not the image, text, id or label column is kept as metadata (as
    strings). Rows without an id column get ``"<csv stem>-<row number>"`` (1 = first data row).

    Args:
        csv_path: The CSV file.
        image_dir: Folder the image column is relative to (``None``: the CSV's folder).
        image_column: Column holding the image file name or path.
        text_column: Column holding the caption or report.
        id_column: Column holding a unique id (optional).
        source: Source tag of every pair (default: the CSV's file stem).
        label_column: Column holding the label (optional; empty cells mean no label).

    Returns:
        The items in row order.

    Raises:
        FileNotFoundError: The CSV does not exist.
        InputFormatError: The file is not UTF-8 (a byte-order mark is fine), a named column is missing
            (the message lists the available ones), a row has an empty image cell, or an id
            repeats.

    Example:
        >>> items = load_kb_csv("captions.csv", "images/", text_column="caption")  # doctest: +SKIP
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"knowledge-base CSV not found: {csv_path}")
    base_dir = Path(image_dir) if image_dir is not None else csv_path.parent
    source = csv_path.stem if source is None else source
    with csv_source(read_utf8_text(csv_path)) as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        wanted = {"image_column": image_column, "text_column": text_column}
        if id_column is not None:
            wanted["id_column"] = id_column
        if label_column is not None:
            wanted["label_column"] = label_column
        for arg, column in wanted.items():
            if column not in columns:
                raise InputFormatError(
                    f"{csv_path}: no column {column!r} (from {arg}=); available columns: {columns}. "
                    f"Pass {arg}= with one of them."
                )
        used = set(wanted.values())
        items: list[KBItem] = []
        places: list[str] = []
        for row_number, row in enumerate(reader, start=1):
            where = f"{csv_path} row {row_number}"
            image = (row.get(image_column) or "").strip()
            if not image:
                raise InputFormatError(f"{where}: empty {image_column!r} cell; every pair needs an image")
            item_id = (row.get(id_column) or "").strip() if id_column is not None else ""
            label = (row.get(label_column) or "").strip() if label_column is not None else ""
            items.append(
                KBItem(
                    id=item_id or f"{csv_path.stem}-{row_number}",
                    image_path=resolve_path(image, base_dir),
                    text=row.get(text_column) or "",
                    source=source,
                    label=label or None,
                    metadata={k: v for k, v in row.items() if k not in used and k is not None},
                )
            )
            places.append(f"row {row_number}")
    _check_unique(items, places, str(csv_path))
    logger.info("loaded %d knowledge-base pairs from %s", len(items), csv_path)
    return items


def _label_name_lookup(label_names: Mapping[Any, str] | Sequence[str] | None) -> dict[int, str]:
    if label_names is None:
        return {}
    if isinstance(label_names, Mapping):
        # MedMNIST's INFO dicts key label names by the index as a string ("0", "1", ...).
        return {int(k): str(v) for k, v in label_names.items()}
    return {i: str(v) for i, v in enumerate(label_names)}


def _png_matches(path: Path, pixels: np.ndarray) -> bool:
    """Whether ``path`` already holds exactly these pixels (so it need not be rewritten)."""
    try:
        with Image.open(path) as img:
            existing = np.asarray(img)
    except (OSError, SyntaxError, ValueError):
        return False
    return existing.shape == pixels.shape and bool(np.array_equal(existing, pixels))


def _write_png_atomic(path: Path, pixels: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def load_medmnist_npz(
    npz_path: str | Path,
    *,
    split: str = "train",
    image_dir: str | Path,
    label_names: Mapping[Any, str] | Sequence[str] | None = None,
    caption_template: str = "{label_name}",
    source: str = "medmnist",
    limit: int | None = None,
) -> list[KBItem]:
    """Turn one split of a MedMNIST ``.npz`` into knowledge-base pairs.

    The file holds ``<split>_images`` (uint8, ``(n, h, w)`` grey or ``(n, h, w, 3)`` RGB) and
    ``<split>_labels`` (``(n, 1)`` class indices, or ``(n, L)`` 0/1 multi-label rows). Each image
    is written to ``image_dir`` as ``<npz stem>_<split>_<index>.png`` (a file already holding the
    same pixels is left alone, so re-running is cheap) and paired with a caption made from its
    label name(s). Single-label items carry the label name as ``label``; multi-label items carry
    ``None`` and list their positive names in ``metadata["labels"]``.

    Args:
        npz_path: The ``.npz`` file (loaded without pickle).
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_dir: Folder to write the PNGs into (created if needed).
        label_names: Class names by index: a list, or MedMNIST's ``INFO[flag]["label"]`` dict
            (``{"0": "adipose", ...}``). ``None`` names classes by their index.
        caption_template: ``str.format`` template with the placeholders ``{label_name}`` (the name,
            or the positive names joined by ``", "``; ``"none"`` when a multi-label row is
            empty), ``{label}`` (the index or list of indices), ``{split}`` and ``{index}``.
        source: Source tag of every pair.
        limit: Keep only the first ``limit`` samples of the split.

    Returns:
        The items, ids ``"<npz stem>-<split>-<index>"``.

    Raises:
        FileNotFoundError: The ``.npz`` does not exist.
        InputFormatError: The split's arrays are missing (the message lists the keys present), have the
            wrong dtype/shape, a label index has no name, or the template is invalid.

    Example:
        >>> from medmnist import INFO  # doctest: +SKIP
        >>> items = load_medmnist_npz(  # doctest: +SKIP
        ...     "pathmnist.npz", split="train", image_dir="kb/pathmnist",
        ...     label_names=INFO["pathmnist"]["label"],
        ...     caption_template="A colorectal histology patch showing {label_name}.", limit=1000)
    """
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise FileNotFoundError(f"MedMNIST file not found: {npz_path}")
    if limit is not None and limit < 0:
        raise UsageError(f"limit must be >= 0 or None, got {limit}")
    image_key, label_key = f"{split}_images", f"{split}_labels"
    with np.load(npz_path, allow_pickle=False) as data:
        keys = sorted(data.files)
        if image_key not in keys or label_key not in keys:
            raise InputFormatError(
                f"{npz_path}: split {split!r} needs arrays {image_key!r} and {label_key!r}; "
                f"the file has {keys}. Pass split= one of the splits present."
            )
        images = data[image_key][:limit] if limit is not None else data[image_key]
        labels = data[label_key][:limit] if limit is not None else data[label_key]
    images, labels = _check_medmnist_arrays(npz_path, image_key, images, label_key, labels)
    names = _label_name_lookup(label_names)
    multi_label = labels.shape[1] > 1
    out_dir = Path(image_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    items: list[KBItem] = []
    written = 0
    for index in range(images.shape[0]):
        row = labels[index]
        if multi_label:
            label_index: Any = [int(j) for j in np.flatnonzero(row)]
            positive = [_label_name(names, j, npz_path, index) for j in label_index]
            label_name = ", ".join(positive) if positive else "none"
        else:
            label_index = int(row[0])
            label_name = _label_name(names, label_index, npz_path, index)
        try:
            caption = caption_template.format(label_name=label_name, label=label_index, split=split, index=index)
        except (KeyError, IndexError, ValueError) as err:
            raise InputFormatError(
                f"caption_template {caption_template!r} is invalid ({err!r}); available placeholders: "
                "{label_name}, {label}, {split}, {index}"
            ) from err
        path = out_dir / f"{npz_path.stem}_{split}_{index:06d}.png"
        pixels = images[index]
        if not (path.is_file() and _png_matches(path, pixels)):
            _write_png_atomic(path, pixels)
            written += 1
        metadata: dict[str, Any] = {"split": split, "index": index, "label_index": label_index}
        if multi_label:
            metadata["labels"] = positive
        items.append(
            KBItem(
                id=f"{npz_path.stem}-{split}-{index}",
                image_path=os.path.abspath(path),  # absolute: valid from any working directory
                text=caption,
                source=source,
                label=None if multi_label else label_name,
                metadata=metadata,
            )
        )
    logger.info(
        "loaded %d pairs from %s split %r (%d PNGs written, %d already present) into %s",
        len(items), npz_path, split, written, len(items) - written, out_dir,
    )
    return items


def _check_medmnist_arrays(
    npz_path: Path, image_key: str, images: np.ndarray, label_key: str, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8:
        raise InputFormatError(f"{npz_path}: {image_key!r} must be uint8 pixels, got {images.dtype}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise InputFormatError(
            f"{npz_path}: {image_key!r} must have shape (n, h, w) or (n, h, w, 3), got {images.shape}; "
            "3-D MedMNIST volumes are not supported (export slices first)"
        )
    if labels.ndim == 1:
        labels = labels[:, None]  # (n,) -> (n, 1)
    if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
        raise InputFormatError(
            f"{npz_path}: {label_key!r} must have shape (n, 1) or (n, L) with n = {images.shape[0]} "
            f"images, got {labels.shape}"
        )
    return images, labels


def _label_name(names: dict[int, str], index: int, npz_path: Path, row: int) -> str:
    if not names:
        return str(index)
    if index not in names:
        raise InputFormatError(
            f"{npz_path} sample {row}: label index {index} has no name in label_names "
            f"(known indices {sorted(names)})"
        )
    return names[index]


def kb_items_from_records(
    records: Iterable[Mapping[str, Any] | KBItem],
    *,
    base_dir: str | Path | None = None,
    default_source: str = "",
) -> list[KBItem]:
    """Build knowledge-base items from Python dicts (the JSONL layout) or ready :class:`KBItem` s.

    Records without an id get ``"record-<position>"`` (0-based).

    Args:
        records: Dicts with ``image_path`` (required), ``text``, ``id``, ``source``, ``label``
            and any extra keys (kept as metadata), or :class:`KBItem` objects (kept as they are).
        base_dir: Folder relative image paths of dicts resolve against (``None``: as given).
        default_source: Source tag for dicts without one.

    Returns:
        The items in input order.

    Raises:
        InputFormatError: A record has no image path, repeats an id, or is neither a dict nor a KBItem.

    Example:
        >>> items = kb_items_from_records([
        ...     {"id": "a", "image_path": "a.png", "text": "cardiomegaly", "view": "PA"},
        ...     KBItem(id="b", image_path="b.png", text="no acute findings"),
        ... ])
        >>> items[0].metadata
        {'view': 'PA'}
    """
    items: list[KBItem] = []
    places: list[str] = []
    for position, record in enumerate(records):
        where = f"record {position}"
        if isinstance(record, KBItem):
            items.append(record)
        elif isinstance(record, Mapping):
            items.append(
                kb_item_from_record(
                    record, where=where, default_id=f"record-{position}", base_dir=base_dir,
                    default_source=default_source,
                )
            )
        else:
            raise InputFormatError(f"{where}: expected a dict or a KBItem, got {type(record).__name__}")
        places.append(where)
    _check_unique(items, places, "kb_items_from_records")
    return items
