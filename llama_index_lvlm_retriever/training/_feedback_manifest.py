"""Shape checks of a feedback-cache manifest, before the loader indexes into it.

``FeedbackCache.from_persist_dir`` checks format name and version; this checks the fields it then
reads (``heads``, the shard list with each shard's ``name`` and ``sha256``, the task, the case ids),
so a hand-edited or truncated manifest fails with one
:class:`~llama_index_lvlm_retriever.errors.FeedbackCacheError` naming the file and the field, not a
``KeyError``. Shard names must be plain file names: ``../outside/file`` would make the loader read
(and trust) a file from outside the cache folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from llama_index_lvlm_retriever.errors import FeedbackCacheError
from llama_index_lvlm_retriever.retriever.nodes import HEADS

_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_feedback_manifest(manifest: Mapping[str, Any], manifest_path: Path) -> None:
    """Raise :class:`FeedbackCacheError` if a field the loader reads is missing or of the wrong type.

    Args:
        manifest: The parsed manifest (format and version already checked).
        manifest_path: Its path, for messages.

    Raises:
        FeedbackCacheError: ``heads`` is missing, empty or names an unknown head; a shard entry lacks
            ``name``/``sha256``, its name is not a plain file name, or its hash is not 64 hex digits;
            ``case_ids``, ``task`` or ``n_candidates`` is missing or malformed.
    """
    fix = "delete the cache folder and collect the feedback again"
    heads = manifest.get("heads")
    if not isinstance(heads, list) or not heads:
        raise FeedbackCacheError(f"{manifest_path}: 'heads' must be a non-empty list of {list(HEADS)}, got {heads!r}; {fix}")
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise FeedbackCacheError(f"{manifest_path}: unknown head(s) {unknown} in 'heads' (known: {list(HEADS)}); {fix}")
    shards = manifest.get("shards", [])
    if not isinstance(shards, list):
        raise FeedbackCacheError(f"{manifest_path}: 'shards' must be a list, got {type(shards).__name__}; {fix}")
    for position, shard in enumerate(shards):
        where = f"{manifest_path}: shards[{position}]"
        if not isinstance(shard, Mapping):
            raise FeedbackCacheError(f"{where} must be a JSON object, got {type(shard).__name__}; {fix}")
        name, digest = shard.get("name"), shard.get("sha256")
        if not isinstance(name, str) or not _is_plain_name(name):
            raise FeedbackCacheError(
                f"{where}: 'name' {name!r} is not a file name inside {manifest_path.parent} (paths are refused so "
                f"nothing outside the cache folder is read); {fix}"
            )
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise FeedbackCacheError(f"{where}: 'sha256' must be 64 hex digits, got {digest!r}; {fix}")
    case_ids = manifest.get("case_ids")
    if not isinstance(case_ids, list) or not all(isinstance(c, str) for c in case_ids):
        raise FeedbackCacheError(f"{manifest_path}: 'case_ids' must be a list of strings; {fix}")
    task = manifest.get("task")
    if not isinstance(task, Mapping) or not isinstance(task.get("labels"), list):
        raise FeedbackCacheError(f"{manifest_path}: 'task' must be an object with a 'labels' list; {fix}")
    n_candidates = manifest.get("n_candidates")
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < 0:
        raise FeedbackCacheError(f"{manifest_path}: 'n_candidates' must be a non-negative integer, got {n_candidates!r}; {fix}")
    for field in ("config", "retriever_k", "retriever", "reader"):
        if not isinstance(manifest.get(field), Mapping):
            raise FeedbackCacheError(f"{manifest_path}: {field!r} must be a JSON object, got {manifest.get(field)!r}; {fix}")


def _is_plain_name(name: str) -> bool:
    path = PurePath(name)
    return bool(name) and len(path.parts) == 1 and name not in {".", ".."} and "\\" not in name


__all__ = ["check_feedback_manifest"]
