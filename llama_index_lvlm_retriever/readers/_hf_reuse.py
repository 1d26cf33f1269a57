"""Work the reader does once instead of once per row: image features and chat-template rendering.

A ``score`` call reads ``n * k`` (case, candidate) rows, but the query image of a case is in all
``k`` of its rows and a popular knowledge-base image in many cases' rows, and every row is the same
chat layout with other texts. Done naively, the processor re-processes each image for every row
it appears in and the chat template is re-rendered for every row: about half of the reader's time
on small models.

* :class:`CachingImageProcessor` stands in for the processor's image processor: it processes each
  distinct image once (kept in a small LRU cache, with a strong reference so the image's id stays
  its key) and concatenates the per-image outputs in the order the processor asked for them.
* :class:`ChatTemplateCache` renders the chat template once per prompt layout (system prompt and
  the kinds and roles of the parts), with sentinel strings in the text slots, and fills the texts
  in afterwards.
* :func:`vectorised_mm_token_type_ids` replaces a processor's per-row ``np.isin`` loop that marks
  image tokens (Qwen2-VL) by one ``np.isin`` over the padded batch.

Both are exact by construction, and both check it on first use: the first batch is also processed
the plain way and compared bit for bit (tensors ``torch.equal``, text ``==``); a processor or a
template that does not give identical results (e.g. one that pads images across the batch) is used
the plain way from then on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

from llama_index_lvlm_retriever.readers.prompt import ReaderPrompt

logger = logging.getLogger(__name__)

__all__ = ["CachingImageProcessor", "ChatTemplateCache", "vectorised_mm_token_type_ids"]

_SENTINEL = "\u27e6lvlm-reader-text-{}\u27e7"  # ⟦...⟧: characters no template rewrites


def _flat_images(images: Any) -> list[Any] | None:
    """The images of a processor call in order (rows flattened), or ``None`` for a layout we do not know."""
    if isinstance(images, Image.Image):
        return [images]
    if not isinstance(images, (list, tuple)):
        return None
    flat: list[Any] = []
    for entry in images:
        if isinstance(entry, Image.Image):
            flat.append(entry)
        elif isinstance(entry, (list, tuple)) and all(isinstance(img, Image.Image) for img in entry):
            flat.extend(entry)
        else:
            return None
    return flat


class CachingImageProcessor:
    """An image processor that processes each distinct image once, then reuses its outputs.

    Args:
        inner: The processor's own image processor (every attribute but ``__call__`` is its).
        capacity: Images whose outputs are kept between calls (least recently used dropped).
    """

    def __init__(self, inner: Any, capacity: int) -> None:
        self._inner = inner
        self._capacity = capacity
        self._cache: OrderedDict[tuple[int, str], tuple[Any, dict[str, torch.Tensor]]] = OrderedDict()
        self.enabled: bool | None = None  # None until the first call has compared with the plain path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, images: Any, **kwargs: Any) -> Any:
        flat = _flat_images(images)
        if self.enabled is False or not flat:
            return self._inner(images, **kwargs)
        setting = repr(sorted(kwargs.items(), key=lambda kv: kv[0]))
        try:
            reused = self._assemble(flat, setting, kwargs)
        except (RuntimeError, TypeError, ValueError) as err:  # e.g. images of different sizes: padded per batch
            logger.debug("image outputs not concatenable (%s); processing this batch the plain way", err)
            return self._inner(images, **kwargs)
        if self.enabled is None:
            plain = self._inner(images, **kwargs)
            self.enabled = _same_outputs(plain, reused)
            if not self.enabled:
                logger.info(
                    "%s gives other outputs per image than per batch; processing images the plain way",
                    type(self._inner).__name__,
                )
                self._cache.clear()
                return plain
        return reused

    def _assemble(self, flat: Sequence[Any], setting: str, kwargs: dict[str, Any]) -> BatchFeature:
        entries = [self._one(image, setting, kwargs) for image in flat]
        keys = list(entries[0])
        if any(list(entry) != keys for entry in entries):
            raise ValueError("per-image outputs have different keys")
        # (n_i, ...) per image -> (sum n_i, ...): LLaVA's (1, C, H, W) pixels, Qwen2-VL's patch rows and grids.
        return BatchFeature({key: torch.cat([entry[key] for entry in entries], dim=0) for key in keys})

    def _one(self, image: Any, setting: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        key = (id(image), setting)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is image:
            self._cache.move_to_end(key)
            return hit[1]
        out = self._inner([image], **kwargs)
        tensors = {name: value for name, value in out.items() if isinstance(value, torch.Tensor)}
        if len(tensors) != len(out):
            raise TypeError(f"non-tensor image outputs {sorted(set(out) - set(tensors))}")
        self._cache[key] = (image, tensors)  # the image itself: its id cannot be reused while cached
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return tensors


def _same_outputs(plain: Any, reused: BatchFeature) -> bool:
    if set(plain.keys()) != set(reused.keys()):
        return False
    return all(
        isinstance(plain[key], torch.Tensor) and plain[key].shape == reused[key].shape and torch.equal(plain[key], reused[key])
        for key in plain.keys()
    )


class ChatTemplateCache:
    """Renders the chat template once per prompt layout and fills the texts in.

    Args:
        render: The plain rendering (``ReaderPrompt`` -> chat text).
    """

    def __init__(self, render: Callable[[ReaderPrompt], str]) -> None:
        self._render = render
        self._skeletons: dict[tuple[Any, ...], str | None] = {}

    def __call__(self, prompt: ReaderPrompt) -> str:
        """The chat text of ``prompt``, equal to ``render(prompt)``."""
        layout = (prompt.system, tuple((part.kind, part.role) for part in prompt.parts))
        texts = [part.text for part in prompt.parts if part.kind == "text"]
        if layout not in self._skeletons:
            return self._learn(layout, prompt, texts)
        skeleton = self._skeletons[layout]
        return self._render(prompt) if skeleton is None else _fill(skeleton, texts)

    def _learn(self, layout: tuple[Any, ...], prompt: ReaderPrompt, texts: list[str]) -> str:
        slots = iter(range(len(texts)))
        parts = tuple(replace(part, text=_SENTINEL.format(next(slots))) if part.kind == "text" else part for part in prompt.parts)
        skeleton: str | None = self._render(ReaderPrompt(parts=parts, system=prompt.system))
        real = self._render(prompt)
        if not all(skeleton.count(_SENTINEL.format(i)) == 1 for i in range(len(texts))) or _fill(skeleton, texts) != real:
            logger.info("the chat template does not place texts verbatim; rendering every prompt")
            skeleton = None
        self._skeletons[layout] = skeleton
        return real


def _fill(skeleton: str, texts: Sequence[str]) -> str:
    # Split on the sentinels in order, so a text that happens to contain one is left as it is.
    out, rest = [], skeleton
    for i, text in enumerate(texts):
        head, rest = rest.split(_SENTINEL.format(i), 1)
        out += [head, text]
    return "".join([*out, rest])


def vectorised_mm_token_type_ids(processor: Any) -> Callable[[Any], Any] | None:
    """A drop-in for ``processor.create_mm_token_type_ids`` working on the whole batch at once.

    Returns ``None`` when the processor has no such method or token-id lists. The replacement
    falls back to the processor's own loop for ragged (unpadded) input, and checks itself against
    it on its first call (then uses the loop for good if they differ).
    """
    plain = getattr(processor, "create_mm_token_type_ids", None)
    kinds = [(getattr(processor, name, None), value) for name, value in
             (("image_token_ids", 1), ("video_token_ids", 2), ("audio_token_ids", 3))]
    if plain is None or any(ids is None for ids, _ in kinds):
        return None
    state: dict[str, bool] = {}

    def create(input_ids: Any) -> Any:
        if state.get("plain") or not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            return plain(input_ids)
        ids = input_ids.numpy()  # (R, T)
        types = np.zeros_like(ids)  # (R, T): 0 text, 1 image, 2 video, 3 audio (the processor's order)
        for token_ids, value in kinds:
            types[np.isin(ids, [t for t in token_ids if t is not None])] = value
        out = types.tolist()
        if "checked" not in state:
            state["checked"] = True
            state["plain"] = out != plain(input_ids)
            if state["plain"]:
                return plain(input_ids)
        return out

    return create
