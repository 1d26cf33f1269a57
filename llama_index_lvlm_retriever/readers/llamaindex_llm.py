"""LlamaIndexLLMReader: a reader over any LlamaIndex chat LLM that accepts images.

For models without logits (OpenAI, Anthropic, Ollama, ... through LlamaIndex), each (case,
candidate) pair is sent as one chat with the same prompt layout as
:class:`~llama_index_lvlm_retriever.readers.hf_lvlm.HFLVLMReader` (images as ``ImageBlock``s, text
as ``TextBlock``s), the free-text answer is mapped to a label, and the scores are one-hot.
Multi-label tasks ask one yes/no chat per label.

Mapping an answer (:func:`match_answer`), on lower-cased word sequences (punctuation ignored,
``<think>...</think>`` removed); a label's accepted forms are its verbalizer and its name:

1. the answer *is* one form (``"Melanoma."``);
2. else the answer *starts with* one form, longest form first (``"Yes, the lesion ..."``);
3. else exactly one label's verbalizer occurs somewhere, not right after a negation
   (``not``, ``no``, ``without``, ``non``) (``"This looks like grade 2 retinopathy"``).

Anything else (several labels, none, a negated mention only) is *unparseable*: ``parsed`` is
``False`` and the pair gets the uniform distribution (``P(yes) = 0.5`` per multi-label label), so
aggregation is not skewed; its prediction is ``""``. Substring matches inside words never count
(``"no"`` does not match ``"unknown"``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.llms import LLM
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs
from llama_index_lvlm_retriever.readers.prompt import (
    PromptBuilder,
    ReaderPrompt,
    ReaderPromptConfig,
)
from llama_index_lvlm_retriever.tasks import TaskSpec

logger = logging.getLogger(__name__)

__all__ = ["LlamaIndexLLMReader", "LlamaIndexLLMReaderConfig", "match_answer"]

_WORD = re.compile(r"\w+")
_THINK = re.compile(r"<think>.*?</think>", flags=re.DOTALL | re.IGNORECASE)
_NEGATIONS = frozenset({"not", "no", "without", "non"})
# How many unparseable answers are quoted in the warning of one score call.
_QUOTED_FAILURES = 3


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(_THINK.sub(" ", text).casefold()))


def _find(words: tuple[str, ...], phrase: tuple[str, ...]) -> list[int]:
    m = len(phrase)
    return [s for s in range(len(words) - m + 1) if words[s : s + m] == phrase]


def match_answer(answer: str, forms: Sequence[Sequence[str]], scan: Sequence[Sequence[str]] | None = None) -> int | None:
    """Map a free-text answer to a label index, or ``None`` when it is not clear.

    Args:
        answer: The model's answer.
        forms: For each label, the texts that count as that answer (verbalizer, label name).
        scan: For each label, the texts looked for anywhere in the answer (rule 3); defaults to
            ``forms``.

    Returns:
        The label index, or ``None`` (see the module docstring for the rules).

    Example:
        >>> match_answer("No, the lesion looks benign.", [["yes"], ["no"]])
        1
        >>> match_answer("It is unknown", [["yes"], ["no"]]) is None
        True
    """
    words = _words(answer)
    if not words:
        return None
    phrases = [[_words(text) for text in label_forms if _words(text)] for label_forms in forms]
    for index, label_phrases in enumerate(phrases):
        if words in label_phrases:
            return index
    leading = sorted(
        ((len(p), index) for index, label_phrases in enumerate(phrases) for p in label_phrases if words[: len(p)] == p),
        reverse=True,
    )
    if leading and (len(leading) == 1 or leading[0][0] > leading[1][0] or leading[0][1] == leading[1][1]):
        return leading[0][1]
    scan_phrases = phrases if scan is None else [[_words(t) for t in s if _words(t)] for s in scan]
    found = {
        index
        for index, label_phrases in enumerate(scan_phrases)
        for p in label_phrases
        for start in _find(words, p)
        if start == 0 or words[start - 1] not in _NEGATIONS
    }
    return found.pop() if len(found) == 1 else None


class LlamaIndexLLMReaderConfig(BaseModel):
    """Typed settings of a :class:`LlamaIndexLLMReader`.

    Args:
        prompt: Prompt layout (shared with the transformers reader).
        num_workers: Chats in flight at once (threads for ``score``, tasks for ``ascore``).
        image_format: Encoding of the images sent to the LLM.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: ReaderPromptConfig = Field(default_factory=ReaderPromptConfig, description="Prompt layout.")
    num_workers: int = Field(default=1, gt=0, description="Concurrent chats.")
    image_format: Literal["PNG", "JPEG"] = Field(default="PNG", description="Image encoding sent.")


