"""Reader-SFT batches: each sample encoded once, batches collated by right padding.

A sample is rendered exactly as scoring renders it (the reader's
:class:`~llama_index_lvlm_retriever.readers.prompt.PromptBuilder` and chat template), the answer's
token ids are appended after the prompt (:func:`append_continuations`), and its labels are
:data:`IGNORE_INDEX` everywhere but the answer. Encoding a sample runs the processor (image
decoding, resizing, tokenisation), which costs more than a small model's training step, so
:class:`SFTDataset` keeps each encoding for the later epochs within a memory budget.
:class:`SFTCollator` right-pads the per-token tensors and stacks the image tensors: a batch of
collated samples equals the processor's own right-padded batch of the same prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from llama_index_lvlm_retriever.readers._hf_batch import append_continuations
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.readers.prompt import PromptBuilder
from llama_index_lvlm_retriever.training.sft_data import SFTSample

__all__ = ["IGNORE_INDEX", "SFTCollator", "SFTDataset", "encode_sft_sample"]

IGNORE_INDEX = -100
"""Label of every position that carries no loss (prompt, image and padding tokens)."""


def encode_sft_sample(reader: HFLVLMReader, prompts: PromptBuilder, sample: SFTSample) -> dict[str, torch.Tensor]:
    """One sample's model inputs plus ``labels``, each with a leading batch dimension of 1.

    Returns:
        The processor's tensors for the prompt with the answer's token ids appended;
        ``labels`` ``(1, T)`` holds those ids at the answer's positions, :data:`IGNORE_INDEX`
        elsewhere.
    """
    prompt = prompts.build(sample.case, sample.candidate, label_index=sample.label_index, slot=sample.rank)
    encoded = reader.processor(
        text=[reader._chat_text(prompt)], images=[prompt.images] if prompt.images else None, return_tensors="pt"
    )
    encoded = {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
    answer = reader.answer_token_ids[sample.answer_index]
    n_prompt = int(encoded["attention_mask"].sum())
    out, _, _, _ = append_continuations(encoded, [answer], pad_token_id=reader._pad_id, paligemma=reader._paligemma)
    labels = torch.full_like(out["input_ids"], IGNORE_INDEX)  # (1, T)
    labels[0, n_prompt : n_prompt + len(answer)] = torch.as_tensor(answer, dtype=labels.dtype)
    out["labels"] = labels
    return out


class SFTDataset(torch.utils.data.Dataset):
    """SFT samples encoded for a reader on first access, kept while they fit a memory budget.

    Args:
        reader: The reader whose processor, prompt format and answer ids are used.
        samples: The samples.
        prompts: Prompt builder (the reader's own unless the SFT overrides the image side).
        cache_bytes: Keep encodings up to this many bytes in total (later ones are re-encoded
            at each access); 0 disables the cache.
    """

    def __init__(
        self, reader: HFLVLMReader, samples: Sequence[SFTSample], prompts: PromptBuilder, *, cache_bytes: int = 1 << 30
    ) -> None:
        self.reader = reader
        self.samples = list(samples)
        self.prompts = prompts
        self.cache_bytes = cache_bytes
        self._cache: dict[int, dict[str, torch.Tensor]] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        encoded = encode_sft_sample(self.reader, self.prompts, self.samples[index])
        size = sum(t.numel() * t.element_size() for t in encoded.values())
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[index] = encoded
            self._cached_bytes += size
        return encoded


class SFTCollator:
    """Collate encoded samples into one right-padded batch.

    Per-token tensors (``(1, T)``: ``input_ids``, ``attention_mask``, ``labels``, token type ids)
    are right-padded to the longest row (the pad id, 0, :data:`IGNORE_INDEX`, 0); image tensors are
    concatenated along their first dimension, and per-row image stacks of different lengths
    (Idefics3's ``(1, n_images, ...)``) are padded with empty images, as the processor pads them.

    Args:
        pad_token_id: Id written into padded ``input_ids`` slots.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        keys = list(rows[0])
        if any(list(row) != keys for row in rows):
            raise ValueError(
                f"SFT samples encode to different tensors ({sorted(set().union(*map(set, rows)))}); "
                "mix text-only and image samples in separate runs, or use batch_size 1"
            )
        width = max(row["input_ids"].shape[1] for row in rows)
        lengths = [row["input_ids"].shape[1] for row in rows]
        batch: dict[str, torch.Tensor] = {}
        for key in keys:
            values = [row[key] for row in rows]
            if all(v.ndim == 2 and v.shape[0] == 1 and v.shape[1] == n for v, n in zip(values, lengths)):
                fill = self.pad_token_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
                batch[key] = torch.cat([_pad_dim(v, 1, width, fill) for v in values])  # (R, T)
            else:
                batch[key] = _stack_images(key, values)
        return batch


def _pad_dim(value: torch.Tensor, dim: int, size: int, fill: int | float) -> torch.Tensor:
    missing = size - value.shape[dim]
    if missing <= 0:
        return value
    shape = list(value.shape)
    shape[dim] = missing
    return torch.cat([value, value.new_full(shape, fill)], dim=dim)


def _stack_images(key: str, values: Sequence[torch.Tensor]) -> torch.Tensor:
    if all(v.shape[1:] == values[0].shape[1:] for v in values):
        return torch.cat(list(values))  # LLaVA (n_images, c, h, w); Qwen2-VL patches; grids
    if all(v.ndim >= 3 and v.shape[0] == 1 and v.shape[2:] == values[0].shape[2:] for v in values):
        longest = max(v.shape[1] for v in values)
        return torch.cat([_pad_dim(v, 1, longest, 0) for v in values])  # (R, n_images, ...)
    raise ValueError(
        f"SFT samples have image tensors {key!r} of shapes {[tuple(v.shape) for v in values]} that cannot be "
        "batched; give the samples the same image size (the reader's max_image_side) or use batch_size 1"
    )
