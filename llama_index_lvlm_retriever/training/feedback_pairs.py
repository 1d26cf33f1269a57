"""Reader scores of (case, KB item) pairs found after collection, kept with the feedback cache.

A feedback cache holds, per case, the reader's scores of the candidates the collecting retriever
returned. A trained head retrieves other items too: real-retrieval validation and feedback rounds
need the reader's scores of those (case, item) pairs, and each pair must be scored once however
often it comes back. :class:`PairScoreStore` keeps them next to the cache's shards::

    pairs-00000.safetensors    label_log_probs (P, L) float32 of P pairs
    pairs-00000.json           their case ids and KB ids, the tensors' hash (written last)

Each ``reader.score`` batch is appended as one such pair of files, atomically, so a crash loses at
most the batch in flight and a rerun resumes where it stopped. One process writes a store at a time.

:func:`score_pairs` is the one entry point: it returns the label log-probabilities of any list of
pairs, looking them up in the cache's candidate pools, then in the store, and scoring only the
rest with the reader (appending them to the store).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save

from llama_index_lvlm_retriever.training._feedback_shards import atomic_write, json_bytes
from llama_index_lvlm_retriever.training._reader_scoring import _gold_log_probs, _score_pairs

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.data.records import Case, KBItem
    from llama_index_lvlm_retriever.readers.base import Reader
    from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache

logger = logging.getLogger(__name__)

PAIRS_PREFIX = "pairs-"
_LABEL_LOG_PROBS = "label_log_probs"
Pair = tuple[str, str]
"""``(case id, KB item id)``."""


class PairScoreStore:
    """Append-only store of the reader's label log-probabilities per (case id, KB id) pair.

    Args:
        folder: Where the pair files live (a feedback cache directory); ``None`` keeps them in memory.

    Example:
        .. code-block:: python

            store = PairScoreStore.load("runs/feedback")
            store.add([("case-1", "kb-7")], torch.log(torch.tensor([[0.7, 0.3]])))
            store.get(("case-1", "kb-7"))  # tensor([-0.3567, -1.2040])
    """

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder
        self._scores: dict[Pair, torch.Tensor] = {}
        self._n_files = 0

    @classmethod
    def load(cls, folder: str | Path | None) -> PairScoreStore:
        """Read every finished pair file of ``folder`` (none yet is fine).

        Raises:
            ValueError: A pair file does not match the hash its JSON records (modified or corrupt).
        """
        store = cls(None if folder is None else Path(folder))
        if store._folder is None or not store._folder.is_dir():
            return store
        for meta_path in sorted(store._folder.glob(f"{PAIRS_PREFIX}*.json")):
            tensor_path = meta_path.with_suffix(".safetensors")
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            data = tensor_path.read_bytes() if tensor_path.is_file() else b""
            if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
                raise ValueError(
                    f"{tensor_path} does not match the hash in {meta_path.name} (modified or corrupt); delete both "
                    "files and rerun: the pairs they held are scored again"
                )
            log_probs = _safetensors_load(data)[_LABEL_LOG_PROBS]  # (P, L)
            for row, pair in enumerate(zip(meta["case_ids"], meta["kb_ids"])):
                store._scores[pair] = log_probs[row]
            store._n_files += 1
        return store

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, pair: object) -> bool:
        return pair in self._scores

    def get(self, pair: Pair) -> torch.Tensor | None:
        """The pair's label log-probabilities ``(L,)``, or ``None`` when it was never scored."""
        return self._scores.get(pair)

    def add(self, pairs: Sequence[Pair], log_probs: torch.Tensor) -> None:
        """Store newly scored pairs (persisted at once when the store has a folder).

        Args:
            pairs: ``P`` (case id, KB id) pairs.
            log_probs: ``(P, L)`` label log-probabilities, row ``p`` for ``pairs[p]``.
        """
        if not pairs:
            return
        log_probs = log_probs.detach().float().cpu().contiguous()  # (P, L)
        if self._folder is not None:
            self._folder.mkdir(parents=True, exist_ok=True)
            stem = self._folder / f"{PAIRS_PREFIX}{self._next_index():05d}"
            data = _safetensors_save({_LABEL_LOG_PROBS: log_probs}, metadata={"format": "pt"})
            atomic_write(stem.with_suffix(".safetensors"), data)
            meta = {
                "case_ids": [c for c, _ in pairs],
                "kb_ids": [k for _, k in pairs],
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            atomic_write(stem.with_suffix(".json"), json_bytes(meta))  # last: marks the file finished
            self._n_files += 1
        for row, pair in enumerate(pairs):
            self._scores[pair] = log_probs[row]

    def _next_index(self) -> int:
        assert self._folder is not None
        taken = {p.stem for p in self._folder.glob(f"{PAIRS_PREFIX}*.json")}
        index = self._n_files
        while f"{PAIRS_PREFIX}{index:05d}" in taken:
            index += 1
        return index


def pool_lookup(cache: FeedbackCache) -> dict[Pair, tuple[str, int, int]]:
    """Where each (case id, KB id) pair of the cache's candidate pools sits: ``(head, row, column)``."""
    out: dict[Pair, tuple[str, int, int]] = {}
    ids = cache.case_ids
    for head in cache.heads:
        for row, candidates in enumerate(cache.candidate_ids(head)):
            for col, kb_id in enumerate(candidates):
                out.setdefault((ids[row], kb_id), (head, row, col))
    return out


def score_pairs(
    cache: FeedbackCache,
    pairs: Sequence[tuple[str, KBItem]],
    reader: Reader,
    cases: Mapping[str, Case],
    *,
    batch_size: int = 64,
    pool: Mapping[Pair, tuple[str, int, int]] | None = None,
) -> tuple[dict[Pair, torch.Tensor], int]:
    """Label log-probabilities of ``pairs``, scoring with the reader only those never scored before.

    Looks each (case id, item) pair up in the cache's candidate pools, then in its
    :class:`PairScoreStore`; the rest are scored, one candidate per reader pass, ``batch_size``
    pairs per ``reader.score`` call, and each batch is appended to the store before the next.

    Args:
        cache: The feedback cache of these cases (scored by ``reader``: the caller checks).
        pairs: ``(case id, KB item)`` pairs; duplicates are scored once.
        reader: The frozen reader.
        cases: The Case records by id (the reader needs the query image and question).
        batch_size: Pairs per ``reader.score`` call.
        pool: :func:`pool_lookup` of ``cache``, when the caller keeps one (it is rebuilt otherwise).

    Returns:
        ``({(case id, KB id): (L,) label log-probs}, number of pairs scored by the reader now)``.

    Raises:
        ValueError: A case id has no Case record, or the reader returns a bad shape or NaN.
    """

    pool = pool_lookup(cache) if pool is None else pool
    store = cache.pair_store
    out: dict[Pair, torch.Tensor] = {}
    missing: list[tuple[str, KBItem]] = []
    for case_id, item in pairs:
        key = (case_id, item.id)
        if key in out:
            continue
        where = pool.get(key)
        if where is not None:
            head, row, col = where
            out[key] = cache.label_log_probs(head)[row, col]
        elif key in store:
            out[key] = store.get(key)  # type: ignore[assignment]
        else:
            out[key] = torch.empty(0)  # placeholder: filled below, keeps duplicates out of ``missing``
            missing.append((case_id, item))
    absent = sorted({cid for cid, _ in missing if cid not in cases})
    if absent:
        raise ValueError(
            f"pairs of case {absent[0]!r} ({len(absent)} cases) need the reader, but no Case record was given for "
            "it; pass the cases (cases= / validation_cases=) the feedback was collected for"
        )
    n_labels = len(cache.labels)
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        chunk_cases = [cases[cid] for cid, _ in chunk]
        with _null_bar() as bar:
            log_probs = _score_pairs(chunk_cases, [(i, item) for i, (_, item) in enumerate(chunk)], reader,
                                     len(chunk), n_labels, bar)  # (P, L)
        keys = [(cid, item.id) for cid, item in chunk]
        store.add(keys, log_probs)
        for row, key in enumerate(keys):
            out[key] = log_probs[row]
    if missing:
        logger.debug("scored %d new (case, candidate) pairs with the reader", len(missing))
    return out, len(missing)


class _null_bar:  # noqa: N801 - a context manager used like tqdm(disable=True)
    """A progress-bar stand-in for ``feedback._score_pairs`` (it only calls ``update``)."""

    def __enter__(self) -> _null_bar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        """Ignore progress."""


def gold_log_probs(label_log_probs: torch.Tensor, gold: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """``log P(gold | candidate)`` ``(n, N)`` from label log-probs ``(n, N, L)`` and multi-hot gold ``(n, L)``."""
    return _gold_log_probs(label_log_probs, gold, multi_label)


def as_numpy_probs(log_probs: torch.Tensor) -> np.ndarray:
    """Probabilities (float64 numpy) from log-probabilities, for the aggregation module."""
    return log_probs.double().exp().numpy()


__all__ = ["PAIRS_PREFIX", "Pair", "PairScoreStore", "as_numpy_probs", "gold_log_probs", "pool_lookup", "score_pairs"]
