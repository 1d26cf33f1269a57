"""Stage-1 reader SFT samples: retrieval-augmented (case, candidate, answer) triples and their export.

Each training case is embedded with the frozen retriever; the top ``per_head`` pairs of each head
(the case's own knowledge-base pair excluded, by id and by image content hash) each give one
sample, whose target is the gold label's verbalizer. Multi-label tasks ask the reader one yes/no
question per label at inference, so a pair gives one sample per label with target yes or no.

The prompt of a sample is *not* stored here: it is rendered at training time by the reader's own
:class:`~llama_index_lvlm_retriever.readers.prompt.PromptBuilder` and chat template, so training
sees exactly the text and images that scoring sees. :func:`export_sft_jsonl` writes the same layout
as OpenAI/TRL multimodal chat records (``messages`` + ``images``) for external SFT tools.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers.prompt import PromptBuilder, ReaderPromptConfig
from llama_index_lvlm_retriever.storage.files import atomic_write_text
from llama_index_lvlm_retriever.tasks import TaskSpec

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever

logger = logging.getLogger(__name__)

__all__ = ["SFTSample", "build_sft_samples", "export_sft_jsonl", "sample_to_chat_record"]

_EMBED_BATCH = 32


@dataclass(frozen=True)
class SFTSample:
    """One supervised reader example: a case, one retrieved pair, and the answer to learn.

    Args:
        case: The training case (query image, question, gold labels).
        candidate: The retrieved knowledge-base pair shown as background.
        head: The retriever head that returned it (``"image"`` or ``"text"``).
        rank: Its 0-based rank in that head's list.
        answer_index: Index of the target among the reader's answers: the gold label's index for
            single-label tasks, ``0`` (yes) or ``1`` (no) for multi-label ones.
        target: The answer text (the gold verbalizer, or the yes/no verbalizer).
        label_index: Multi-label tasks: the label the yes/no question asks about; else ``None``.
    """

    case: Case
    candidate: KBItem
    head: str
    rank: int
    answer_index: int
    target: str
    label_index: int | None = None


def _gold_indices(case: Case, task: TaskSpec) -> list[int]:
    labels = list(task.labels)
    if not case.labels:
        raise ValueError(f"case {case.id!r} has no gold label; reader SFT needs labelled cases (labels in {labels})")
    if not task.multi_label and len(case.labels) != 1:
        raise ValueError(
            f"case {case.id!r} has {len(case.labels)} gold labels {list(case.labels)} but task "
            f"{task.name!r} is single-label; give it exactly one of {labels}"
        )
    indices = []
    for label in case.labels:
        if label not in labels:
            raise ValueError(
                f"case {case.id!r} has gold label {label!r}, which is not in the label set of task "
                f"{task.name!r}: {labels}; fix the case's label or use a task that has it"
            )
        indices.append(labels.index(label))
    return indices


def _targets(case: Case, task: TaskSpec) -> list[tuple[int | None, int, str]]:
    """``(label_index, answer_index, target)`` per question the reader is asked about one pair."""
    gold = _gold_indices(case, task)
    if not task.multi_label:
        return [(None, gold[0], task.answer_texts[gold[0]])]
    return [
        (j, 0, task.yes_verbalizer) if j in gold else (j, 1, task.no_verbalizer)
        for j in range(task.n_labels)
    ]


def build_sft_samples(
    cases: Sequence[Case],
    retriever: LVLMAwareRetriever,
    task: TaskSpec,
    per_head: int | None = None,
    *,
    heads: Sequence[str] = ("image", "text"),
) -> list[SFTSample]:
    """Retrieval-augmented SFT samples: the top pairs of each head per case, one pair each.

    Args:
        cases: Labelled training cases (labels from ``task``'s label set).
        retriever: The (frozen) retriever; its heads are applied.
        task: The task whose verbalizers are the targets.
        per_head: Pairs taken from each head's list; ``None`` = the retriever's own ``k_image`` and
            ``k_text`` (the paper: 2 + 2), as at inference.
        heads: Heads whose lists are used: ``("image", "text")`` (the paper) or one of them, e.g.
            ``("image",)`` when cases carry no question for the text head.

    Returns:
        Samples in (case, head, rank[, label]) order; a pair returned by both heads appears once
        per head, as it does among the reader's inputs at inference.

    Raises:
        ValueError: ``per_head`` < 1, a case without a gold label, or a gold label not in the
            task's label set (the message names the case and the labels).
    """
    if per_head is not None and per_head < 1:
        raise ValueError(f"per_head must be >= 1, got {per_head}")
    k_image = retriever.k_image if per_head is None else per_head
    k_text = retriever.k_text if per_head is None else per_head
    unknown = sorted(set(heads) - {"image", "text"})
    if unknown or not heads:
        raise ValueError(f"heads must be a non-empty subset of ('image', 'text'), got {list(heads)}")
    cases = list(cases)
    targets = [_targets(case, task) for case in cases]  # validates every label before any model work
    kb = retriever.knowledge_base
    samples: list[SFTSample] = []
    for start in range(0, len(cases), _EMBED_BATCH):
        chunk = cases[start : start + _EMBED_BATCH]
        embeddings = retriever.embed_queries([c.image_path for c in chunk], [c.question for c in chunk])
        hits = retriever.search_heads(
            np.asarray(embeddings, dtype=np.float32),
            k_image=k_image if "image" in heads else 0,
            k_text=k_text if "text" in heads else 0,
            exclude_ids=[{case.id} for case in chunk],
            exclude_hashes=[{kb.content_hash_of(case.image_path)} for case in chunk],
        )
        for row, case in enumerate(chunk):
            for head in sorted(hits):
                for rank, hit in enumerate(hits[head][row]):
                    for label_index, answer_index, target in targets[start + row]:
                        samples.append(SFTSample(case, hit.item, head, rank, answer_index, target, label_index))
    logger.info("built %d reader SFT samples from %d cases (%d image-head + %d text-head pairs each)",
                len(samples), len(cases), k_image if "image" in heads else 0, k_text if "text" in heads else 0)
    return samples


def sample_to_chat_record(sample: SFTSample, task: TaskSpec, prompt: ReaderPromptConfig | None = None) -> dict[str, Any]:
    """One sample as an OpenAI/TRL multimodal chat record.

    The user turn lists the same parts, in the same order, as the reader's prompt (retrieved
    image, background caption, query image, question; ``{"type": "image"}`` placeholders), and
    ``images`` gives their file paths in that order.

    Args:
        sample: The sample.
        task: Its task (renders the question).
        prompt: The reader's prompt layout (default: :class:`ReaderPromptConfig` defaults).

    Returns:
        ``{"messages": [...], "images": [...], "id": ..., "case_id": ..., "candidate_id": ...,
        "head": ..., "rank": ...}``.
    """
    config = prompt or ReaderPromptConfig()
    content: list[dict[str, Any]] = []
    images: list[str] = []
    candidate = sample.candidate
    if config.include_retrieved_image and candidate.image_path:
        content.append({"type": "image"})
        images.append(candidate.image_path)
    if config.include_retrieved_text and candidate.text.strip():
        # The reader's own rendering of the caption (template, cut); no image is decoded.
        texts_only = PromptBuilder(task, config.model_copy(update={"include_query_image": False, "include_retrieved_image": False}))
        text = texts_only.build(sample.case, candidate, label_index=sample.label_index).parts[0].text
        content.append({"type": "text", "text": text})
    if config.include_query_image:
        content.append({"type": "image"})
        images.append(sample.case.image_path)
    content.append({"type": "text", "text": task.render_question(sample.case.question, sample.label_index)})
    messages: list[dict[str, Any]] = []
    if config.system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": config.system_prompt}]})
    messages.append({"role": "user", "content": content})
    messages.append({"role": "assistant", "content": [{"type": "text", "text": sample.target}]})
    suffix = "" if sample.label_index is None else f":{sample.label_index}"
    return {
        "id": f"{sample.case.id}|{sample.head}|{sample.rank}{suffix}",
        "case_id": sample.case.id,
        "candidate_id": candidate.id,
        "head": sample.head,
        "rank": sample.rank,
        "messages": messages,
        "images": images,
    }


def export_sft_jsonl(
    samples: Sequence[SFTSample],
    path: str | Path,
    task: TaskSpec,
    prompt: ReaderPromptConfig | None = None,
) -> Path:
    """Write samples as JSONL chat records (see :func:`sample_to_chat_record`), atomically.

    Args:
        samples: The samples.
        path: Output file (its folder is created).
        task: Their task.
        prompt: The reader's prompt layout.

    Returns:
        The written path.
    """
    text = "".join(json.dumps(sample_to_chat_record(sample, task, prompt)) + "\n" for sample in samples)
    out = atomic_write_text(path, text)
    logger.info("wrote %d SFT records to %s", len(samples), out)
    return out
