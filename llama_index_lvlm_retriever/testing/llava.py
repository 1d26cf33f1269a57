"""A tiny random LLaVA checkpoint (CLIP vision tower + Llama), saved like a real one.

See :mod:`llama_index_lvlm_retriever.testing._lvlm_common` for the tokenizer and templates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from llama_index_lvlm_retriever.testing import _lvlm_common as common

logger = logging.getLogger(__name__)


def build_tiny_llava(
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
    vision_config: dict[str, Any] | None = None,
) -> Path:
    """Build, save and return a tiny random ``LlavaForConditionalGeneration`` + ``LlavaProcessor``.

    A 2-layer CLIP vision tower (CLS dropped, so ``(image_size / patch_size)**2`` tokens per image)
    and a Llama language model. ``initializer_range`` is ten times the usual 0.02 so that the
    random model's answers visibly depend on its inputs (tests compare scores across candidates).

    Args:
        save_dir: Folder to write (created if missing).
        seed: Seed of the weights; the global torch RNG is left untouched.
        image_size: Side of the (square) processed image.
        patch_size: Vision patch side; must divide ``image_size``.
        vision_hidden: Width of the vision tower.
        hidden: Width of the language model.
        layers: Layers of each tower.
        heads: Attention heads of the language model (the vision tower uses 2).
        initializer_range: Standard deviation of the random weights.
        extra_corpus: Extra tokenizer training sentences (e.g. your verbalizers).
        vision_config: A ``CLIPVisionConfig`` as a dict (e.g. a trained CLIP's
            ``model.config.vision_config.to_dict()``) to use for the tower instead of the sizes
            above, so that the CLIP's image-tower weights can be copied in afterwards;
            ``image_size`` and ``patch_size`` then come from it.

    Returns:
        ``save_dir`` as a ``Path``.

    Example:
        >>> import tempfile
        >>> from transformers import AutoModelForImageTextToText, AutoProcessor
        >>> folder = build_tiny_llava(tempfile.mkdtemp())
        >>> type(AutoModelForImageTextToText.from_pretrained(folder)).__name__
        'LlavaForConditionalGeneration'
        >>> type(AutoProcessor.from_pretrained(folder)).__name__
        'LlavaProcessor'
    """
    if vision_config is not None:
        tower = CLIPVisionConfig(**{k: v for k, v in vision_config.items() if k not in ("model_type", "transformers_version")})
        image_size, patch_size = int(tower.image_size), int(tower.patch_size)
    else:
        tower = CLIPVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            initializer_range=initializer_range,
        )
    common.check_sizes(image_size, patch_size, hidden, heads)
    tokenizer = common.build_tokenizer(common.LLAVA_SPECIALS, pad="<pad>", eos="</s>", bos="<s>", extra_corpus=extra_corpus)
    common.check_builtin_verbalizers(tokenizer, " ")
    patches = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=tower,
        text_config=common.llama_text_config(tokenizer, hidden=hidden, layers=layers, heads=heads, init=initializer_range),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        # The last layer of a 2-layer tower; "default" drops the CLS token, so one <image> token
        # per patch and image_seq_length = patches.
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=patches,
        initializer_range=initializer_range,
    )
    model = common.seeded(lambda: LlavaForConditionalGeneration(config), seed)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token the tower adds and "default" drops
        chat_template=common.LLAVA_TEMPLATE,
    )
    return common.save(save_dir, model, processor, tokenizer)


__all__ = ["build_tiny_llava"]
