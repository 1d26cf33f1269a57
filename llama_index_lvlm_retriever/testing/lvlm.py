"""Tiny random image-text-to-text models (LLaVA, Idefics3, Qwen2-VL), saved like real checkpoints.

Each builder writes a folder holding ``config.json`` + ``model.safetensors``, the processor
(image processor, tokenizer, chat template) and ``generation_config.json``, so
``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained`` load it as they
load a hub checkpoint (Qwen2-VL excepted: see :func:`build_tiny_qwen2_vl`). Weights are random
(seeded); answers mean nothing, but every step between an image and a label score is real.

The tokenizer is a byte-level BPE trained offline on the built-in medical corpus plus the texts of
the built-in tasks (questions and verbalizers with and without a leading space), so every built-in
verbalizer is a single token and the verbalizers of a task start with distinct tokens (checked at
build time). Each chat template ends the generation prompt the way its real family does: LLaVA
and Idefics3 with ``"Assistant:"`` (answers follow after a space), Qwen2-VL with
``"<|im_start|>assistant\\n"`` (answers follow directly).

Building takes well under a second once the (cached) tokenizer is trained.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import ProcessorMixin

from llama_index_lvlm_retriever.tasks import TaskSpec, get_task, list_tasks
from llama_index_lvlm_retriever.testing.tokenizer import DEFAULT_CORPUS, train_byte_level_bpe

logger = logging.getLogger(__name__)

__all__ = [
    "TinyQwen2VLProcessor",
    "build_tiny_idefics3",
    "build_tiny_llava",
    "build_tiny_qwen2_vl",
    "lvlm_corpus",
]

_VOCAB_SIZE = 1024

_LLAVA_SPECIALS = ("<pad>", "<s>", "</s>", "<image>")
_IDEFICS3_SPECIALS = (
    "<pad>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
    *(f"<row_{row + 1}_col_{col + 1}>" for row in range(6) for col in range(6)),
)
_QWEN2_VL_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _template(*, start: str, role_format: str, image: str, end: str, generation: str) -> str:
    """A Jinja chat template: one line per message, parts in order, images as their placeholder.

    ``role_format`` is Jinja producing the role header (e.g. ``"{{ message['role'] | capitalize }}:"``).
    Newlines in the arguments are written as Jinja expressions, since the ``{%- -%}`` tags strip
    literal whitespace next to them.
    """
    start, role_format, image, end, generation = (
        text.replace("\n", "{{ '\\n' }}") for text in (start, role_format, image, end, generation)
    )
    return (
        start
        + "{%- for message in messages -%}"
        + role_format
        + "{%- if message['content'] is string -%}{{ message['content'] }}"
        + "{%- else -%}{%- for part in message['content'] -%}"
        + "{%- if part['type'] == 'image' -%}" + image
        + "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{{ '\\n' }}{%- endif -%}"
        + "{%- endfor -%}{%- endif -%}"
        + end
        + "{%- endfor -%}"
        + "{%- if add_generation_prompt -%}" + generation + "{%- endif -%}"
    )


_LLAVA_TEMPLATE = _template(
    start="",
    role_format="{{ message['role'] | capitalize ~ ': ' }}",
    image="<image>\n",
    end="</s>\n",
    generation="Assistant:",
)
_IDEFICS3_TEMPLATE = _template(
    start="<|im_start|>",
    role_format="{{ message['role'] | capitalize }}:",
    image="<image>",
    end="<end_of_utterance>\n",
    generation="Assistant:",
)
_QWEN2_VL_TEMPLATE = _template(
    start="",
    role_format="<|im_start|>{{ message['role'] }}\n",
    image="<|vision_start|><|image_pad|><|vision_end|>",
    end="<|im_end|>\n",
    generation="<|im_start|>assistant\n",
)


def _builtin_tasks() -> list[TaskSpec]:
    return [get_task(name) for name in list_tasks()]


def lvlm_corpus(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """Training sentences of the tiny LVLM tokenizers.

    The built-in medical corpus, chat-template words, and for every built-in task its instruction,
    question and verbalizers (each after ``"Assistant: "`` and after a newline, the two ways chat
    templates put an answer), repeated so the answer words get their own merges.

    Args:
        extra: More sentences (e.g. the verbalizers of your own task).

    Returns:
        The corpus.
    """
    lines: list[str] = list(DEFAULT_CORPUS)
    lines += ["User: background: Assistant: system user assistant", "System: User: Assistant:"]
    for task in _builtin_tasks():
        lines.append(task.instruction)
        lines.append(task.question)
        answers = [*task.answer_texts, task.yes_verbalizer, task.no_verbalizer]
        for answer in answers:
            lines += [f"Assistant: {answer}", f"assistant\n{answer}"] * 3
    lines += list(extra)
    return tuple(line for line in lines if line)


@functools.lru_cache(maxsize=8)
def _trained_bpe(specials: tuple[str, ...], corpus: tuple[str, ...], vocab_size: int) -> Tokenizer:
    # Deterministic training (~0.3 s): every builder in one process shares one run per setting.
    bpe = train_byte_level_bpe(corpus, vocab_size=vocab_size, special_tokens=specials)
    tokenizer = Tokenizer(models.BPE(vocab=bpe.vocab, merges=list(bpe.merges)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(specials))
    return tokenizer


def _build_tokenizer(
    specials: tuple[str, ...],
    *,
    pad: str,
    eos: str,
    bos: str | None = None,
    extra_corpus: Sequence[str] = (),
    vocab_size: int = _VOCAB_SIZE,
) -> PreTrainedTokenizerFast:
    backend = _trained_bpe(specials, lvlm_corpus(extra_corpus), vocab_size)
    # from_str(to_str()) gives this tokenizer its own copy of the cached backend.
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(backend.to_str()),
        pad_token=pad,
        eos_token=eos,
        bos_token=bos,
    )


def _check_builtin_verbalizers(tokenizer: PreTrainedTokenizerFast, answer_prefix: str) -> None:
    # The fast path of the reader needs distinct first tokens; keep the tiny tokenizer honest.
    for task in _builtin_tasks():
        answers = (
            (task.yes_verbalizer, task.no_verbalizer) if task.multi_label else task.answer_texts
        )
        firsts = [tokenizer.encode(answer_prefix + a, add_special_tokens=False)[0] for a in answers]
        if len(set(firsts)) != len(firsts):
            raise AssertionError(
                f"tiny tokenizer: verbalizers of task {task.name!r} share a first token after "
                f"{answer_prefix!r}; add them to the corpus or raise the vocabulary size"
            )


def _seeded(make: Callable[[], PreTrainedModel], seed: int) -> PreTrainedModel:
    # fork_rng restores the global CPU RNG afterwards, so building never perturbs the caller's
    # random stream; devices=[] keeps CUDA out of it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return model.eval()


def _llama_text_config(
    tokenizer: PreTrainedTokenizerFast, *, hidden: int, layers: int, heads: int, init: float
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=1024,
        initializer_range=init,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def _save(
    save_dir: str | Path,
    model: PreTrainedModel,
    processor: ProcessorMixin,
    tokenizer: PreTrainedTokenizerFast,
) -> Path:
    folder = Path(save_dir)
    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    logger.debug("saved tiny %s to %s", type(model).__name__, folder)
    return folder


def _check_sizes(image_size: int, patch_size: int, hidden: int, heads: int, multiple: int = 1) -> None:
    if image_size % (patch_size * multiple):
        raise ValueError(
            f"image_size={image_size} must be a multiple of {patch_size * multiple} "
            f"(patch_size={patch_size} x {multiple}); e.g. image_size=32, patch_size=8"
        )
    if hidden % heads:
        raise ValueError(f"heads={heads} does not divide hidden={hidden}; e.g. hidden=64, heads=4")


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
    _check_sizes(image_size, patch_size, hidden, heads)
    tokenizer = _build_tokenizer(_LLAVA_SPECIALS, pad="<pad>", eos="</s>", bos="<s>", extra_corpus=extra_corpus)
    _check_builtin_verbalizers(tokenizer, " ")
    patches = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=tower,
        text_config=_llama_text_config(tokenizer, hidden=hidden, layers=layers, heads=heads, init=initializer_range),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        # The last layer of a 2-layer tower; "default" drops the CLS token, so one <image> token
        # per patch and image_seq_length = patches.
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=patches,
        initializer_range=initializer_range,
    )
    model = _seeded(lambda: LlavaForConditionalGeneration(config), seed)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token the tower adds and "default" drops
        chat_template=_LLAVA_TEMPLATE,
    )
    return _save(save_dir, model, processor, tokenizer)


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
    and ``<global-img>``; the chat template follows SmolVLM's (``<|im_start|>User:...``).

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
    _check_sizes(image_size, patch_size, hidden, heads, multiple=scale_factor)
    tokenizer = _build_tokenizer(_IDEFICS3_SPECIALS, pad="<pad>", eos="<end_of_utterance>", bos="<s>", extra_corpus=extra_corpus)
    _check_builtin_verbalizers(tokenizer, " ")
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
        text_config=_llama_text_config(tokenizer, hidden=hidden, layers=layers, heads=heads, init=initializer_range),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _seeded(lambda: Idefics3ForConditionalGeneration(config), seed)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            do_image_splitting=False,
            size={"longest_edge": image_size},
            max_image_size={"longest_edge": image_size},
        ),
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=_IDEFICS3_TEMPLATE,
    )
    return _save(save_dir, model, processor, tokenizer)


class TinyQwen2VLProcessor(Qwen2VLProcessor):
    """A ``Qwen2VLProcessor`` without the video processor (which needs torchvision).

    Images only. ``AutoProcessor`` cannot rebuild it by name, so load it with
    ``TinyQwen2VLProcessor.from_pretrained(folder)`` and pass it to the reader.

    Args:
        image_processor: A Qwen2-VL image processor.
        tokenizer: A tokenizer with Qwen2-VL's vision special tokens.
        chat_template: The chat template.
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
    _check_sizes(image_size, patch_size, hidden, heads, multiple=2)
    if hidden // heads != 16:
        raise ValueError(f"hidden / heads must be 16 for the tiny M-RoPE split, got {hidden}/{heads}")
    tokenizer = _build_tokenizer(_QWEN2_VL_SPECIALS, pad="<|endoftext|>", eos="<|im_end|>", extra_corpus=extra_corpus)
    _check_builtin_verbalizers(tokenizer, "")
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
    model = _seeded(lambda: Qwen2VLForConditionalGeneration(config), seed)
    processor = TinyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(
            min_pixels=image_size * image_size,
            max_pixels=image_size * image_size,
            patch_size=patch_size,
            merge_size=2,
            temporal_patch_size=2,
        ),
        tokenizer=tokenizer,
        chat_template=_QWEN2_VL_TEMPLATE,
    )
    return _save(save_dir, model, processor, tokenizer)