class LlamaIndexLLMReader(Reader):
    """One chat per (case, candidate) with any LlamaIndex chat ``LLM``; one-hot label scores.

    Args:
        llm: A LlamaIndex chat LLM whose messages may carry ``ImageBlock``s (multimodal OpenAI,
            Anthropic, Gemini, Ollama vision models, ...).
        task: The task.
        config: Settings; or give them as keyword arguments, not both.
        **config_kwargs: Fields of :class:`LlamaIndexLLMReaderConfig`.

    Example:
        >>> from llama_index.core.llms.mock import MockLLM
        >>> from llama_index_lvlm_retriever.tasks import get_task
        >>> reader = LlamaIndexLLMReader(MockLLM(), get_task("closed_vqa"), num_workers=4)
        >>> reader.config.num_workers
        4
    """

    def __init__(
        self,
        llm: LLM,
        task: TaskSpec,
        config: LlamaIndexLLMReaderConfig | None = None,
        **config_kwargs: Any,
    ) -> None:
        if config is not None and config_kwargs:
            raise ValueError(
                f"pass either config= or keyword settings, not both (got config and {sorted(config_kwargs)})"
            )
        self.config = config or LlamaIndexLLMReaderConfig(**config_kwargs)
        self.llm = llm
        self.task = task
        self.model_name = str(getattr(llm.metadata, "model_name", "") or type(llm).__name__)
        self._prompts = PromptBuilder(task, self.config.prompt)
        if task.multi_label:
            self._forms: list[list[str]] = [[task.yes_verbalizer], [task.no_verbalizer]]
            self._scan: list[list[str]] = self._forms
        else:
            self._forms = [[v, name] for v, name in zip(task.answer_texts, task.labels)]
            self._scan = [[v] for v in task.answer_texts]

    # Building messages.

    def _encode(self, image: Image.Image, cache: dict[int, bytes]) -> bytes:
        key = id(image)
        if key not in cache:
            buffer = io.BytesIO()
            image.save(buffer, format=self.config.image_format)
            cache[key] = buffer.getvalue()
        return cache[key]

    def to_messages(self, prompt: ReaderPrompt, cache: dict[int, bytes] | None = None) -> list[ChatMessage]:
        """The LlamaIndex chat messages for one prompt (system message, then one user turn)."""
        cache = {} if cache is None else cache
        mimetype = f"image/{self.config.image_format.lower()}"
        blocks: list[Any] = []
        for part in prompt.parts:
            if part.kind == "image" and part.image is not None:
                blocks.append(ImageBlock(image=self._encode(part.image, cache), image_mimetype=mimetype))
            else:
                blocks.append(TextBlock(text=part.text))
        messages = []
        if prompt.system:
            messages.append(ChatMessage(role=MessageRole.SYSTEM, content=prompt.system))
        messages.append(ChatMessage(role=MessageRole.USER, blocks=blocks))
        return messages

    def _plan(
        self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem | None]], k: int
    ) -> list[list[ChatMessage]]:
        self._prompts.check_images(cases, candidates)
        questions = self._prompts.questions_per_pair
        cache: dict[int, bytes] = {}
        chats = []
        for i, case in enumerate(cases):
            for j in range(k):
                for q in range(questions):
                    label_index = q if self.task.multi_label else None
                    prompt = self._prompts.build(case, candidates[i][j], label_index=label_index, slot=j)
                    chats.append(self.to_messages(prompt, cache))
        return chats

    # Scoring.

    def _chat(self, messages: list[ChatMessage]) -> str:
        return str(self.llm.chat(messages).message.content or "")

    def score(
        self,
        cases: Sequence[Case],
        candidates: Sequence[Sequence[KBItem | None]],
        *,
        show_progress: bool = False,
    ) -> ReaderScores:
        """One chat per (case, candidate[, label]); see :class:`~.base.Reader`.

        Raises:
            ImageLoadError: A query or candidate image is missing or unreadable (named).
        """
        k = check_inputs(cases, candidates)
        chats = self._plan(cases, candidates, k)
        with ThreadPoolExecutor(max_workers=self.config.num_workers) as pool:
            answers = list(
                tqdm(pool.map(self._chat, chats), total=len(chats), desc="reader", disable=not show_progress)
            )
        return self._assemble(answers, cases, candidates, k)

    async def ascore(
        self,
        cases: Sequence[Case],
        candidates: Sequence[Sequence[KBItem | None]],
        *,
        show_progress: bool = False,
    ) -> ReaderScores:
        """Async :meth:`score` with ``llm.achat``, at most ``num_workers`` chats in flight."""
        k = check_inputs(cases, candidates)
        chats = self._plan(cases, candidates, k)
        gate = asyncio.Semaphore(self.config.num_workers)

        async def one(messages: list[ChatMessage]) -> str:
            async with gate:
                response = await self.llm.achat(messages)
            return str(response.message.content or "")

        answers = await asyncio.gather(*(one(m) for m in chats))
        return self._assemble(list(answers), cases, candidates, k)

    def _assemble(
        self,
        answers: list[str],
        cases: Sequence[Case],
        candidates: Sequence[Sequence[KBItem | None]],
        k: int,
    ) -> ReaderScores:
        n, n_labels = len(cases), self.task.n_labels
        matched = [match_answer(a, self._forms, self._scan) for a in answers]
        if self.task.multi_label:
            picks = np.array([-1 if m is None else m for m in matched]).reshape(n, k, n_labels)
            log_probs = np.where(picks == 0, 0.0, -np.inf)  # (n, k, L): P(yes) is 1 or 0
            log_probs = np.where(picks < 0, np.log(0.5), log_probs)
            parsed = (picks >= 0).all(axis=-1)  # (n, k)
        else:
            picks = np.array([-1 if m is None else m for m in matched]).reshape(n, k)
            log_probs = np.full((n, k, n_labels), -np.inf)
            rows, cols = np.nonzero(picks >= 0)
            log_probs[rows, cols, picks[rows, cols]] = 0.0
            log_probs[picks < 0] = -np.log(n_labels)  # uniform for unparseable answers
            parsed = picks >= 0
        failures = [a for a, m in zip(answers, matched) if m is None]
        if failures:
            logger.warning(
                "%d of %d answers could not be mapped to a label of task %r (e.g. %s)",
                len(failures), len(answers), self.task.name,
                "; ".join(repr(a[:80]) for a in failures[:_QUOTED_FAILURES]),
            )
        return ReaderScores(
            log_probs=log_probs.astype(np.float64),
            raw_log_likelihoods=None,
            parsed=parsed,
            labels=tuple(self.task.labels),
            multi_label=self.task.multi_label,
            case_ids=tuple(case.id for case in cases),
            candidate_ids=tuple(tuple(None if c is None else c.id for c in row) for row in candidates),
        )
