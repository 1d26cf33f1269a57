"""``CachedReader``: memoise a reader's label scores per (case, candidate) pair.

Comparing retrieval systems (standard RAG, an LVLM-aware retriever, a placebo) on the same cases
asks the reader about mostly the same (case, neighbour) pairs again and again. The reader is
deterministic and frozen during evaluation, so each pair needs to go through the model once:
``CachedReader`` forwards only the pairs it has not seen, in one batched call, and assembles the
rest from memory. Keys are ``(case.id, candidate.id)`` (``None`` for closed-book), so case and
knowledge-base ids must identify their content while the cache lives.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs

logger = logging.getLogger(__name__)

__all__ = ["CachedReader"]

_PairKey = tuple[str, str | None]


class CachedReader(Reader):
    """Wrap a frozen reader so that each (case id, candidate id) pair is scored once.

    Args:
        reader: The reader to wrap; its ``task`` and ``model_name`` are exposed unchanged.

    Example:
        >>> cached = CachedReader(reader)  # doctest: +SKIP
        >>> report = evaluate_dataset(cases, systems, cached)  # doctest: +SKIP
        >>> cached.hits, cached.misses  # doctest: +SKIP
        (5120, 2210)
    """

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.task = reader.task
        self.model_name = getattr(reader, "model_name", type(reader).__name__)
        self._log_probs: dict[_PairKey, np.ndarray] = {}  # key -> (L,)
        self._raw: dict[_PairKey, np.ndarray] = {}  # key -> (L,), when the reader gives raw scores
        self._parsed: dict[_PairKey, bool] = {}  # when the reader marks unparseable answers
        self.hits = 0
        """Pairs answered from memory so far."""
        self.misses = 0
        """Pairs sent to the wrapped reader so far."""

    def __len__(self) -> int:
        return len(self._log_probs)

    def prefill(self, pairs: Iterable[tuple[str, str | None, np.ndarray]]) -> int:
        """Store label log-probabilities computed elsewhere (e.g. a feedback cache of the same reader).

        Args:
            pairs: ``(case id, candidate id or None, (L,) log-probabilities)`` triples; pairs already
                held are left as they are.

        Returns:
            How many pairs were added.

        Raises:
            ValueError: A row does not have one value per label of the task.
        """
        added, n_labels = 0, len(self.task.labels)
        for case_id, candidate_id, log_probs in pairs:
            row = np.asarray(log_probs, dtype=np.float64)
            if row.shape != (n_labels,):
                raise ValueError(
                    f"prefill: pair ({case_id!r}, {candidate_id!r}) has {row.shape} log-probabilities, expected "
                    f"({n_labels},) (one per label of task {self.task.name!r}); was it scored for another task?"
                )
            key = (case_id, candidate_id)
            if key not in self._log_probs:
                self._log_probs[key] = row
                added += 1
        return added

    def clear(self) -> None:
        """Forget every cached pair (e.g. after the wrapped reader was fine-tuned)."""
        self._log_probs.clear()
        self._raw.clear()
        self._parsed.clear()

    def score(
        self,
        cases: Sequence[Case],
        candidates: Sequence[Sequence[KBItem | None]],
        *,
        show_progress: bool = False,
    ) -> ReaderScores:
        """Label log-probabilities per (case, candidate); unseen pairs go through the reader once.

        Raises:
            ValueError: Mismatched inputs (as the wrapped reader would).
        """
        k = check_inputs(cases, candidates)
        if not cases:
            # Nothing to look up (np.stack below needs a row); the wrapped reader's empty scores.
            return self.reader.score(cases, candidates, show_progress=show_progress)
        keys = [[(case.id, None if c is None else c.id) for c in row] for case, row in zip(cases, candidates)]
        missing: dict[_PairKey, tuple[Case, KBItem | None]] = {}
        for case, row, key_row in zip(cases, candidates, keys):
            for candidate, key in zip(row, key_row):
                if key not in self._log_probs and key not in missing:
                    missing[key] = (case, candidate)
        n_pairs = len(cases) * k
        self.misses += len(missing)
        self.hits += n_pairs - len(missing)
        if missing:
            # One candidate per row, so the wrapped reader batches all missing pairs in one call.
            pairs = list(missing.values())
            fresh = self.reader.score([case for case, _ in pairs], [[c] for _, c in pairs], show_progress=show_progress)
            for index, key in enumerate(missing):
                self._log_probs[key] = np.asarray(fresh.log_probs[index, 0], dtype=np.float64)
                if fresh.raw_log_likelihoods is not None:
                    self._raw[key] = np.asarray(fresh.raw_log_likelihoods[index, 0], dtype=np.float64)
                if fresh.parsed is not None:
                    self._parsed[key] = bool(fresh.parsed[index, 0])
        log_probs = np.stack([np.stack([self._log_probs[key] for key in row]) for row in keys])  # (n, k, L)
        has_raw = all(key in self._raw for row in keys for key in row)
        raw = np.stack([np.stack([self._raw[key] for key in row]) for row in keys]) if has_raw else None
        has_parsed = any(key in self._parsed for row in keys for key in row)
        parsed = np.array([[self._parsed.get(key, True) for key in row] for row in keys]) if has_parsed else None
        return ReaderScores(
            log_probs=log_probs,
            raw_log_likelihoods=raw,
            parsed=parsed,
            labels=tuple(self.task.labels),
            multi_label=bool(self.task.multi_label),
            case_ids=tuple(case.id for case in cases),
            candidate_ids=tuple(tuple(key[1] for key in row) for row in keys),
        )

