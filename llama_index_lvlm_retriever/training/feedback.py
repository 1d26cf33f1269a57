"""Collect the frozen reader's feedback on retrieved candidates: resumable, and sharded across ranks.

Stage 2 of arXiv 2508.17394 trains the retriever against the reader's judgement of each candidate,
``P_reader(gold | case, candidate)``. The reader is frozen, so these scores are computed once, here,
and cached (:class:`~llama_index_lvlm_retriever.training.feedback_cache.FeedbackCache`); training
then needs no reader at all.

For every case: embed the query image (+ question) with the frozen encoder, retrieve
``n_candidates`` per head with the given retriever, always excluding the case's own knowledge-base
pair (by id = case id, and by image content hash, so a copy under another id is excluded too), and
score every distinct candidate with the reader, one candidate per pass, many (case, candidate)
pairs per ``reader.score`` call.

Work is cut into shards of ``shard_size`` consecutive cases. Each finished shard is written
atomically; a rerun after a crash or Ctrl-C skips finished shards and, because every shard is
computed the same way whatever ran before it, produces byte-identical files. Under ``torchrun``
(``RANK``/``WORLD_SIZE`` set) rank ``r`` takes shards ``r, r + W, r + 2W, ...`` and rank 0 writes
the manifest once all are finished; one process runs the same code.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.errors import ImageLoadError
from llama_index_lvlm_retriever.storage.locking import folder_lock
from llama_index_lvlm_retriever.training._distributed import _DistContext, _distributed_context
from llama_index_lvlm_retriever.training._feedback_shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    GOLD_LOG_PROBS,
    LABEL_LOG_PROBS,
    MANIFEST_FILE,
    MASK,
    POSITIONS,
    QUERY_EMBEDDINGS,
    RETRIEVAL_SCORES,
    atomic_write,
    json_bytes,
    plan_fingerprint,
    read_shard_meta,
    shard_is_finished,
    shard_name,
    write_shard,
)
from llama_index_lvlm_retriever.training._identity import (
    describe_identity,
    identity_mismatch,
    reader_identity,
    retriever_identity,
    task_identity,
)
from llama_index_lvlm_retriever.training._reader_scoring import (
    _gold_log_probs,
    _gold_targets,
    _score_pairs,
)
from llama_index_lvlm_retriever.training.config import FeedbackConfig
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache
from llama_index_lvlm_retriever.version import package_versions

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.kb import SearchHit
    from llama_index_lvlm_retriever.readers.base import Reader
    from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever

logger = logging.getLogger(__name__)

PLAN_FILE = "collection.json"
"""Written when a collection starts; lets a rerun check it continues the same run."""
_RUNTIME_ONLY_FIELDS = ("embed_batch_size", "reader_batch_size")


def collect_feedback(
    cases: Sequence[Case],
    retriever: LVLMAwareRetriever,
    reader: Reader,
    cache_dir: str | Path,
    config: FeedbackConfig | None = None,
    show_progress: bool = True,
) -> FeedbackCache:
    """Retrieve candidates for every case, score them with the frozen reader, and cache the result.

    Args:
        cases: Labelled training cases; ids must be unique; gold labels must be in the reader's task.
        retriever: The retriever whose candidates are scored (its heads are applied, so a trained
            retriever can collect feedback for another round).
        reader: The frozen reader (LVLM).
        cache_dir: Folder of the cache, on a filesystem every rank sees. An unfinished collection
            there is resumed; a finished one with the same retriever, reader, config and cases is
            returned as is.
        config: Candidates per head, heads, batch and shard sizes; ``None`` = defaults.
        show_progress: Show a tqdm bar (cases, with ETA) on rank 0.

    Returns:
        The cache, loaded from ``cache_dir``.

    Raises:
        ImageLoadError: A case's image file does not exist (the message names the case).
        ValueError: No cases, duplicate case ids, a gold label outside the task's label set, or
            ``cache_dir`` holds feedback from another retriever, reader, config or case list.

    Example:
        .. code-block:: python

            from llama_index_lvlm_retriever.training.feedback import FeedbackConfig, collect_feedback

            cache = collect_feedback(train_cases, retriever, reader, "runs/feedback",
                                     FeedbackConfig(n_candidates=50, shard_size=512))
            # Many GPUs: torchrun --nproc_per_node=8 collect.py  (same call in the script)
    """
    config = config or FeedbackConfig()
    cases = list(cases)
    if not cases:
        raise ValueError("collect_feedback got no cases, so the feedback cache would be empty; pass training cases")
    _check_unique_ids(cases)
    _check_case_images(cases)
    targets = _gold_targets(cases, reader)  # (n, L)
    folder = Path(cache_dir)
    plan = _plan(cases, retriever, reader, config)
    fingerprint = plan_fingerprint(plan)
    shard_ranges = [(s, min(s + config.shard_size, len(cases))) for s in range(0, len(cases), config.shard_size)]

    with _distributed_context() as ctx, _single_writer(folder, ctx.world_size):
        finished = _run_on_main(ctx, lambda: _prepare_folder(folder, plan))
        if not finished:
            mine = [i for i in range(len(shard_ranges)) if i % ctx.world_size == ctx.rank]
            pending = [
                i
                for i in mine
                if not shard_is_finished(folder, i, fingerprint, plan["case_ids"][slice(*shard_ranges[i])])
            ]
            skipped = len(mine) - len(pending)
            if skipped:
                logger.info("rank %d: resuming, %d of its %d shards already finished", ctx.rank, skipped, len(mine))
            _all_ranks(
                ctx,
                lambda: _collect_shards(
                    pending, shard_ranges, cases, targets, retriever, reader, config, folder, fingerprint,
                    show_progress=show_progress and ctx.is_main,
                ),
            )
            _run_on_main(ctx, lambda: _write_manifest(folder, plan, fingerprint, shard_ranges))
        ctx.barrier()
    return FeedbackCache.from_persist_dir(folder)


def _single_writer(folder: Path, world_size: int) -> contextlib.AbstractContextManager[object]:
    # One process: hold the folder's write lock, so a second collection into it fails clearly.
    # Several ranks write their own shards into one folder by design (disjoint names, rank 0 writes
    # the manifest), so a distributed run takes no lock.
    return folder_lock(folder) if world_size == 1 else contextlib.nullcontext()


# ---------------------------------------------------------------------- validation and plan
def _check_unique_ids(cases: list[Case]) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise ValueError(f"case id {case.id!r} appears more than once; case ids must be unique")
        seen.add(case.id)


def _check_case_images(cases: list[Case]) -> None:
    # Checked before any embedding or reader pass, so a wrong path fails in a second, naming the
    # case, instead of mid-collection with only the image path.
    missing = [case for case in cases if isinstance(case.image_path, (str, Path)) and not Path(case.image_path).is_file()]
    if missing:
        first = missing[0]
        raise ImageLoadError(
            f"case {first.id!r}: image file not found: {first.image_path} ({len(missing)} of {len(cases)} cases' "
            f"images are missing, e.g. {[c.id for c in missing[:5]]}); fix the paths in the cases file "
            "(relative paths resolve against its folder) or drop those cases"
        )


def _plan(cases: list[Case], retriever: LVLMAwareRetriever, reader: Reader, config: FeedbackConfig) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "retriever": retriever_identity(retriever),
        "reader": reader_identity(reader),
        "task": task_identity(reader),
        # Batch sizes change speed and memory, not results: a rerun may change them (e.g. after OOM).
        "config": config.model_dump(mode="json", exclude=set(_RUNTIME_ONLY_FIELDS)),
        "heads": list(config.heads),
        "n_candidates": config.n_candidates,
        "retriever_k": {"image": retriever.k_image, "text": retriever.k_text},
        "case_ids": [case.id for case in cases],
    }


# ---------------------------------------------------------------------- rank coordination
def _run_on_main(ctx: _DistContext, fn: Any) -> Any:
    """Run ``fn`` on rank 0; every rank gets its result, or raises when it failed anywhere."""
    result: Any = None
    error: BaseException | None = None
    if ctx.is_main:
        try:
            result = fn()
        except BaseException as err:  # re-raised below, after the other ranks are told
            error = err
    ok = ctx.all_ok(error is None)
    if error is not None:
        raise error
    if not ok:
        raise RuntimeError("feedback collection failed on rank 0; see its error")
    return ctx.broadcast(result)


def _all_ranks(ctx: _DistContext, fn: Any) -> None:
    """Run ``fn`` on every rank; if it fails on any, every rank raises (none waits forever)."""
    error: BaseException | None = None
    try:
        fn()
    except BaseException as err:
        error = err
    ok = ctx.all_ok(error is None)
    if error is not None:
        raise error
    if not ok:
        raise RuntimeError("feedback collection failed on another rank; its finished shards are kept, rerun to resume")


def _prepare_folder(folder: Path, plan: dict[str, Any]) -> bool:
    """Check ``folder`` against the plan; return True when the collection is already finished."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST_FILE, PLAN_FILE):
        path = folder / name
        if not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{path} is not valid JSON ({err}); delete {folder} (or pick a new cache_dir) and collect again"
            ) from err
        saved_plan = {key: saved.get(key) for key in plan}
        _raise_on_plan_mismatch(folder, saved_plan, plan)
        if name == MANIFEST_FILE:
            logger.info("feedback cache %s is already complete; loading it", folder)
            return True
    atomic_write(folder / PLAN_FILE, json_bytes(plan))
    return False


