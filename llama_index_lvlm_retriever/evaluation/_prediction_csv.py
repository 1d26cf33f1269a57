"""``predictions.csv``: one line per case, each neighbour flattened into numbered columns."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.storage.files import atomic_write_text

# Case-level columns, in order: the row keys themselves (one vocabulary, metadata_keys).
_CASE_COLUMNS = (
    keys.CASE_ID,
    keys.IMAGE_PATH,
    keys.QUESTION,
    keys.GOLD,
    keys.ANSWER,
    keys.PROBABILITY,
    keys.SUPPORT,
    keys.WEIGHTED_SUPPORT,
    keys.CONSISTENT,
    keys.AGREEMENT,
    keys.VOTE_ENTROPY,
    keys.N_DISTINCT,
    keys.ABSTAIN,
    keys.CORRECT,
    keys.ERROR,
)
# Per-neighbour columns ``neighbour<j>_<key>`` (j = 1 for the best retrieved).
_NEIGHBOUR_COLUMNS = (
    keys.NEIGHBOUR_KB_ID,
    keys.NEIGHBOUR_KB_LABEL,
    keys.NEIGHBOUR_HEAD,
    keys.NEIGHBOUR_RETRIEVAL_SCORE,
    keys.NEIGHBOUR_PREDICTION,
    keys.NEIGHBOUR_PROBABILITY,
)
_LIST_SEPARATOR = "|"  # multi-label answers and gold sets, as the CSV case loader splits them


def write_predictions_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write prediction rows as CSV (atomically); returns the path.

    Columns: ``case_id, image_path, question, gold, answer, probability, support,
    weighted_support, consistent, agreement, vote_entropy, n_distinct, abstain, correct, error``
    (the ``predictions.jsonl`` keys), then for each neighbour ``j`` (1 = retrieved first)
    ``neighbour<j>_kb_id, _kb_label, _head, _retrieval_score, _prediction, _probability``, as
    many as the case with the most neighbours has. Lists (multi-label answers, gold sets) are
    joined with ``|``; ``None`` is an empty cell; booleans are ``true``/``false``.
    """
    k = max((len(row.get(keys.NEIGHBOURS) or []) for row in rows), default=0)
    header = list(_CASE_COLUMNS)
    header += [f"neighbour{j}_{key}" for j in range(1, k + 1) for key in _NEIGHBOUR_COLUMNS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        line = [_cell(row.get(key)) for key in _CASE_COLUMNS]
        neighbours = list(row.get(keys.NEIGHBOURS) or [])
        for j in range(k):
            entry = neighbours[j] if j < len(neighbours) else {}
            line += [_cell(entry.get(key)) for key in _NEIGHBOUR_COLUMNS]
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
