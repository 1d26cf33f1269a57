"""``predictions.csv``: one line per case, each neighbour flattened into numbered columns."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llama_index_lvlm_retriever import metadata_keys as keys
from llama_index_lvlm_retriever._io import atomic_write_text
from llama_index_lvlm_retriever.evaluation._prediction_rows import (
    ROW_CASE_ID,
    ROW_CORRECT,
    ROW_ERROR,
    ROW_GOLD,
    ROW_IMAGE_PATH,
    ROW_QUESTION,
)

# Case-level columns, in order: (CSV column, row key).
_CASE_COLUMNS = (
    ("case_id", ROW_CASE_ID),
    ("image_path", ROW_IMAGE_PATH),
    ("question", ROW_QUESTION),
    ("gold", ROW_GOLD),
    ("answer", keys.LABEL),
    ("probability", keys.LABEL_PROBABILITY),
    ("support", keys.SUPPORT),
    ("weighted_support", keys.WEIGHTED_SUPPORT),
    ("consistent", keys.CONSISTENT),
    ("agreement", keys.AGREEMENT),
    ("abstain", keys.ABSTAIN),
    ("correct", ROW_CORRECT),
    ("error", ROW_ERROR),
)
# Per-neighbour columns ``neighbour<j>_<name>`` (j = 1 for the best retrieved): (name, key).
_NEIGHBOUR_COLUMNS = (
    ("id", keys.NEIGHBOUR_KB_ID),
    ("head", keys.NEIGHBOUR_HEAD),
    ("score", keys.NEIGHBOUR_RETRIEVAL_SCORE),
    ("prediction", keys.NEIGHBOUR_LABEL),
    ("probability", keys.NEIGHBOUR_PROBABILITY),
)
_LIST_SEPARATOR = "|"  # multi-label answers and gold sets, as the CSV case loader splits them


def write_predictions_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write prediction rows as CSV (atomically); returns the path.

    Columns: ``case_id, image_path, question, gold, answer, probability, support,
    weighted_support, consistent, agreement, abstain, correct, error``, then for each neighbour
    ``j`` (1 = retrieved first) ``neighbour<j>_id, _head, _score, _prediction, _probability``, as
    many as the case with the most neighbours has. Lists (multi-label answers, gold sets) are
    joined with ``|``; ``None`` is an empty cell; booleans are ``true``/``false``.
    """
    k = max((len(row.get(keys.NEIGHBOUR_PREDICTIONS) or []) for row in rows), default=0)
    header = [name for name, _ in _CASE_COLUMNS]
    header += [f"neighbour{j}_{name}" for j in range(1, k + 1) for name, _ in _NEIGHBOUR_COLUMNS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        line = [_cell(row.get(key)) for _, key in _CASE_COLUMNS]
        neighbours = list(row.get(keys.NEIGHBOUR_PREDICTIONS) or [])
        for j in range(k):
            entry = neighbours[j] if j < len(neighbours) else {}
            line += [_cell(entry.get(key)) for _, key in _NEIGHBOUR_COLUMNS]
        writer.writerow(line)
    return atomic_write_text(Path(path), buffer.getvalue())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return _LIST_SEPARATOR.join(str(v) for v in value)
    return str(value)