def _raise_on_plan_mismatch(folder: Path, saved: dict[str, Any], plan: dict[str, Any]) -> None:
    for part, noun in (("retriever", "retriever"), ("reader", "reader")):
        diff = identity_mismatch(saved.get(part) or {}, plan[part])
        if diff is not None:
            raise ValueError(
                f"{folder} holds feedback collected with another {noun}: cache: "
                f"[{describe_identity(saved.get(part) or {})}]; given: [{describe_identity(plan[part])}]; "
                f"differences: {diff}. Use a new cache_dir, or delete this one to start over."
            )
    diff = identity_mismatch({k: saved[k] for k in plan if k not in ("retriever", "reader")},
                             {k: plan[k] for k in plan if k not in ("retriever", "reader")})
    if diff is not None:
        raise ValueError(
            f"{folder} holds feedback from a run with other settings or cases ({diff}); "
            "use a new cache_dir, or delete this one to start over"
        )


def _write_manifest(folder: Path, plan: dict[str, Any], fingerprint: str, ranges: list[tuple[int, int]]) -> None:
    shards = []
    for index, (start, stop) in enumerate(ranges):
        if not shard_is_finished(folder, index, fingerprint, plan["case_ids"][start:stop]):
            raise RuntimeError(f"shard {shard_name(index)} in {folder} is missing after collection; rerun to resume")
        meta = read_shard_meta(folder, index)
        assert meta is not None  # checked by shard_is_finished
        shards.append({"name": shard_name(index), "start": start, "stop": stop, "sha256": meta["tensors_sha256"]})
    record = {**plan, "shards": shards, "versions": package_versions()}
    atomic_write(folder / MANIFEST_FILE, json_bytes(record))
    (folder / PLAN_FILE).unlink(missing_ok=True)
    for stale in folder.glob(".*.tmp"):  # temp files left by writes that a crash interrupted
        stale.unlink(missing_ok=True)
    logger.info("feedback cache complete: %d cases in %d shards at %s", len(plan["case_ids"]), len(shards), folder)


