"""Loaders for labelled query cases (training, validation and test sets)."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from llama_index_lvlm_retriever.data._text import csv_source, read_utf8_text, text_lines
from llama_index_lvlm_retriever.data.records import Case, resolve_path
from llama_index_lvlm_retriever.errors import InputFormatError
from llama_index_lvlm_retriever.storage.files import atomic_write_text

logger = logging.getLogger(__name__)

_RESERVED_CASE_KEYS = {"id", "image_path", "image", "question", "answer", "answers", "label", "labels"}


def _as_labels(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value)
    if isinstance(value, (str, int, float, bool)):
        return (str(value).strip(),)
    raise InputFormatError(f"{where}: answer must be a string, a number or a list of them, got {type(value).__name__}")


def case_from_record(record: dict[str, Any], *, where: str, base_dir: str | Path | None = None, default_id: str) -> Case:
    """Build a :class:`Case` from one loose record (a JSONL line or a Python dict).

    Accepted shapes: ``{"image_path", "answers"}`` (the paper's classification files; ``answers``
    is a label or a list of labels) or ``{"image_path", "question", "answer"}`` (closed VQA).
    ``label``/``labels`` are accepted as synonyms of ``answer``/``answers``.
    """
    image = record.get("image_path", record.get("image"))
    if not image:
        raise InputFormatError(f"{where}: record has no 'image_path'; every case needs its query image")
    gold: Any = None
    for key in ("answers", "answer", "labels", "label"):
        if key in record:
            gold = record[key]
            break
    metadata = {k: v for k, v in record.items() if k not in _RESERVED_CASE_KEYS}
    return Case(
        id=str(record.get("id", default_id)),
        image_path=resolve_path(str(image), base_dir),
        question=str(record.get("question") or ""),
        labels=_as_labels(gold, where),
        metadata=metadata,
    )


def _check_unique(cases: Sequence[Case], source: str) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise InputFormatError(f"{source}: duplicate case id {case.id!r}; case ids must be unique")
        seen.add(case.id)


def load_cases_jsonl(path: str | Path) -> list[Case]:
    """Load labelled cases from the paper's JSONL layout.

    Each line is ``{"image_path": ..., "answers": ...}`` or
    ``{"image_path": ..., "question": ..., "answer": ...}``, optionally with ``id`` and any extra
    fields (kept as metadata). Relative image paths resolve against the file's folder.

    Args:
        path: The JSONL file.

    Returns:
        The cases in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        InputFormatError: The file is not UTF-8 (a byte-order mark is fine), or a line is not JSON,
            has no ``image_path``, or repeats an id; the message names the file and line.

    Example:
        >>> cases = load_cases_jsonl("train.jsonl")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cases file not found: {path}")
    cases: list[Case] = []
    with text_lines(read_utf8_text(path)) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputFormatError(f"{where}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise InputFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
            cases.append(case_from_record(record, where=where, base_dir=path.parent, default_id=f"{path.stem}-{lineno}"))
    _check_unique(cases, str(path))
    return cases


def load_cases_csv(
    csv_path: str | Path,
    image_dir: str | Path,
    *,
    image_column: str = "image",
    label_column: str = "label",
    question_column: str | None = None,
    id_column: str | None = None,
    label_separator: str | None = None,
) -> list[Case]:
    """Load labelled cases from a CSV whose rows name images inside ``image_dir``.

    Args:
        csv_path: The CSV file (with a header row).
        image_dir: Folder the image column is relative to.
        image_column: Column holding the image file name.
        label_column: Column holding the gold label.
        question_column: Optional column holding a per-case question.
        id_column: Optional id column (default: the image file name's stem).
        label_separator: For multi-label data, the separator inside the label column (e.g. ``"|"``).

    Returns:
        The cases in row order.

    Raises:
        FileNotFoundError: The file does not exist.
        InputFormatError: The file is not UTF-8 (a byte-order mark is fine), or a required column is
            missing (the message lists the columns there are).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"cases file not found: {csv_path}")
    with csv_source(read_utf8_text(csv_path)) as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        for needed in [image_column, label_column, question_column, id_column]:
            if needed is not None and needed not in columns:
                raise InputFormatError(f"{csv_path}: no column {needed!r}; the columns are {columns}")
        cases = []
        for rowno, row in enumerate(reader, start=2):
            if None in row or None in row.values():
                # DictReader files surplus cells under the key None and fills missing ones with None.
                raise InputFormatError(
                    f"{csv_path}:{rowno}: the row has a different number of cells than the header's "
                    f"{len(columns)} columns; quote cells that contain commas or fill the missing ones"
                )
            image = row[image_column]
            if not image:
                raise InputFormatError(f"{csv_path}:{rowno}: empty {image_column!r} cell")
            raw_label = row[label_column]
            labels = tuple(x.strip() for x in raw_label.split(label_separator)) if label_separator else (raw_label.strip(),)
            used = {image_column, label_column, question_column, id_column}
            cases.append(
                Case(
                    id=row[id_column] if id_column else Path(image).stem,
                    image_path=resolve_path(image, image_dir),
                    question=row[question_column] if question_column else "",
                    labels=labels,
                    metadata={k: v for k, v in row.items() if k not in used},
                )
            )
    _check_unique(cases, str(csv_path))
    return cases


def cases_from_records(records: Iterable[dict[str, Any] | Case]) -> list[Case]:
    """Build cases from Python dicts (same keys as the JSONL layout) or pass Cases through."""
    cases = [
        r if isinstance(r, Case) else case_from_record(r, where=f"record {i}", default_id=f"case-{i}")
        for i, r in enumerate(records)
    ]
    _check_unique(cases, "records")
    return cases


def write_cases_jsonl(cases: Sequence[Case], path: str | Path) -> Path:
    """Write cases in the paper's JSONL layout (atomically: temp file, then rename)."""
    lines = []
    for case in cases:
        record: dict[str, Any] = {"id": case.id, "image_path": case.image_path, "answers": list(case.labels)}
        if case.question:
            record["question"] = case.question
        record.update(case.metadata)
        lines.append(json.dumps(record) + "\n")
    return atomic_write_text(path, "".join(lines))
