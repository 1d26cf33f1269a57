"""Model cards: a ``README.md`` with the Hugging Face metadata header next to saved heads and readers.

The header (YAML between ``---`` lines) carries what the Hub and its tooling read: ``base_model``,
``pipeline_tag``, ``datasets``, ``tags``, ``license`` and a ``model-index`` with the validation
results; the body says what the model is, the task and its labels, the training settings, the
validation numbers, how to load it, and that it is not a medical device. The header is written by
``huggingface_hub`` (a dependency of transformers), so it is the format the Hub parses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from llama_index_lvlm_retriever.storage.files import atomic_write_text
from llama_index_lvlm_retriever.version import __version__

__all__ = ["MODEL_CARD_NAME", "ModelKind", "write_model_card"]

MODEL_CARD_NAME = "README.md"
"""File name of the card inside the model folder (what the Hub shows)."""
ModelKind = Literal["query-head", "reader"]
_PIPELINE_TAGS: dict[str, str] = {"query-head": "image-feature-extraction", "reader": "image-text-to-text"}
_LIBRARY = "llama-index-lvlm-retriever"
_PAPER = "arXiv 2508.17394 (LVLM-Aware Multimodal Retrieval for RAG-Based Medical Diagnosis with General-Purpose Models)"
_LOAD = {
    "query-head": (
        "from llama_index_lvlm_retriever.heads import load_head\n"
        'head = load_head("{folder}")  # or LVLMAwareRetriever.from_persist_dir(kb_dir, encoder, image_head_dir=...)'
    ),
    "reader": (
        "from llama_index_lvlm_retriever.readers import HFLVLMReader\n"
        'reader = HFLVLMReader.from_pretrained("{folder}")'
    ),
}
_WHAT = {
    "query-head": (
        "A trainable query head of the dual-head LVLM-aware retriever: it maps the frozen encoder's "
        "query-image embedding to the vector that searches one index of the knowledge base. Only the "
        "query side is trained, so the knowledge base built with the base encoder is reused as is."
    ),
    "reader": (
        "A large vision-language model used as the reader: it sees the query image with one retrieved "
        "image-caption pair per pass and scores each label of the task by likelihood."
    ),
}


def write_model_card(
    folder: str | Path,
    *,
    kind: ModelKind,
    base_model: str | None,
    task: Any = None,
    datasets: Sequence[str] = (),
    training: Mapping[str, Any] | None = None,
    validation: Mapping[str, float] | None = None,
    validation_dataset: str = "validation split",
    model_name: str | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
    notes: str = "",
) -> Path:
    """Write ``README.md`` (Hugging Face metadata header + body) into a saved model folder.

    Args:
        folder: The folder written by ``save_pretrained`` (created if missing).
        kind: ``"query-head"`` (a retriever head) or ``"reader"`` (an LVLM reader).
        base_model: What it was trained from: the encoder for a head (e.g.
            ``"openai/clip-vit-base-patch16"``), the LVLM for a reader (``"Qwen/Qwen2-VL-2B-Instruct"``).
        task: The task (a ``TaskSpec`` or anything with ``name``, ``labels`` and ``question``).
        datasets: Training data names or Hub ids (e.g. ``["albertvillanova/medmnist-v2"]``).
        training: Training settings shown as a table (e.g. the trainer config: loss, steps, lr).
        validation: Validation results, metric name -> value (e.g. ``{"accuracy": 0.71}``); they
            become the ``model-index`` of the header.
        validation_dataset: Name of the data the validation results are on.
        model_name: Title of the card and name in ``model-index``; default the folder name.
        license: SPDX id of the weights' licence (e.g. ``"apache-2.0"``), if known.
        tags: Extra tags (the library, ``medical-imaging`` and the kind are always added).
        notes: Free Markdown appended to the body (e.g. data licences).

    Returns:
        The path of the card.

    Raises:
        ValueError: An unknown ``kind``, or a validation value that is not a finite number.

    Example:
        .. code-block:: python

            engine.save("runs/heads")
            write_model_card("runs/heads/image_head", kind="query-head",
                             base_model="openai/clip-vit-base-patch16", task=get_task("retinamnist"),
                             training=engine.config.model_dump(), validation={"accuracy": 0.71})
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    if kind not in _PIPELINE_TAGS:
        raise ValueError(f"kind must be one of {sorted(_PIPELINE_TAGS)}, got {kind!r}")
    for metric, value in (validation or {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"validation[{metric!r}] must be a finite number, got {value!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    name = model_name or out.resolve().name
    task_name = str(getattr(task, "name", "")) if task is not None else ""
    results = [
        EvalResult(
            task_type="image-classification",
            task_name=task_name or None,
            dataset_type=task_name or "custom",
            dataset_name=validation_dataset,
            metric_type=str(metric),
            metric_value=float(value),
            metric_name=f"validation {metric}",
        )
        for metric, value in (validation or {}).items()
    ]
    data = ModelCardData(
        base_model=base_model,
        library_name=_LIBRARY,
        pipeline_tag=_PIPELINE_TAGS[kind],
        datasets=list(datasets) or None,
        license=license,
        tags=list(dict.fromkeys([_LIBRARY, "llama-index", "medical-imaging", "lvlm-aware-retrieval", kind, *tags])),
        model_name=name if results else None,
        eval_results=results or None,
    )
    body = _body(out, name, kind, base_model, task, datasets, training or {}, validation or {}, validation_dataset, notes)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    return atomic_write_text(out / MODEL_CARD_NAME, str(card))


def _body(
    folder: Path,
    name: str,
    kind: str,
    base_model: str | None,
    task: Any,
    datasets: Sequence[str],
    training: Mapping[str, Any],
    validation: Mapping[str, float],
    validation_dataset: str,
    notes: str,
) -> str:
    lines = [f"# {name}", "", _WHAT[kind], "", f"Method: {_PAPER}. Written by {_LIBRARY} {__version__}.", ""]
    lines += [f"- **Base model:** `{base_model or 'unknown'}`"]
    if task is not None:
        labels = ", ".join(f"`{label}`" for label in getattr(task, "labels", ()))
        lines += [f"- **Task:** `{getattr(task, 'name', '')}`; labels: {labels}"]
        question = _question(task)
        if question:
            lines += [f"- **Question:** {question}"]
    if datasets:
        lines += ["- **Training data:** " + ", ".join(f"`{d}`" for d in datasets)]
    if training:
        lines += ["", "## Training settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {key} | {_cell(value)} |" for key, value in _flatten(training).items()]
    if validation:
        lines += ["", f"## Validation results ({validation_dataset})", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {metric} | {float(value):.4f} |" for metric, value in validation.items()]
    # The folder's own name: a card travels with the folder (to the Hub, to a colleague).
    lines += ["", "## Use", "", "```python", _LOAD[kind].format(folder=folder.resolve().name), "```"]
    lines += [
        "",
        "## Limitations",
        "",
        "For research. Not a medical device and not validated for clinical decisions; check the answers' "
        "support among the retrieved neighbours (abstain when they disagree) and validate on your own data "
        "before any use.",
    ]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def _question(task: Any) -> str:
    render = getattr(task, "render_question", None)
    if callable(render) and not getattr(task, "multi_label", False):
        try:
            return " ".join(str(render()).split())  # instruction + question on one line
        except ValueError:  # a task whose cases bring the question (closed VQA)
            return ""
    return str(getattr(task, "question", "") or "")


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