# ---------------------------------------------------------------------- the work
def _collect_shards(
    pending: list[int],
    ranges: list[tuple[int, int]],
    cases: list[Case],
    targets: torch.Tensor,
    retriever: LVLMAwareRetriever,
    reader: Reader,
    config: FeedbackConfig,
    folder: Path,
    fingerprint: str,
    *,
    show_progress: bool,
) -> None:
    total = sum(stop - start for start, stop in (ranges[i] for i in pending))
    with tqdm(total=total, desc="reader feedback", unit="case", disable=not show_progress) as bar:
        for index in pending:
            start, stop = ranges[index]
            tensors, candidate_ids = _collect_shard(
                cases[start:stop], targets[start:stop], retriever, reader, config, bar
            )
            write_shard(
                folder,
                index,
                tensors,
                fingerprint=fingerprint,
                case_ids=[case.id for case in cases[start:stop]],
                candidate_ids=candidate_ids,
            )
            logger.debug("wrote %s (cases %d-%d)", shard_name(index), start, stop - 1)


def _collect_shard(
    cases: list[Case],
    targets: torch.Tensor,
    retriever: LVLMAwareRetriever,
    reader: Reader,
    config: FeedbackConfig,
    bar: tqdm,
) -> tuple[dict[str, torch.Tensor], dict[str, list[list[str]]]]:
    """Embed, retrieve and score one shard's cases; return its tensors and candidate ids."""
    kb = retriever.knowledge_base
    n, big_n, n_labels = len(cases), config.n_candidates, targets.shape[1]
    embeddings = np.concatenate(
        [
            retriever.embed_queries(
                [c.image_path for c in cases[s : s + config.embed_batch_size]],
                [c.question for c in cases[s : s + config.embed_batch_size]],
            )
            for s in range(0, n, config.embed_batch_size)
        ]
    ).astype(np.float32)  # (n, d)
    hits = retriever.search_heads(
        embeddings,
        k_image=big_n if "image" in config.heads else 0,
        k_text=big_n if "text" in config.heads else 0,
        exclude_ids=[{case.id} for case in cases],
        exclude_hashes=[{kb.content_hash_of(case.image_path)} for case in cases],
        # An image-input head (needs_image=True, e.g. EncoderQueryHead) reads the query images.
        images=[case.image_path for case in cases],
    )
    # Score each distinct candidate of a case once, even when both heads return it.
    pairs: list[tuple[int, KBItem]] = []
    pair_of: list[dict[str, int]] = [{} for _ in range(n)]
    for row in range(n):
        for head in config.heads:
            for hit in hits[head][row]:
                if hit.item.id not in pair_of[row]:
                    pair_of[row][hit.item.id] = len(pairs)
                    pairs.append((row, hit.item))
    pair_log_probs = _score_pairs(cases, pairs, reader, config.reader_batch_size, n_labels, bar)  # (P, L)
    tensors: dict[str, torch.Tensor] = {QUERY_EMBEDDINGS: torch.from_numpy(embeddings)}
    candidate_ids: dict[str, list[list[str]]] = {}
    for head in config.heads:
        per_head = _head_tensors(hits[head], pair_of, pair_log_probs, targets, big_n, reader.task.multi_label)
        tensors.update({f"{head}.{name}": value for name, value in per_head.items()})
        candidate_ids[head] = [[hit.item.id for hit in row_hits] for row_hits in hits[head]]
    return tensors, candidate_ids


