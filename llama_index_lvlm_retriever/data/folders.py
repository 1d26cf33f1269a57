"""Unlabelled query cases from a folder of images or a DICOM directory (batch prediction input)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from llama_index_lvlm_retriever.data.records import Case

logger = logging.getLogger(__name__)

__all__ = ["DICOM_SUFFIXES", "IMAGE_SUFFIXES", "FolderKind", "cases_from_folder"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm")
"""Files an image folder contributes (lower-cased suffixes; ``.dcm`` needs the ``dicom`` extra)."""
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
"""Suffixes taken as DICOM without reading the file; other files count when they carry the marker."""
FolderKind = Literal["images", "dicom"]
_DICOM_MARKER_OFFSET = 128  # DICOM Part 10: a 128-byte preamble, then b"DICM"
_DICOMDIR = "DICOMDIR"  # a directory index, not an image


def cases_from_folder(folder: str | Path, kind: FolderKind = "images", *, question: str = "") -> list[Case]:
    """One unlabelled :class:`Case` per image below ``folder`` (recursive, sorted by path).

    Args:
        folder: The folder.
        kind: ``"images"``: files with a suffix in :data:`IMAGE_SUFFIXES`. ``"dicom"``: files with a
            suffix in :data:`DICOM_SUFFIXES`, or any other file with the ``DICM`` marker at byte
            128 (DICOM files often have no suffix); ``DICOMDIR`` index files are left out.
        question: The question every case asks (``""`` = the task's default question).

    Returns:
        Cases whose id is the file's path relative to ``folder`` (POSIX form, so ids are unique
        and stable across machines) and whose ``image_path`` is absolute.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: An unknown ``kind``, or no matching file (the message says what was looked for).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (8, 8)).save(root / "a.png")
        >>> [c.id for c in cases_from_folder(root)]
        ['a.png']
    """
    root = Path(folder).expanduser()
    if kind not in ("images", "dicom"):
        raise ValueError(f"kind must be 'images' or 'dicom', got {kind!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}; pass a directory of query images")
    root = root.resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))
    chosen = [p for p in files if (_is_dicom(p) if kind == "dicom" else p.suffix.lower() in IMAGE_SUFFIXES)]
    if not chosen:
        wanted = "DICOM files (.dcm/.dicom or the DICM marker)" if kind == "dicom" else f"images ({', '.join(IMAGE_SUFFIXES)})"
        raise ValueError(f"no {wanted} found below {root}")
    logger.debug("%d %s files below %s", len(chosen), kind, root)
    return [Case(id=p.relative_to(root).as_posix(), image_path=str(p), question=question) for p in chosen]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _is_dicom(path: Path) -> bool:
    if path.name.upper() == _DICOMDIR:
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(_DICOM_MARKER_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False
