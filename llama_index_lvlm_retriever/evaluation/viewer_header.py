"""The evidence viewer's header facts from a provenance block, and label display names from a task.

A reviewer must be able to tell which model, knowledge base and heads produced a page.
:func:`viewer_header` reads a block of
:func:`~llama_index_lvlm_retriever.outputs.provenance.collect_provenance` (``predict``, ``evaluate`` and
``diagnose`` all write one) and returns the lines the viewer shows: package version, encoder,
knowledge base folder and fingerprint, heads, reader, task and date.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index_lvlm_retriever.outputs.provenance import utc_now
from llama_index_lvlm_retriever.version import __version__

__all__ = ["label_display_names", "viewer_header"]

_SHORT = 12  # characters of a fingerprint shown: enough to tell two models apart at a glance


def viewer_header(
    provenance: Mapping[str, Any] | None, *, system: str | None = None, task: str | None = None
) -> dict[str, str]:
    """Header facts, name -> text, for :func:`~.evidence_viewer.write_evidence_viewer`.

    Args:
        provenance: A provenance block; its ``models`` may hold ``knowledge_base``, ``encoder``,
            ``reader``, ``image_head``/``text_head`` or (``evaluate``) ``systems[system]``, and its
            ``inputs.kb.path`` the knowledge base folder. ``None`` gives the package and date only.
        system: For an ``evaluate`` block, the system whose heads to show.
        task: The task name (default: the reader's, where recorded).

    Returns:
        Ordered facts: ``package``, ``encoder``, ``knowledge base``, ``image head``, ``text head``,
        ``reader``, ``task``, ``date`` (those known).

    Example:
        >>> viewer_header({"models": {"reader": {"model_name": "tiny", "fingerprint": "abc"}}}, task="t")["reader"]
        'tiny (abc)'
    """
    block = provenance or {}
    models = block.get("models") or {}
    package = block.get("package") or {}
    out = {"package": f"llama-index-lvlm-retriever {package.get('version', __version__)}"}
    encoder = models.get("encoder") or (models.get("knowledge_base") or {}).get("encoder")
    if encoder:
        out["encoder"] = _model(encoder)
    kb = models.get("knowledge_base")
    if kb:
        folder = kb.get("path") or ((block.get("inputs") or {}).get("kb") or {}).get("path") or "(folder not recorded)"
        out["knowledge base"] = f"{folder} · {kb.get('n_items', '?')} pairs · fingerprint {kb.get('fingerprint', '?')}"
    heads = (models.get("systems") or {}).get(system, {}) if system is not None else models
    for name in ("image_head", "text_head"):
        if heads.get(name) is not None:
            out[name.replace("_", " ")] = _head(heads[name])
    if models.get("reader"):
        out["reader"] = _model(models["reader"])
    task_name = task or (models.get("reader") or {}).get("task")
    if task_name:
        out["task"] = str(task_name)
    out["date"] = str(block.get("ended_at") or block.get("started_at") or utc_now())
    return out


def label_display_names(labels: Any, verbalizers: Any = None) -> dict[str, str]:
    """Label -> display name: ``"malignant (yes)"`` where the verbalizer differs from the label.

    Example:
        >>> label_display_names(["malignant", "benign"], ["yes", "no"])
        {'malignant': 'malignant (yes)', 'benign': 'benign (no)'}
    """
    labels = [str(label) for label in labels]
    texts = [str(v) for v in verbalizers] if verbalizers else labels
    return {label: label if text == label else f"{label} ({text})" for label, text in zip(labels, texts)}


def _model(record: Mapping[str, Any]) -> str:
    name = record.get("model_name") or record.get("class_name") or "?"
    fingerprint = record.get("fingerprint")
    return f"{name} ({str(fingerprint)[:_SHORT]})" if fingerprint else str(name)


def _head(record: Mapping[str, Any]) -> str:
    if record.get("kind") == "identity":
        return "identity (standard RAG)"
    where = record.get("path") or record.get("class_name") or "trained"
    digest = record.get("weights_sha256")
    return f"{where} (weights {str(digest)[:_SHORT]})" if digest else str(where)
