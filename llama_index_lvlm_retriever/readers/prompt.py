"""Prompt layout shared by every reader: one user turn per (case, candidate).

The paper's layout (arXiv 2508.17394), in one user turn::

    [retrieved image] "background: <caption>" [query image] <instruction + question>

:class:`ReaderPromptConfig` makes it configurable (drop the retrieved image, its text, or the query
image; a system prompt; the longest image side). A closed-book slot (candidate ``None``) gives
``[query image] <instruction + question>``. A candidate whose ``image_path`` is empty is text-only
background: its caption is shown and no retrieved image.

:class:`PromptBuilder` turns a case and a candidate into a :class:`ReaderPrompt`, a neutral list
of image and text parts in display order; each reader renders it for its backend (a chat template
for transformers, ``ImageBlock``/``TextBlock`` messages for LlamaIndex).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llama_index_lvlm_retriever.data.images import ImageLoadError, load_image
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.tasks import TaskSpec

logger = logging.getLogger(__name__)

__all__ = [
    "TEXT_PLACEHOLDER",
    "PromptBuilder",
    "PromptPart",
    "ReaderPrompt",
    "ReaderPromptConfig",
]

TEXT_PLACEHOLDER = "{text}"
"""Replaced by the candidate's caption in :attr:`ReaderPromptConfig.background_template`."""

# Decoded, resized images kept per PromptBuilder: the query image is reused for all k candidates
# and a popular KB image for many cases. 256 small RGB images stay well under 1 GB at 1024 px.
_IMAGE_CACHE_SIZE = 256


class ReaderPromptConfig(BaseModel):
    """How a (case, candidate) pair is laid out in the reader's user turn.

    Args:
        background_template: Text shown after the retrieved image; ``{text}`` is the caption.
        include_retrieved_image: Show the candidate's image.
        include_retrieved_text: Show the candidate's caption (through ``background_template``).
        include_query_image: Show the query image (``False`` gives a text-only question, e.g. to
            measure how much the reader relies on the retrieved pair alone).
        system_prompt: Optional system message (``""`` = none).
        max_image_side: Images are downscaled (aspect kept) so their longer side is at most this
            many pixels; ``None`` keeps them as they are. The model's processor still applies its
            own resizing afterwards.
        max_background_chars: Captions longer than this are cut (at a word boundary when
            possible) to bound the prompt; ``None`` keeps them whole.

    Example:
        >>> ReaderPromptConfig(include_retrieved_image=False).background_template
        'background: {text}'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    background_template: str = Field(
        default="background: {text}", description="Text after the retrieved image; {text} = caption."
    )
    include_retrieved_image: bool = Field(default=True, description="Show the candidate's image.")
    include_retrieved_text: bool = Field(default=True, description="Show the candidate's caption.")
    include_query_image: bool = Field(default=True, description="Show the query image.")
    system_prompt: str = Field(default="", description="System message ('' = none).")
    max_image_side: int | None = Field(
        default=512, gt=0, description="Longest image side in pixels after downscaling (None = keep)."
    )
    max_background_chars: int | None = Field(
        default=None, gt=0, description="Cut captions longer than this many characters (None = keep)."
    )

    @field_validator("background_template")
    @classmethod
    def _has_text_slot(cls, value: str) -> str:
        if TEXT_PLACEHOLDER not in value:
            raise ValueError(
                f"background_template {value!r} has no {TEXT_PLACEHOLDER} placeholder for the "
                "candidate's caption"
            )
        return value


@dataclass(frozen=True)
class PromptPart:
    """One element of the user turn: an image or a piece of text.

    Args:
        kind: ``"image"`` or ``"text"``.
        text: The text (``kind == "text"``).
        image: The decoded, resized RGB image (``kind == "image"``).
        role: What the part is: ``"retrieved_image"``, ``"background"``, ``"query_image"`` or
            ``"question"``.
    """

    kind: Literal["image", "text"]
    role: str
    text: str = ""
    image: Image.Image | None = None


@dataclass(frozen=True)
class ReaderPrompt:
    """A rendered-agnostic prompt: system text and the user turn's parts in display order."""

    parts: tuple[PromptPart, ...]
    system: str = ""

    @property
    def images(self) -> list[Image.Image]:
        """The images in the order they appear (the order pixel values must follow)."""
        return [part.image for part in self.parts if part.kind == "image" and part.image is not None]

    def to_chat_messages(self) -> list[dict[str, Any]]:
        """Messages in the transformers chat-template format (images as ``{"type": "image"}``)."""
        content: list[dict[str, Any]] = []
        for part in self.parts:
            if part.kind == "image":
                content.append({"type": "image"})
            else:
                content.append({"type": "text", "text": part.text})
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        messages.append({"role": "user", "content": content})
        return messages


