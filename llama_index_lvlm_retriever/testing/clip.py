"""Tiny random CLIP and SigLIP dual encoders, saved like real checkpoints, built offline.

Each builder writes a folder that ``AutoModel``/``AutoProcessor.from_pretrained`` (and therefore
``CLIPEmbedding.from_pretrained``) load exactly as they load a hub checkpoint: ``config.json`` +
``model.safetensors`` + the processor and tokenizer files. Weights are random (seeded), so the
vectors mean nothing, but every code path between an image and a normalised vector is real.
Building and loading take a fraction of a second on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPVisionConfig,
    SiglipConfig,
    SiglipModel,
    SiglipProcessor,
    SiglipTextConfig,
    SiglipVisionConfig,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from llama_index_lvlm_retriever.testing.tokenizer import (
    BPEVocab,
    build_clip_tokenizer,
    train_clip_bpe,
    write_bpe_files,
)

logger = logging.getLogger(__name__)

__all__ = ["build_tiny_clip", "build_tiny_siglip"]


def build_tiny_clip(
    save_dir: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    projection_dim: int = 16,
    max_text_length: int = 32,
    vocab_size: int = 1024,
    seed: int = 0,
) -> Path:
    """Build, save and return a tiny random ``CLIPModel`` + ``CLIPProcessor`` folder.

    The text tower's ``eos_token_id`` is the tokenizer's real ``<|endoftext|>`` id (1), so text
    pooling takes the first end-of-text position (an ``eos_token_id`` of 2 would switch on
    transformers' legacy argmax-of-ids pooling).

    Args:
        save_dir: Folder to write (created if missing).
        image_size: Input resolution; the processor resizes and centre-crops to it.
        patch_size: Vision patch size (must divide ``image_size``).
        hidden: Width of both towers.
        layers: Transformer layers per tower.
        heads: Attention heads per layer (must divide ``hidden``).
        projection_dim: Size of the shared embedding space (the output vector size).
        max_text_length: Text positions; longer texts must be truncated to this many tokens.
        vocab_size: Largest tokenizer vocabulary (see ``train_clip_bpe``); at least 514.
        seed: Seed of the weight initialisation; the global torch RNG is left untouched.

    Returns:
        ``save_dir`` as a ``Path``.

    Raises:
        ValueError: ``patch_size`` does not divide ``image_size`` or ``heads`` does not divide
            ``hidden``.

    Example:
        >>> import tempfile
        >>> from transformers import AutoModel
        >>> folder = build_tiny_clip(tempfile.mkdtemp(), projection_dim=8)
        >>> AutoModel.from_pretrained(folder).config.projection_dim
        8
    """
    _check_shapes(image_size=image_size, patch_size=patch_size, hidden=hidden, heads=heads)
    bpe = train_clip_bpe(vocab_size=vocab_size)
    tokenizer = build_clip_tokenizer(bpe, model_max_length=max_text_length)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_text_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
    )
    config = CLIPConfig(
        text_config=text_config, vision_config=vision_config, projection_dim=projection_dim
    )
    model = _seeded(lambda: CLIPModel(config), seed)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(save_dir, model, processor, bpe)


def build_tiny_siglip(
    save_dir: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    max_text_length: int = 16,
    vocab_size: int = 1024,
    seed: int = 0,
) -> Path:
    """Build, save and return a tiny random ``SiglipModel`` + ``SiglipProcessor`` folder.

    Real SigLIP checkpoints use a SentencePiece tokenizer, which cannot be trained offline without
    the ``sentencepiece`` package; this builder pairs the SigLIP architecture with the offline
    CLIP-style BPE tokenizer instead, which ``AutoProcessor`` loads the same way. The embedding
    size is ``hidden`` (SigLIP has no separate projection size). SigLIP pools text at the last
    position, so texts must be padded to ``max_text_length`` (``CLIPEmbedding`` does that for
    SigLIP models).

    Args:
        save_dir: Folder to write (created if missing).
        image_size: Input resolution; the processor resizes to it.
        patch_size: Vision patch size (must divide ``image_size``).
        hidden: Width of both towers and the embedding size.
        layers: Transformer layers per tower.
        heads: Attention heads per layer (must divide ``hidden``).
        max_text_length: Text positions.
        vocab_size: Largest tokenizer vocabulary (see ``train_clip_bpe``); at least 514.
        seed: Seed of the weight initialisation; the global torch RNG is left untouched.

    Returns:
        ``save_dir`` as a ``Path``.

    Raises:
        ValueError: ``patch_size`` does not divide ``image_size`` or ``heads`` does not divide
            ``hidden``.

    Example:
        >>> import tempfile
        >>> from transformers import AutoModel
        >>> folder = build_tiny_siglip(tempfile.mkdtemp())
        >>> AutoModel.from_pretrained(folder).config.model_type
        'siglip'
    """
    _check_shapes(image_size=image_size, patch_size=patch_size, hidden=hidden, heads=heads)
    bpe = train_clip_bpe(vocab_size=vocab_size)
    tokenizer = build_clip_tokenizer(bpe, model_max_length=max_text_length)
    text_config = SiglipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_text_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = SiglipVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
    )
    config = SiglipConfig(text_config=text_config, vision_config=vision_config)
    model = _seeded(lambda: SiglipModel(config), seed)
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(save_dir, model, processor, bpe)


def _check_shapes(*, image_size: int, patch_size: int, hidden: int, heads: int) -> None:
    if image_size % patch_size:
        raise ValueError(
            f"patch_size={patch_size} does not divide image_size={image_size}; "
            "pick sizes such as image_size=32, patch_size=8"
        )
    if hidden % heads:
        raise ValueError(
            f"heads={heads} does not divide hidden={hidden}; pick e.g. hidden=32, heads=4"
        )


def _seeded(make: Callable[[], PreTrainedModel], seed: int) -> PreTrainedModel:
    # fork_rng restores the global CPU RNG afterwards, so building a model never perturbs the
    # caller's random stream; devices=[] keeps CUDA out of it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return model.eval()


def _save(
    save_dir: str | Path, model: PreTrainedModel, processor: ProcessorMixin, bpe: BPEVocab
) -> Path:
    folder = Path(save_dir)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    # The slow-tokenizer file pair too, so the folder looks like a hub CLIP checkpoint.
    write_bpe_files(bpe, folder)
    logger.debug("saved tiny %s to %s", type(model).__name__, folder)
    return folder
