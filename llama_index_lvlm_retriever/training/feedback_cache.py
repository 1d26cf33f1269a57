"""FeedbackCache: the frozen reader's feedback on retrieved candidates, stored as a directory of shards.

Layout of a cache directory (written by :func:`~llama_index_lvlm_retriever.training.feedback.collect_feedback`
or :meth:`FeedbackCache.persist`)::

    manifest.json              format, retriever + reader identity, task, config, case ids, shard list
    shard-00000.safetensors    the tensors of cases [0, shard_size)
    shard-00000.json           those cases' ids, their candidates' KB ids, a hash of the tensors
    shard-00001.safetensors    ...
    pairs-00000.safetensors    reader scores of pairs found after collection (validation, rounds);
    pairs-00000.json           see :mod:`~llama_index_lvlm_retriever.training.feedback_pairs`

Tensors of a shard with ``s`` cases (``N`` candidates per head, ``L`` labels, ``d`` = query dim)::

    query_embeddings           (s, d)     float32  frozen query embedding (before any head)
    <head>.positions           (s, N)     int64    KB row of each candidate, best first; -1 = none
    <head>.retrieval_scores    (s, N)     float32  the collecting retriever's cosine; 0 where none
    <head>.gold_log_probs      (s, N)     float32  log P_reader(gold | case, candidate)
    <head>.label_log_probs     (s, N, L)  float32  the reader's log-distribution over labels
    <head>.mask                (s, N)     bool     True where a candidate exists (short lists)

``<head>`` is ``image`` or ``text``. For a multi-label task, ``label_log_probs`` holds per-label
``log P(label present)`` and ``gold_log_probs`` the log-probability of the exact gold label set under
independent labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load as _safetensors_load

from llama_index_lvlm_retriever.aggregation import MULTI_LABEL_THRESHOLD
from llama_index_lvlm_retriever.errors import FeedbackCacheError
from llama_index_lvlm_retriever.storage.files import naming_path
from llama_index_lvlm_retriever.storage.locking import folder_lock
from llama_index_lvlm_retriever.storage.versioned import (
    ChecksumMismatchError,
    MissingStoreFileError,
    fsync_dir,
    load_consistent,
    remove_unreferenced,
)
from llama_index_lvlm_retriever.training._feedback_manifest import check_feedback_manifest
from llama_index_lvlm_retriever.training._feedback_shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HEAD_TENSORS,
    MANIFEST_FILE,
    QUERY_EMBEDDINGS,
    SHARD_PREFIX,
    atomic_write,
    is_shard_file,
    json_bytes,
    plan_fingerprint,
    shard_name,
    write_shard,
)
from llama_index_lvlm_retriever.training._identity import (
    describe_identity,
    identity_mismatch,
    reader_identity,
    retriever_identity,
)
from llama_index_lvlm_retriever.training.feedback_pairs import PairScoreStore

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.readers.base import Reader
    from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _HeadArrays:
    """One head's cached candidates; every tensor's first dimension is the case."""

    positions: torch.Tensor  # (n, N) int64
    retrieval_scores: torch.Tensor  # (n, N) float32
    gold_log_probs: torch.Tensor  # (n, N) float32
    label_log_probs: torch.Tensor  # (n, N, L) float32
    mask: torch.Tensor  # (n, N) bool

    def select(self, index: torch.Tensor) -> _HeadArrays:
        return _HeadArrays(*(getattr(self, name)[index] for name in HEAD_TENSORS))


_RECOLLECT = "delete the cache folder and collect the feedback again"


class FeedbackCache:
    """Cached reader feedback for retriever training, one row per case (LlamaIndex-store shaped).

    Built by :func:`~llama_index_lvlm_retriever.training.feedback.collect_feedback`, loaded with
    :meth:`from_persist_dir`, written with :meth:`persist`. The accessors return tensors ready for
    training; per-head accessors take ``"image"`` or ``"text"``. Treat returned tensors as read-only.

    Args:
        manifest: The cache's manifest (identities, task, config, case ids).
        query_embeddings: ``(n, d)`` frozen query embeddings.
        heads: Per head, its cached candidate tensors.
        candidate_ids: Per head, each case's candidate KB ids (``None`` = read lazily from shards).
        persist_dir: The directory it was loaded from, if any.

    Raises:
        ValueError: The cache holds no case.

    Example:
        .. code-block:: python

            cache = FeedbackCache.from_persist_dir("feedback/", retriever=retriever, reader=reader)
            scores = cache.retrieval_scores("text")  # (n, N)
            gold = cache.gold_log_probs("text")      # (n, N)
            print(len(cache), cache.disagree().float().mean())
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        query_embeddings: torch.Tensor,
        heads: dict[str, _HeadArrays],
        *,
        candidate_ids: dict[str, list[list[str]]] | None = None,
        persist_dir: Path | None = None,
        pair_store: PairScoreStore | None = None,
    ) -> None:
        self._manifest = {key: value for key, value in manifest.items() if key != "shards"}
        self._shards: list[dict[str, Any]] = list(manifest.get("shards", []))
        if query_embeddings.shape[0] == 0:
            where = f" in {persist_dir}" if persist_dir is not None else ""
            raise ValueError(
                f"the feedback cache{where} is empty (0 cases); collect feedback on at least one case "
                "with collect_feedback(cases, ...)"
            )
        self._query_embeddings = query_embeddings
        self._heads = heads
        self._candidate_ids = candidate_ids
        self._persist_dir = persist_dir
        self._pair_store = pair_store

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def class_name(cls) -> str:
        """Stable name of the component."""
        return "FeedbackCache"

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | Path,
        *,
        retriever: LVLMAwareRetriever | None = None,
        reader: Reader | None = None,
    ) -> FeedbackCache:
        """Load a finished cache; optionally check that it belongs to a retriever and a reader.

        Args:
            persist_dir: Folder written by ``collect_feedback`` or :meth:`persist`.
            retriever: When given, the cache must have been collected with it.
            reader: When given, the cache must have been scored by it.

        Returns:
            The cache.

        Raises:
            FileNotFoundError: The folder or its manifest is missing (an unfinished collection).
            ValueError: The manifest or a shard is corrupt, the cache is empty, or it was made with
                another retriever or reader (the message names both).
        """
        folder = Path(persist_dir)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"feedback cache directory not found: {folder}; create one with collect_feedback(..., cache_dir=...)"
            )
        # One version: the shards the manifest names; a re-persist racing this load is read again.
        cache = load_consistent(folder / MANIFEST_FILE, lambda: cls._load_once(folder))
        if retriever is not None:
            cache.check_retriever(retriever)
        if reader is not None:
            cache.check_reader(reader)
        return cache

    @classmethod
    def _load_once(cls, folder: Path) -> FeedbackCache:
        manifest_path = folder / MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{folder} has no {MANIFEST_FILE}: it is not a feedback cache or its collection has not "
                "finished; rerun collect_feedback with the same arguments to resume it"
            )
        try:
            with naming_path("cannot read", manifest_path):
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise FeedbackCacheError(f"{manifest_path} is not valid JSON ({err}); collect the feedback again") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise FeedbackCacheError(f"{manifest_path} is not a feedback-cache manifest (format {FORMAT_NAME!r} expected)")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise FeedbackCacheError(
                f"{manifest_path} has format version {manifest.get('format_version')!r}; this package reads "
                f"version {FORMAT_VERSION}. Collect the feedback again with this version."
            )
        check_feedback_manifest(manifest, manifest_path)
        heads = [str(h) for h in manifest["heads"]]
        parts: dict[str, list[torch.Tensor]] = {QUERY_EMBEDDINGS: []}
        parts.update({f"{h}.{name}": [] for h in heads for name in HEAD_TENSORS})
        for shard in manifest.get("shards", []):
            name = str(shard["name"])
            if Path(name).name != name or not name.startswith(SHARD_PREFIX):
                raise FeedbackCacheError(
                    f"{manifest_path} names shard {name!r}, which is not a shard file name in {folder}; collect the feedback again"
                )
            path = folder / f"{name}.safetensors"
            if not path.is_file():
                raise MissingStoreFileError(f"feedback cache {folder} lacks shard file {path.name}; collect the feedback again")
            with naming_path("cannot read feedback shard", path):
                data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != shard["sha256"]:
                raise ChecksumMismatchError(
                    f"shard {path} does not match the hash in {manifest_path} (modified or corrupt); "
                    "delete the cache directory and collect the feedback again"
                )
            tensors = _safetensors_load(data)
            missing = sorted(set(parts) - set(tensors))
            if missing:
                # The hash matched, so the shard is intact: the manifest's heads do not describe it.
                raise FeedbackCacheError(f"shard {path} lacks tensors {missing} for the heads {heads} in {manifest_path}; {_RECOLLECT}")
            for key, chunks in parts.items():
                chunks.append(tensors[key])
        if not manifest.get("shards"):
            raise FeedbackCacheError(
                f"the feedback cache in {folder} is empty (no shards, 0 cases); collect feedback on at "
                "least one case"
            )
        joined = {key: torch.cat(chunks, dim=0) for key, chunks in parts.items()}
        return cls(
            manifest,
            joined[QUERY_EMBEDDINGS],
            {h: _HeadArrays(*(joined[f"{h}.{name}"] for name in HEAD_TENSORS)) for h in heads},
            persist_dir=folder,
        )

    def persist(self, persist_dir: str | Path, *, shard_size: int | None = None) -> Path:
        """Write the cache as shards plus a manifest (each file atomically, the manifest last).

        Shards get names tagged for this write and the manifest is replaced last, then the previous
        shards are deleted (under the folder's write lock): re-persisting over a cache, killed at any
        point, leaves the old cache or the new one.

        Args:
            persist_dir: Target folder (created if missing).
            shard_size: Cases per shard; ``None`` = the collection's ``shard_size``.

        Returns:
            The folder.
        """
        folder = Path(persist_dir)
        size = int(shard_size or self._manifest["config"]["shard_size"])
        fingerprint = plan_fingerprint(self._manifest)
        ids = self.case_ids
        cand = {h: self.candidate_ids(h) for h in self.heads}  # read before the old shards can go
        generation = uuid.uuid4().hex[:12]
        shards = []
        with folder_lock(folder):
            for index, start in enumerate(range(0, len(self), size)):
                stop = min(start + size, len(self))
                rows = torch.arange(start, stop)
                # Tagged names: the shards the current manifest names stay untouched until it is replaced.
                stem = f"{shard_name(index)}-{generation}"
                digest = write_shard(
                    folder,
                    index,
                    self._tensors(rows),
                    fingerprint=fingerprint,
                    case_ids=ids[start:stop],
                    candidate_ids={h: cand[h][start:stop] for h in self.heads},
                    stem=stem,
                )
                shards.append({"name": stem, "start": start, "stop": stop, "sha256": digest})
            atomic_write(folder / MANIFEST_FILE, json_bytes({**self._manifest, "shards": shards}))  # the commit point
            fsync_dir(folder)
            keep = {f"{shard['name']}{ext}" for shard in shards for ext in (".safetensors", ".json")}
            remove_unreferenced(folder, keep=keep | {MANIFEST_FILE}, owns=is_shard_file)
        logger.info("persisted a feedback cache of %d cases in %d shards to %s", len(self), len(shards), folder)
        return folder

    def _tensors(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        tensors = {QUERY_EMBEDDINGS: self._query_embeddings[rows]}
        for head, arrays in self._heads.items():
            for name in HEAD_TENSORS:
                tensors[f"{head}.{name}"] = getattr(arrays, name)[rows]
        return tensors

    # ------------------------------------------------------------------ identity checks
    def check_retriever(self, retriever: LVLMAwareRetriever) -> None:
        """Raise unless ``retriever`` is the one that drew the cached candidates.

        Raises:
            ValueError: Names the cache's retriever, the given one, and the differing fields.
        """
        saved = self._manifest["retriever"]
        diff = identity_mismatch(saved, retriever_identity(retriever))
        if diff is not None:
            raise ValueError(
                f"feedback cache {self._where()} was collected with another retriever than the one given: "
                f"cache: [{describe_identity(saved)}]; given: [{describe_identity(retriever_identity(retriever))}]; "
                f"differences: {diff}. Collect feedback with this retriever, or pass the retriever that made it."
            )

    def check_reader(self, reader: Reader) -> None:
        """Raise unless ``reader`` is the one that scored the cached candidates.

        Raises:
            ValueError: Names the cache's reader, the given one, and the differing fields.
        """
        saved = self._manifest["reader"]
        given = reader_identity(reader)
        diff = identity_mismatch(saved, given)
        if diff is not None:
            raise ValueError(
                f"feedback cache {self._where()} was scored by another reader than the one given: "
                f"cache: [{describe_identity(saved)}]; given: [{describe_identity(given)}]; "
                f"differences: {diff}. Collect feedback with this reader, or pass the reader that made it."
            )

    def _where(self) -> str:
        return str(self._persist_dir) if self._persist_dir is not None else "(in memory)"

    # ------------------------------------------------------------------ description
    def __len__(self) -> int:
        return int(self._query_embeddings.shape[0])

    def __repr__(self) -> str:
        return (
            f"FeedbackCache(n_cases={len(self)}, heads={list(self.heads)}, n_candidates={self.n_candidates}, "
            f"labels={len(self.labels)}, dir={self._where()})"
        )

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest (without the shard list)."""
        return json.loads(json.dumps(self._manifest))

    @property
    def pair_store(self) -> PairScoreStore:
        """Reader scores of pairs outside the candidate pools, kept in the cache's folder.

        Loaded on first use; a subset (:meth:`select`, :meth:`split`) shares its parent's store, so
        pairs scored for a validation split land in the parent cache's folder.
        """
        if self._pair_store is None:
            self._pair_store = PairScoreStore.load(self._persist_dir)
        return self._pair_store

    @property
    def persist_dir(self) -> Path | None:
        """Where the cache was loaded from (``None`` for an in-memory subset)."""
        return self._persist_dir

    @property
    def case_ids(self) -> list[str]:
        """Case ids, in row order."""
        return list(self._manifest["case_ids"])

    @property
    def heads(self) -> tuple[str, ...]:
        """Heads with cached candidates."""
        return tuple(self._heads)

    @property
    def n_candidates(self) -> int:
        """Candidates per case and head (``N``)."""
        return int(self._manifest["n_candidates"])

    @property
    def dim(self) -> int:
        """Dimension of the frozen query embeddings."""
        return int(self._query_embeddings.shape[1])

    @property
    def labels(self) -> list[str]:
        """The task's label names, in the order of the last axis of :meth:`label_log_probs`."""
        return list(self._manifest["task"]["labels"])

    @property
    def multi_label(self) -> bool:
        """Whether the task is multi-label."""
        return bool(self._manifest["task"]["multi_label"])

    @property
    def retriever_k(self) -> dict[str, int]:
        """The collecting retriever's ``k`` per head (the default top-k of :meth:`disagree`)."""
        return {str(k): int(v) for k, v in self._manifest["retriever_k"].items()}

    # ------------------------------------------------------------------ tensors
    @property
    def query_embeddings(self) -> torch.Tensor:
        """Frozen query embeddings, ``(n, d)`` float32."""
        return self._query_embeddings

    def _head(self, head: str) -> _HeadArrays:
        if head not in self._heads:
            raise KeyError(
                f"the feedback cache has no candidates for head {head!r}; it holds {list(self._heads)}. "
                "Collect feedback with FeedbackConfig(heads=...) including it."
            )
        return self._heads[head]

    def candidate_positions(self, head: str) -> torch.Tensor:
        """KB row of each candidate, best first: ``(n, N)`` int64, ``-1`` where :meth:`mask` is False."""
        return self._head(head).positions

    def retrieval_scores(self, head: str) -> torch.Tensor:
        """The collecting retriever's cosine per candidate: ``(n, N)`` float32 (0 where masked)."""
        return self._head(head).retrieval_scores

    def gold_log_probs(self, head: str) -> torch.Tensor:
        """``log P_reader(gold | case, candidate)``: ``(n, N)`` float32."""
        return self._head(head).gold_log_probs

    def label_log_probs(self, head: str) -> torch.Tensor:
        """The reader's log-distribution over labels per candidate: ``(n, N, L)`` float32."""
        return self._head(head).label_log_probs

    def mask(self, head: str) -> torch.Tensor:
        """``True`` where a candidate exists: ``(n, N)`` bool (False pads short lists)."""
        return self._head(head).mask

    def candidate_ids(self, head: str) -> list[list[str]]:
        """Each case's candidate KB ids for ``head``, best first (short lists are not padded)."""
        self._head(head)
        if self._candidate_ids is None:
            self._candidate_ids = self._read_candidate_ids()
        return [list(row) for row in self._candidate_ids[head]]

    def _read_candidate_ids(self) -> dict[str, list[list[str]]]:
        if self._persist_dir is None:  # pragma: no cover - in-memory caches always carry ids
            raise RuntimeError("an in-memory feedback cache without candidate ids")
        out: dict[str, list[list[str]]] = {h: [] for h in self._heads}
        for shard in self._shards:
            path = self._persist_dir / f"{shard['name']}.json"
            with naming_path("cannot read feedback shard", path):
                meta = json.loads(path.read_text(encoding="utf-8"))
            for head in out:
                out[head].extend(meta["candidate_ids"][head])
        return out

    def pair_log_probs(self) -> Iterator[tuple[str, str, np.ndarray]]:
        """Every cached (case id, candidate id, ``(L,)`` label log-probs), all heads: ``CachedReader.prefill``'s input."""
        for head in self.heads:
            log_probs = self.label_log_probs(head).double().numpy()  # (n, N, L)
            for row, (case_id, candidates) in enumerate(zip(self.case_ids, self.candidate_ids(head))):
                for col, candidate_id in enumerate(candidates):
                    yield case_id, candidate_id, log_probs[row, col]

    def predictions(self, head: str) -> torch.Tensor:
        """The reader's prediction per candidate.

        Returns:
            Single-label: the argmax label index, ``(n, N)`` int64 (ties go to the first label).
            Multi-label: whether each label is predicted present (``P(yes) >= 0.5``, the
            aggregation module's threshold), ``(n, N, L)`` bool.
        """
        lp = self.label_log_probs(head)  # (n, N, L)
        return lp >= math.log(MULTI_LABEL_THRESHOLD) if self.multi_label else lp.argmax(dim=-1)

    def disagree(self, k: int | None = None) -> torch.Tensor:
        """Whether the reader's predictions differ among each case's top-k candidates (all heads).

        A case is *inconsistent* (arXiv 2508.17394) when the reader, given each of its top-k
        neighbours separately, does not predict the same answer for all of them.

        Args:
            k: Top candidates per head; ``None`` = the config's ``disagree_k``, else the collecting
                retriever's ``k_image`` / ``k_text``.

        Returns:
            ``(n,)`` bool.
        """
        if k is not None and k < 1:
            raise ValueError(f"disagree(k={k}): k must be >= 1")
        preds, masks = [], []
        for head in self.heads:
            kh = k or self._manifest["config"].get("disagree_k") or self.retriever_k.get(head, 0)
            if kh <= 0:
                continue
            pred = self.predictions(head)[:, :kh]  # (n, kh) or (n, kh, L)
            preds.append(pred if self.multi_label else pred[..., None])  # (n, kh, L or 1)
            masks.append(self.mask(head)[:, :kh])  # (n, kh)
        if not preds:
            return torch.zeros(len(self), dtype=torch.bool)
        pred = torch.cat(preds, dim=1)  # (n, K, L or 1)
        mask = torch.cat(masks, dim=1)  # (n, K)
        first = mask.float().argmax(dim=1)  # (n,): first existing candidate
        ref = pred[torch.arange(len(self)), first]  # (n, L or 1)
        differs = (pred != ref[:, None, :]).any(dim=-1) & mask  # (n, K)
        return differs.any(dim=1)

    # ------------------------------------------------------------------ subsets
    def select(self, indices: Sequence[int] | torch.Tensor) -> FeedbackCache:
        """An in-memory cache with the given rows (e.g. a validation split), same identities.

        Raises:
            ValueError: No row selected (an empty cache).
        """
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        ids = self.case_ids
        cand = {h: self.candidate_ids(h) for h in self.heads}
        rows = index.tolist()
        manifest = {**self._manifest, "case_ids": [ids[i] for i in rows]}
        return FeedbackCache(
            manifest,
            self._query_embeddings[index],
            {h: arrays.select(index) for h, arrays in self._heads.items()},
            candidate_ids={h: [cand[h][i] for i in rows] for h in self.heads},
            pair_store=self.pair_store,
        )

    def with_extra_candidates(
        self,
        extras: dict[str, list[list[tuple[int, str, float, torch.Tensor]]]],
        gold: torch.Tensor,
    ) -> FeedbackCache:
        """An in-memory cache whose pools also hold extra candidates, appended after the collected ones.

        Used by feedback rounds: the candidates a trained head retrieves beyond the pool, with their
        reader scores. The pool width grows to the longest merged list (shorter ones are masked).

        Args:
            extras: Per head, per case (row order), ``(KB row, KB id, frozen score, (L,) label
                log-probs)`` of each extra candidate.
            gold: ``(n, L)`` bool multi-hot gold labels of the cases (for ``gold_log_probs``).

        Returns:
            The merged cache (same identities, case ids and pair store).
        """
        from llama_index_lvlm_retriever.training.feedback_pairs import gold_log_probs

        n, n_labels = len(self), len(self.labels)
        cand = {h: self.candidate_ids(h) for h in self.heads}
        width = max(
            int(self.mask(h)[r].sum()) + len(extras.get(h, [[]] * n)[r]) for h in self.heads for r in range(n)
        )
        width = max(width, self.n_candidates)
        heads: dict[str, _HeadArrays] = {}
        new_ids: dict[str, list[list[str]]] = {}
        for h in self.heads:
            old = self._heads[h]
            big_n = old.mask.shape[1]
            positions = torch.full((n, width), -1, dtype=torch.long)
            scores = torch.zeros(n, width)
            label_lp = torch.zeros(n, width, n_labels)
            mask = torch.zeros(n, width, dtype=torch.bool)
            positions[:, :big_n], scores[:, :big_n] = old.positions, old.retrieval_scores
            label_lp[:, :big_n], mask[:, :big_n] = old.label_log_probs, old.mask
            new_ids[h] = [list(row) for row in cand[h]]
            for r in range(n):
                col = int(old.mask[r].sum())  # collected lists are left-aligned: extras go after them
                for position, kb_id, score, lp in extras.get(h, [[]] * n)[r]:
                    positions[r, col], scores[r, col], label_lp[r, col], mask[r, col] = position, score, lp, True
                    new_ids[h][r].append(kb_id)
                    col += 1
            gold_lp = gold_log_probs(label_lp, gold, self.multi_label) * mask  # (n, width)
            heads[h] = _HeadArrays(positions, scores, gold_lp, label_lp, mask)
        manifest = {**self._manifest, "n_candidates": width}
        return FeedbackCache(
            manifest, self._query_embeddings, heads, candidate_ids=new_ids, pair_store=self.pair_store
        )

    def split(self, validation_fraction: float, *, seed: int = 0) -> tuple[FeedbackCache, FeedbackCache]:
        """Hold out a random share of cases: ``(train, validation)``, rows in their original order.

        Raises:
            ValueError: The fraction leaves either part empty.
        """
        n = len(self)
        n_val = int(round(n * validation_fraction))
        if not 0.0 < validation_fraction < 1.0 or n_val < 1 or n_val >= n:
            raise ValueError(
                f"validation_fraction={validation_fraction} of {n} cases gives {n_val} validation cases; "
                "need at least 1 validation and 1 training case"
            )
        perm = np.random.default_rng(seed).permutation(n)
        val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        return self.select(train_rows.tolist()), self.select(val_rows.tolist())


__all__ = ["FeedbackCache"]