def _fit(image: Image.Image, max_side: int | None) -> Image.Image:
    if max_side is None or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    head = text[:limit]
    space = head.rfind(" ")
    # Cut at the last word boundary unless that throws away more than a fifth of the budget.
    return (head[:space] if space > limit * 0.8 else head).rstrip() + " ..."


class PromptBuilder:
    """Builds :class:`ReaderPrompt` objects for a task, decoding each image once.

    Args:
        task: The task whose instruction and question end the prompt.
        config: The layout.

    Example:
        >>> from llama_index_lvlm_retriever.tasks import get_task
        >>> builder = PromptBuilder(get_task("breastmnist"), ReaderPromptConfig(include_query_image=False))
        >>> prompt = builder.build(Case(id="c", image_path=""), KBItem(id="k", image_path="", text="benign cyst"))
        >>> [part.text for part in prompt.parts]
        ['background: benign cyst', 'Is the lesion in this breast ultrasound image malignant? Answer yes or no.']
    """

    def __init__(self, task: TaskSpec, config: ReaderPromptConfig | None = None) -> None:
        self.task = task
        self.config = config or ReaderPromptConfig()
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()

    @property
    def questions_per_pair(self) -> int:
        """Prompts per (case, candidate): 1, or one yes/no question per label (multi-label)."""
        return self.task.n_labels if self.task.multi_label else 1

    def check_images(
        self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem | None]]
    ) -> None:
        """Fail fast, before any model work, on an image file that does not exist.

        Raises:
            ImageLoadError: A query or candidate image the layout shows is missing; the message
                names the case or candidate.
        """
        for case, row in zip(cases, candidates):
            if self.config.include_query_image:
                self._require_file(case.image_path, self._case_owner(case))
            if not self.config.include_retrieved_image:
                continue
            for slot, item in enumerate(row):
                if item is not None and item.image_path:
                    self._require_file(item.image_path, self._candidate_owner(case, item, slot))

    def build(
        self,
        case: Case,
        candidate: KBItem | None,
        *,
        label_index: int | None = None,
        slot: int = 0,
    ) -> ReaderPrompt:
        """The prompt for one (case, candidate) pair.

        Args:
            case: The query case.
            candidate: The retrieved pair, or ``None`` for closed-book.
            label_index: Multi-label tasks: the label the yes/no question is about.
            slot: Position of the candidate in the case's list (for error messages).

        Returns:
            The prompt, images decoded and resized.

        Raises:
            ImageLoadError: An image is missing or unreadable; the message names its owner.
            ValueError: The question cannot be rendered (see :meth:`TaskSpec.render_question`).
        """
        config = self.config
        parts: list[PromptPart] = []
        if candidate is not None:
            if config.include_retrieved_image and candidate.image_path:
                owner = self._candidate_owner(case, candidate, slot)
                parts.append(PromptPart("image", "retrieved_image", image=self._image(candidate.image_path, owner)))
            if config.include_retrieved_text and candidate.text.strip():
                caption = _cut(candidate.text.strip(), config.max_background_chars)
                text = config.background_template.replace(TEXT_PLACEHOLDER, caption)
                parts.append(PromptPart("text", "background", text=text))
        if config.include_query_image:
            parts.append(PromptPart("image", "query_image", image=self._image(case.image_path, self._case_owner(case))))
        question = self.task.render_question(case.question, label_index)
        parts.append(PromptPart("text", "question", text=question))
        return ReaderPrompt(parts=tuple(parts), system=config.system_prompt)

    def clear_cache(self) -> None:
        """Forget decoded images (call when image files may have changed)."""
        self._cache.clear()

    @staticmethod
    def _case_owner(case: Case) -> str:
        return f"query image of case {case.id!r}"

    @staticmethod
    def _candidate_owner(case: Case, item: KBItem, slot: int) -> str:
        return f"image of candidate {item.id!r} (slot {slot} of case {case.id!r})"

    @staticmethod
    def _require_file(path: str, owner: str) -> None:
        if not path:
            raise ImageLoadError(
                f"{owner} has an empty image_path; give it an image or turn the image off in "
                "ReaderPromptConfig"
            )
        if not Path(path).is_file():
            raise ImageLoadError(
                f"{owner}: image file not found: {path}. Fix the path, or for a candidate use an "
                "empty image_path to read it as text-only background."
            )

    def _image(self, path: str, owner: str) -> Image.Image:
        cached = self._cache.get(path)
        if cached is not None:
            self._cache.move_to_end(path)
            return cached
        self._require_file(path, owner)
        try:
            image = load_image(path)
        except ImageLoadError as err:
            raise ImageLoadError(f"{owner}: {err}") from err
        image = _fit(image, self.config.max_image_side)
        self._cache[path] = image
        if len(self._cache) > _IMAGE_CACHE_SIZE:
            self._cache.popitem(last=False)
        return image
