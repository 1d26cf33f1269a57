"""What the tiny image-text-to-text builders share: chat templates, the offline tokenizer, saving.

The builders (``llava.py``, ``idefics3.py``, ``qwen2_vl.py``) make tiny random LLaVA, Idefics3 and
Qwen2-VL checkpoints.

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

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import ProcessorMixin

from llama_index_lvlm_retriever.tasks import TaskSpec, get_task, list_tasks
from llama_index_lvlm_retriever.testing.tokenizer import DEFAULT_CORPUS, train_byte_level_bpe

logger = logging.getLogger(__name__)


VOCAB_SIZE = 1024

LLAVA_SPECIALS = ("<pad>", "<s>", "</s>", "<image>")
IDEFICS3_SPECIALS = (
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
QWEN2_VL_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def template(*, start: str, role_format: str, image: str, end: str, generation: str) -> str:
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


LLAVA_TEMPLATE = template(
    start="",
    role_format="{{ message['role'] | capitalize ~ ': ' }}",
    image="<image>\n",
    end="</s>\n",
    generation="Assistant:",
)
IDEFICS3_TEMPLATE = template(
    start="<|im_start|>",
    role_format="{{ message['role'] | capitalize }}:",
    image="<image>",
    end="<end_of_utterance>\n",
    generation="Assistant:",
)
QWEN2_VL_TEMPLATE = template(
    start="",
    role_format="<|im_start|>{{ message['role'] }}\n",
    image="<|vision_start|><|image_pad|><|vision_end|>",
    end="<|im_end|>\n",
    generation="<|im_start|>assistant\n",
)


def builtin_tasks() -> list[TaskSpec]:
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
    for task in builtin_tasks():
        lines.append(task.instruction)
        lines.append(task.question)
        answers = [*task.answer_texts, task.yes_verbalizer, task.no_verbalizer]
        for answer in answers:
            lines += [f"Assistant: {answer}", f"assistant\n{answer}"] * 3
    lines += list(extra)
    return tuple(line for line in lines if line)


@functools.lru_cache(maxsize=8)
def trained_bpe(specials: tuple[str, ...], corpus: tuple[str, ...], vocab_size: int) -> Tokenizer:
    # Deterministic training (~0.3 s): every builder in one process shares one run per setting.
    bpe = train_byte_level_bpe(corpus, vocab_size=vocab_size, special_tokens=specials)
    tokenizer = Tokenizer(models.BPE(vocab=bpe.vocab, merges=list(bpe.merges)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(specials))
    return tokenizer


def build_tokenizer(
    specials: tuple[str, ...],
    *,
    pad: str,
    eos: str,
    bos: str | None = None,
    extra_corpus: Sequence[str] = (),
    vocab_size: int = VOCAB_SIZE,
) -> PreTrainedTokenizerFast:
    backend = trained_bpe(specials, lvlm_corpus(extra_corpus), vocab_size)
    # from_str(to_str()) gives this tokenizer its own copy of the cached backend.
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(backend.to_str()),
        pad_token=pad,
        eos_token=eos,
        bos_token=bos,
    )


def check_builtin_verbalizers(tokenizer: PreTrainedTokenizerFast, answer_prefix: str) -> None:
    # The fast path of the reader needs distinct first tokens; keep the tiny tokenizer honest.
    for task in builtin_tasks():
        answers = (
            (task.yes_verbalizer, task.no_verbalizer) if task.multi_label else task.answer_texts
        )
        firsts = [tokenizer.encode(answer_prefix + a, add_special_tokens=False)[0] for a in answers]
        if len(set(firsts)) != len(firsts):
            raise AssertionError(
                f"tiny tokenizer: verbalizers of task {task.name!r} share a first token after "
                f"{answer_prefix!r}; add them to the corpus or raise the vocabulary size"
            )


def seeded(make: Callable[[], PreTrainedModel], seed: int) -> PreTrainedModel:
    # fork_rng restores the global CPU RNG afterwards, so building never perturbs the caller's
    # random stream; devices=[] keeps CUDA out of it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return model.eval()


def llama_text_config(
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


def save(
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


def check_sizes(image_size: int, patch_size: int, hidden: int, heads: int, multiple: int = 1) -> None:
    if image_size % (patch_size * multiple):
        raise ValueError(
            f"image_size={image_size} must be a multiple of {patch_size * multiple} "
            f"(patch_size={patch_size} x {multiple}); e.g. image_size=32, patch_size=8"
        )
    if hidden % heads:
        raise ValueError(f"heads={heads} does not divide hidden={hidden}; e.g. hidden=64, heads=4")
