"""On-disk pieces of a feedback cache: names, shard files and atomic writes.

Private module; :class:`~llama_index_lvlm_retriever.training.feedback_cache.FeedbackCache` and
:func:`~llama_index_lvlm_retriever.training.feedback.collect_feedback` are the API. A shard is two
files: ``shard-NNNNN.safetensors`` (tensors) and ``shard-NNNNN.json`` (ids and the tensors' hash),
the JSON written last so that its presence, with a matching hash, marks the shard finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as _safetensors_save

from llama_index_lvlm_retriever.storage.files import atomic_write_bytes as atomic_write
from llama_index_lvlm_retriever.storage.files import json_bytes
from llama_index_lvlm_retriever.training._identity import sha256_json

FORMAT_NAME = "llama-index-lvlm-retriever/feedback-cache"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SHARD_PREFIX = "shard-"

QUERY_EMBEDDINGS = "query_embeddings"
POSITIONS = "positions"
RETRIEVAL_SCORES = "retrieval_scores"
GOLD_LOG_PROBS = "gold_log_probs"
LABEL_LOG_PROBS = "label_log_probs"
MASK = "mask"
HEAD_TENSORS: tuple[str, ...] = (POSITIONS, RETRIEVAL_SCORES, GOLD_LOG_PROBS, LABEL_LOG_PROBS, MASK)

# Manifest keys that describe one collection run (everything but the shard list).
PLAN_KEYS: tuple[str, ...] = (
    "format",
    "format_version",
    "retriever",
    "reader",
    "task",
    "config",
    "heads",
    "n_candidates",
    "retriever_k",
    "case_ids",
)


def shard_name(index: int) -> str:
    """File stem of shard ``index`` (``shard-00003``)."""
    return f"{SHARD_PREFIX}{index:05d}"


def is_shard_file(name: str) -> bool:
    """Whether ``name`` is a shard's tensors or JSON (any write's tag)."""
    return name.startswith(SHARD_PREFIX) and name.endswith((".safetensors", ".json"))


def plan_fingerprint(manifest: dict[str, Any]) -> str:
    """Hash of what defines a collection run: identities, task, config and case ids."""
    return sha256_json({key: manifest.get(key) for key in PLAN_KEYS})




def write_shard(
    folder: Path,
    index: int,
    tensors: dict[str, torch.Tensor],
    *,
    fingerprint: str,
    case_ids: Sequence[str],
    candidate_ids: dict[str, list[list[str]]],
    stem: str | None = None,
) -> str:
    """Write one shard atomically: tensors first, then the JSON that marks the shard finished.

    ``stem`` overrides the file stem (``FeedbackCache.persist`` tags it per write, so a re-persist
    never overwrites the files the current manifest names).

    Returns:
        The SHA-256 of the safetensors bytes (recorded in the shard JSON and the manifest).
    """
    data = _safetensors_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    digest = hashlib.sha256(data).hexdigest()
    stem = stem or shard_name(index)
    atomic_write(folder / f"{stem}.safetensors", data)
    meta = {
        "shard": index,
        "plan_fingerprint": fingerprint,
        "tensors_sha256": digest,
        "case_ids": list(case_ids),
        "candidate_ids": candidate_ids,
    }
    atomic_write(folder / f"{stem}.json", json_bytes(meta))
    return digest


def read_shard_meta(folder: Path, index: int) -> dict[str, Any] | None:
    """The shard's JSON, or ``None`` when it is missing or unreadable (an unfinished shard)."""
    path = folder / f"{shard_name(index)}.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def shard_is_finished(folder: Path, index: int, fingerprint: str, case_ids: Sequence[str]) -> bool:
    """Whether shard ``index`` was finished by a run with this fingerprint over these cases."""
    meta = read_shard_meta(folder, index)
    if meta is None or meta.get("plan_fingerprint") != fingerprint or meta.get("case_ids") != list(case_ids):
        return False
    tensors = folder / f"{shard_name(index)}.safetensors"
    if not tensors.is_file():
        return False
    return hashlib.sha256(tensors.read_bytes()).hexdigest() == meta.get("tensors_sha256")
