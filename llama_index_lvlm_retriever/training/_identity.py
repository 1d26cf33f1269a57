"""Identities of a retriever and a reader, recorded in a feedback cache and checked on use.

A feedback cache is only valid for the retriever that drew its candidates (the same knowledge base
rows, encoder, question fusion and heads) and the reader that scored them (the same model and
task). These helpers turn both into small JSON-serialisable dicts and describe how two differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.heads import QueryHead
    from llama_index_lvlm_retriever.readers.base import Reader
    from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever


def sha256_json(obj: Any) -> str:
    """SHA-256 of the canonical JSON form of ``obj`` (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _sha256_array(array: np.ndarray) -> str:
    arr = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def head_identity(head: QueryHead | None) -> dict[str, Any]:
    """Kind and config of a head plus a hash of its weights; ``None`` and identity heads are equal."""
    if head is None or head.is_identity:
        return {"kind": "identity"}
    h = hashlib.sha256()
    for name, tensor in sorted(head.state_dict().items()):
        h.update(name.encode())
        h.update(_sha256_array(tensor.detach().float().cpu().numpy()).encode())
    # Image-input heads (e.g. EncoderQueryHead) have their own config class without a ``kind``.
    kind = getattr(head.config, "kind", type(head).__name__)
    return {"kind": kind, "config": head.config.to_dict(), "weights_sha256": h.hexdigest(),
            "extra": head.extra_repr()}


def knowledge_base_identity(retriever: LVLMAwareRetriever) -> dict[str, Any]:
    """Rows (ids in order), dimension, encoder record and vector hashes of the retriever's KB."""
    kb = retriever.knowledge_base
    ids = [item.id for item in kb.items]
    identity: dict[str, Any] = {
        "n_items": len(ids),
        "dim": int(kb.dim),
        "ids_sha256": sha256_json(ids),
        # Hashing the vectors (about 1 s per GB) catches a KB rebuilt with other weights or images
        # under the same ids, which the ids alone cannot.
        "image_vectors_sha256": _sha256_array(np.asarray(kb.image_vectors, dtype=np.float32)),
        "text_vectors_sha256": _sha256_array(np.asarray(kb.text_vectors, dtype=np.float32)),
        # The query side: the KB's model embeds the queries, so it is part of the retriever.
        "encoder": _model_identity(kb.embed_model),
    }
    return identity


def _model_identity(model: Any) -> dict[str, Any]:
    """Class, ``model_name`` and ``fingerprint()`` of a model, each when it offers one."""
    identity: dict[str, Any] = {"class_name": type(model).__name__}
    # Duck-typed on purpose: embedding models and readers from anywhere may or may not offer these.
    model_name = getattr(model, "model_name", None)
    if model_name is not None:
        identity["model_name"] = str(model_name)
    fingerprint = getattr(model, "fingerprint", None)
    if callable(fingerprint):
        identity["fingerprint"] = str(fingerprint())
    elif fingerprint is not None:
        identity["fingerprint"] = str(fingerprint)
    return identity


def retriever_identity(retriever: LVLMAwareRetriever) -> dict[str, Any]:
    """Everything that decides which candidates a retriever returns for a query."""
    return {
        "class_name": retriever.class_name(),
        "knowledge_base": knowledge_base_identity(retriever),
        "question_weight": float(retriever.question_weight),
        "image_head": head_identity(retriever.image_head),
        "text_head": head_identity(retriever.text_head),
    }


def task_identity(reader: Reader) -> dict[str, Any]:
    """Name, label set and multi-label flag of the reader's task."""
    task = reader.task
    return {"name": str(task.name), "labels": [str(x) for x in task.labels], "multi_label": bool(task.multi_label)}


def reader_identity(reader: Reader) -> dict[str, Any]:
    """The reader's class, model and full task spec; its ``fingerprint()`` when it offers one.

    ``Reader`` implementations are free to offer ``model_name`` and ``fingerprint()``; both are
    recorded when present, so two readers of one class over different weights differ. The whole
    task spec counts (question, verbalizers, instruction change the scores), not just its labels.
    """
    task = reader.task
    spec = task.model_dump(mode="json") if hasattr(task, "model_dump") else task_identity(reader)
    return {**_model_identity(reader), "task": task_identity(reader), "task_spec": spec}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def describe_identity(identity: dict[str, Any]) -> str:
    """A one-line summary: class, model or knowledge-base size, and head kinds."""
    parts = [str(identity.get("class_name", "?"))]
    if "model_name" in identity:
        parts.append(f"model {identity['model_name']!r}")
    if "fingerprint" in identity:
        parts.append(f"fingerprint {str(identity['fingerprint'])[:12]}")
    if "task" in identity:
        parts.append(f"task {identity['task'].get('name')!r}")
    if "knowledge_base" in identity:
        kb = identity["knowledge_base"]
        parts.append(f"KB of {kb.get('n_items')} items ({kb.get('dim')}-d, ids {str(kb.get('ids_sha256'))[:12]})")
        parts.append(f"image head {identity['image_head'].get('kind')}, text head {identity['text_head'].get('kind')}")
    return ", ".join(parts)


def identity_mismatch(saved: dict[str, Any], given: dict[str, Any]) -> str | None:
    """``None`` when equal, else the differing fields as ``key: saved -> given``."""
    # A JSON round trip makes tuples lists and keys strings, as in a saved manifest.
    flat_saved = _flatten(json.loads(json.dumps(saved)))
    flat_given = _flatten(json.loads(json.dumps(given)))
    diffs = [
        f"{key}: {_short(flat_saved.get(key, '<absent>'))} -> {_short(flat_given.get(key, '<absent>'))}"
        for key in sorted(set(flat_saved) | set(flat_given))
        if flat_saved.get(key, "<absent>") != flat_given.get(key, "<absent>")
    ]
    return "; ".join(diffs) if diffs else None