def _head_tensors(
    head_hits: list[list[SearchHit]],
    pair_of: list[dict[str, int]],
    pair_log_probs: torch.Tensor,
    targets: torch.Tensor,
    big_n: int,
    multi_label: bool,
) -> dict[str, torch.Tensor]:
    n, n_labels = targets.shape
    positions = torch.full((n, big_n), -1, dtype=torch.long)
    scores = torch.zeros(n, big_n, dtype=torch.float32)
    label_lp = torch.zeros(n, big_n, n_labels, dtype=torch.float32)
    mask = torch.zeros(n, big_n, dtype=torch.bool)
    for row, row_hits in enumerate(head_hits):
        for col, hit in enumerate(row_hits[:big_n]):
            positions[row, col] = int(hit.position)
            scores[row, col] = float(hit.score)
            label_lp[row, col] = pair_log_probs[pair_of[row][hit.item.id]]
            mask[row, col] = True
    gold = _gold_log_probs(label_lp, targets, multi_label) * mask  # (n, N); 0 where no candidate
    return {POSITIONS: positions, RETRIEVAL_SCORES: scores, GOLD_LOG_PROBS: gold, LABEL_LOG_PROBS: label_lp, MASK: mask}


__all__ = ["FeedbackCache", "FeedbackConfig", "collect_feedback"]
