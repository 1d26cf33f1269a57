"""A tiny random Qwen2-VL checkpoint and a processor that needs no video processor (no torchvision).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import (
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.processing_utils import ProcessorMixin

from llama_index_lvlm_retriever.testing import _lvlm_common as common

logger = logging.getLogger(__name__)


class TinyQwen2VLProcessor(Qwen2VLProcessor):
    """A ``Qwen2VLProcessor`` without the video processor (which needs torchvision).

    Images only. ``AutoProcessor`` cannot rebuild it by name, so load it with
    ``TinyQwen2VLProcessor.from_pretrained(folder)`` and pass it to the reader.

    Args:
        image_processor: A Qwen2-VL image processor.
        tokenizer: A tokenizer with Qwen2-VL's vision special tokens.
        chat_template: The chat common.template.
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Qwen2VLProcessor.__init__ insists on a video processor; set what it would set, then
        # initialise the mixin with the two sub-processors this class declares.
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


def build_tiny_qwen2_vl(
    save_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden: int = 32,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    initializer_range: float = 0.2,
    extra_corpus: Sequence[str] = (),
) -> Path:
    """Build, save and return a tiny random ``Qwen2VLForConditionalGeneration`` (M-RoPE positions).

    ``AutoModelForImageTextToText.from_pretrained`` loads the model; the processor is a
    :class:`TinyQwen2VLProcessor` (no torchvision), loaded with its own ``from_pretrained``.

    Args:
        save_dir: Folder to write (created if missing).
        seed: Seed of the weights; the global torch RNG is left untouched.
        image_size: Side of the processed image (a multiple of ``2 * patch_size``).
        patch_size: Vision patch side (2x2 patches merge into one token).
        vision_hidden: Width of the vision tower.
        hidden: Width of the language model (``hidden / heads`` must be 16 for the M-RoPE split).
        layers: Layers of each tower.
        heads: Attention heads of the language model.
        initializer_range: Standard deviation of the random weights.
        extra_corpus: Extra tokenizer training sentences.

    Returns:
        ``save_dir`` as a ``Path``.
    """
    common.check_sizes(image_size, patch_size, hidden, heads, multiple=2)
    if hidden // heads != 16:
        raise ValueError(f"hidden / heads must be 16 for the tiny M-RoPE split, got {hidden}/{heads}")
    tokenizer = common.build_tokenizer(common.QWEN2_VL_SPECIALS, pad="<|endoftext|>", eos="<|im_end|>", extra_corpus=extra_corpus)
    common.check_builtin_verbalizers(tokenizer, "")
    config = Qwen2VLConfig(
        vision_config={
            "depth": layers,
            "embed_dim": vision_hidden,
            "hidden_size": hidden,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "initializer_range": initializer_range,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 1024,
            "initializer_range": initializer_range,
            # head_dim 16 -> 8 rotary frequencies split over (time, height, width).
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": None,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        initializer_range=initializer_range,
    )
    model = common.seeded(lambda: Qwen2VLForConditionalGeneration(config), seed)
    processor = TinyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(
            min_pixels=image_size * image_size,
            max_pixels=image_size * image_size,
            patch_size=patch_size,
            merge_size=2,
            temporal_patch_size=2,
        ),
        tokenizer=tokenizer,
        chat_template=common.QWEN2_VL_TEMPLATE,
    )
    return common.save(save_dir, model, processor, tokenizer)


__all__ = ["TinyQwen2VLProcessor", "build_tiny_qwen2_vl"]
