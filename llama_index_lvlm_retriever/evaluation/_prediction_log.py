"""The resumable store behind ``predict``: an append-only JSONL of finished rows plus its plan.

``predict_plan.json`` holds the fingerprint of what is being predicted (cases, models, settings).
Rows are appended to ``predictions.jsonl`` one batch at a time and fsynced, so a killed run
loses at most the batch in flight; a rerun with the same plan reads the finished rows back and
scores only the rest. A half-written last line (the kill came mid-write) is cut off before
appending. A different plan in the same folder is refused rather than mixed in.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llama_index_lvlm_retriever.storage.files import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

PREDICTIONS_JSONL = "predictions.jsonl"
PLAN_FILE = "predict_plan.json"
_CASE_ID = "case_id"


class PredictionLog:
    """Append-only, fsynced JSONL of prediction rows, tied to one plan fingerprint.

    Args:
        out_dir: The output folder.
        fingerprint: The plan's fingerprint.
        plan: The plan itself (written next to the rows for humans).
        case_ids: Ids of every case of the plan, to check rows read back.
        resume: Reuse finished rows of the same plan; ``False`` starts over.

    Raises:
        ValueError: The folder holds rows of another plan (with ``resume``).
    """

    def __init__(
        self, out_dir: Path, fingerprint: str, plan: Mapping[str, Any], case_ids: Sequence[str], *, resume: bool = True
    ) -> None:
        self.path = out_dir / PREDICTIONS_JSONL
        self._plan_path = out_dir / PLAN_FILE
        out_dir.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            previous = self._read_fingerprint()
            if resume and previous is not None and previous != fingerprint:
                raise ValueError(
                    f"{out_dir} holds predictions of another run (plan fingerprint {previous} != {fingerprint}: "
                    "other models or settings); pass another output folder, or resume=False "
                    "(--overwrite) to start over"
                )
            if resume and previous == fingerprint:
                self.done = self._read_rows(set(case_ids))
            else:
                # Rows without a plan (or resume=False) cannot be trusted: start over.
                self.path.unlink()
        atomic_write_json(self._plan_path, {"fingerprint": fingerprint, "plan": dict(plan)})
        if self.done:
            logger.info("resuming: %d of %d cases already predicted in %s", len(self.done), len(case_ids), self.path)

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append rows and fsync, so they survive a kill right after this returns."""
        if not rows:
            return
        text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        for row in rows:
            self.done[str(row[_CASE_ID])] = dict(row)

    def rewrite(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace the file by ``rows`` (case order) atomically, once every case is done."""
        atomic_write_text(self.path, "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))

    def _read_fingerprint(self) -> str | None:
        if not self._plan_path.is_file():
            return None
        try:
            return str(json.loads(self._plan_path.read_text(encoding="utf-8"))["fingerprint"])
        except (json.JSONDecodeError, KeyError, TypeError):
            return None

    def _read_rows(self, case_ids: set[str]) -> dict[str, dict[str, Any]]:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A kill mid-write leaves a partial last line: drop it so new rows start on a fresh line.
            logger.warning("dropping a half-written last line of %s", self.path)
            with self.path.open("r+b") as handle:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())
        rows: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}:{number} is not valid JSON ({err.msg}); delete the file to start over") from err
            case_id = str(row.get(_CASE_ID))
            if case_id in case_ids:
                rows[case_id] = row
        return rows
