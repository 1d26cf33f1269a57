"""A tiny random Idefics3 checkpoint, saved like a real one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
)

from llama_index_lvlm_retriever.testing import _lvlm_common as common

logger = logging.getLogger(__name__)


def build_tiny_idefics3(
    save_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    scale_factor: int = 2,
    vision_hidden: int = 32,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    initializer_range: float = 0.2,
    extra_corpus: Sequence[str] = (),
) -> Path:
    """Build, save and return a tiny random ``Idefics3ForConditionalGeneration`` (SmolVLM family).

    Image splitting is off, so each image is one global view of
    ``(image_size / patch_size / scale_factor)**2`` tokens wrapped in ``<fake_token_around_image>``
    and ``<global-img>``; the chat common.template follows SmolVLM's (``<|im_start|>User:...``).

    Args:
        save_dir: Folder to write (created if missing).
        seed: Seed of the weights; the global torch RNG is left untouched.
        image_size: Longest side of the processed image.
        patch_size: Vision patch side.
        scale_factor: Pixel-shuffle factor of the connector (patches per side must divide by it).
        vision_hidden: Width of the vision tower.
        hidden: Width of the language model.
        layers: Layers of each tower.
        heads: Attention heads of the language model (the vision tower uses 2).
        initializer_range: Standard deviation of the random weights.
        extra_corpus: Extra tokenizer training sentences.

    Returns:
        ``save_dir`` as a ``Path``.
    """
    common.check_sizes(image_size, patch_size, hidden, heads, multiple=scale_factor)
    tokenizer = common.build_tokenizer(common.IDEFICS3_SPECIALS, pad="<pad>", eos="<end_of_utterance>", bos="<s>", extra_corpus=extra_corpus)
    common.check_builtin_verbalizers(tokenizer, " ")
    image_seq_len = (image_size // patch_size // scale_factor) ** 2
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            initializer_range=initializer_range,
        ),
        text_config=common.llama_text_config(tokenizer, hidden=hidden, layers=layers, heads=heads, init=initializer_range),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = common.seeded(lambda: Idefics3ForConditionalGeneration(config), seed)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            do_image_splitting=False,
            size={"longest_edge": image_size},
            max_image_size={"longest_edge": image_size},
        ),
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=common.IDEFICS3_TEMPLATE,
    )
    return common.save(save_dir, model, processor, tokenizer)


__all__ = ["build_tiny_idefics3"]
