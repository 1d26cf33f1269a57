"""Plain records that flow through the package: knowledge-base pairs and labelled cases."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class KBItem:
    """One image-text pair of the knowledge base.

    Args:
        id: Unique id of the pair inside its knowledge base.
        image_path: Path of the image file (PNG/JPEG/..., or DICOM with the ``dicom`` extra).
        text: The caption or report that goes with the image.
        source: Where the pair comes from (e.g. ``"mimic-cxr"``, ``"roco"``).
        label: Optional class label name (used by evaluation for neighbour label precision).
        metadata: Any extra JSON-serialisable fields.

    Example:
        >>> KBItem(id="cxr-1", image_path="img/1.png", text="No acute findings.", source="demo")
        KBItem(id='cxr-1', image_path='img/1.png', text='No acute findings.', source='demo', label=None, metadata={})
    """

    id: str
    image_path: str
    text: str
    source: str = ""
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (the KB JSONL layout plus ``label``)."""
        return {
            "id": self.id,
            "image_path": self.image_path,
            "text": self.text,
            "source": self.source,
            "label": self.label,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> KBItem:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=str(record["id"]),
            image_path=str(record["image_path"]),
            text=str(record.get("text", "")),
            source=str(record.get("source", "")),
            label=None if record.get("label") is None else str(record["label"]),
            metadata=dict(record.get("metadata", {})),
        )


@dataclass(frozen=True)
class Case:
    """A query: one image, an optional question and, for labelled data, its gold label(s).

    Args:
        id: Unique id of the case.
        image_path: Path of the query image.
        question: The question asked about the image ("" means the task's default question).
        labels: Gold label names; one for single-label tasks, any number for multi-label,
            empty for an unlabelled query.
        metadata: Any extra JSON-serialisable fields.
    """

    id: str
    image_path: str
    question: str = ""
    labels: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The single gold label; raises if the case has none or several."""
        if len(self.labels) != 1:
            raise ValueError(
                f"case {self.id!r} has {len(self.labels)} gold labels {list(self.labels)}; "
                "a single-label task needs exactly one"
            )
        return self.labels[0]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "id": self.id,
            "image_path": self.image_path,
            "question": self.question,
            "labels": list(self.labels),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Case:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=str(record["id"]),
            image_path=str(record["image_path"]),
            question=str(record.get("question", "")),
            labels=tuple(str(x) for x in record.get("labels", ())),
            metadata=dict(record.get("metadata", {})),
        )


def resolve_path(path: str | Path, base_dir: str | Path | None) -> str:
    """Resolve a possibly relative path against ``base_dir`` (the folder of the file naming it).

    With a ``base_dir`` the result is absolute (``base_dir`` itself is made absolute against the
    working directory, ``..`` collapsed, symlinks kept), so a knowledge base or cases list built
    in one folder still finds its images when used from another: the stored path does not depend
    on the working directory at build time. Without one the path is returned as given
    (``~`` expanded), for records built in Python.
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    if base_dir is None:
        return str(p)
    return os.path.abspath(Path(base_dir).expanduser() / p)
