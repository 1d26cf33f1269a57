"""How verbalizers become the token ids a reader scores, and which scoring path they allow.

An answer is tokenized *in context*: the tokens of ``prompt + prefix + answer`` after those of
``prompt``, where ``prompt`` is the model's generation prompt. That gives the ids the model would
emit (a byte-level BPE turns ``" yes"`` into one token ``"Ġyes"``, not ``" "`` + ``"yes"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["answer_prefix_for", "answer_token_ids", "first_token_clash", "warn_on_token_prefixes"]


def answer_prefix_for(generation_prompt: str) -> str:
    """The text between a generation prompt and its answer when the user sets none.

    A prompt ending in ``"Assistant:"`` is followed by ``" yes"``; one ending in whitespace
    (``"<|im_start|>assistant\\n"``) by ``"yes"``.
    """
    return "" if not generation_prompt or generation_prompt[-1].isspace() else " "


def answer_token_ids(tokenizer: Any, generation_prompt: str, prefix: str, answer: str) -> list[int]:
    """Token ids of ``prefix + answer`` as they follow ``generation_prompt``.

    Args:
        tokenizer: A transformers tokenizer.
        generation_prompt: A rendered chat prompt ending with the generation header.
        prefix: Text between the prompt and the answer.
        answer: The verbalizer.

    Returns:
        The answer's ids; its standalone tokenization (with a warning) if it merges with the
        prompt's last token.
    """
    head = tokenizer(generation_prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(generation_prompt + prefix + answer, add_special_tokens=False)["input_ids"]
    if full[: len(head)] == head and len(full) > len(head):
        return list(full[len(head) :])
    logger.warning(
        "verbalizer %r merges with the end of the generation prompt under this tokenizer; "
        "scoring its standalone tokenization", answer,
    )
    return list(tokenizer(prefix + answer, add_special_tokens=False)["input_ids"])


def first_token_clash(tokenizer: Any, answers: Sequence[str], ids: Sequence[Sequence[int]], task: str) -> str | None:
    """A message naming two answers that share their first token, or ``None`` if all differ.

    Args:
        tokenizer: Used to name the shared token.
        answers: The verbalizers.
        ids: Their token ids (from :func:`answer_token_ids`).
        task: Task name for the message.
    """
    seen: dict[int, str] = {}
    for answer, row in zip(answers, ids):
        if row[0] in seen:
            token = tokenizer.convert_ids_to_tokens(row[0])
            return (
                f"scoring='first_token' needs verbalizers with distinct first tokens, but "
                f"{seen[row[0]]!r} and {answer!r} of task {task!r} both start with token {token!r}; "
                "use scoring='full' (or 'auto'), or change the verbalizers"
            )
        seen[row[0]] = answer
    return None


def warn_on_token_prefixes(answers: Sequence[str], ids: Sequence[Sequence[int]]) -> None:
    """Log a warning for each answer whose tokens begin another answer's (full scoring favours it)."""
    for a, ids_a in zip(answers, ids):
        for b, ids_b in zip(answers, ids):
            if a != b and list(ids_b[: len(ids_a)]) == list(ids_a):
                logger.warning(
                    "verbalizer %r is a token prefix of %r: with full scoring the shorter answer is "
                    "favoured; consider distinct verbalizers", a, b,
                )
