"""Tensor mechanics of likelihood scoring: appending answers to a right-padded batch, reading logits.

Kept apart from :mod:`~llama_index_lvlm_retriever.readers.hf_lvlm` so the arithmetic can be read
(and tested) without the model plumbing. Shapes use ``R`` rows (sequences), ``T`` padded length,
``P`` positions read per row, ``V`` vocabulary and ``C`` continuations (verbalizers).

Why right padding: every real token then sits at the position it has when the row is run alone,
and causal attention never lets it see the padding that follows, so no model needs position ids
rebuilt (Llama's RoPE, Qwen2-VL's M-RoPE computed from the attention mask, ...). A batched row
therefore computes exactly what the unbatched sequence computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "append_continuations",
    "continuation_log_likelihoods",
    "first_token_log_probs",
    "last_positions",
    "normalise_label_scores",
]

# Per-token tensors that processors return besides input_ids/attention_mask, and the value an
# appended answer token takes: every one of them marks answer text as plain text (0), except
# PaliGemma's token_type_ids, where 1 marks the causal "suffix" (the generated answer).
_PER_TOKEN_FILL = {"token_type_ids": 0, "mm_token_type_ids": 0}
_PALIGEMMA_SUFFIX_TYPE = 1


def _prompt_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    lengths = attention_mask.sum(dim=1)  # (R,)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    expected = (positions[None, :] < lengths[:, None]).to(attention_mask.dtype)  # (R, T)
    if not torch.equal(expected, attention_mask):
        raise RuntimeError(
            "the processor did not right-pad the batch (padding_side='right' was ignored); "
            "likelihood scoring needs right padding"
        )
    return lengths


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(R, 1)`` index of each row's last real token in a right-padded batch."""
    return (_prompt_lengths(attention_mask) - 1)[:, None]


def append_continuations(
    batch: Mapping[str, torch.Tensor],
    continuations: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    paligemma: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append one answer's token ids right after each row's prompt (before its padding).

    Args:
        batch: Processor output for ``R`` right-padded prompts (``input_ids``, ``attention_mask``
            ``(R, T)``, image tensors, optional per-token type ids).
        continuations: ``R`` token-id lists, the answer to append to each row.
        pad_token_id: Id written into padding slots.
        paligemma: Mark appended tokens as PaliGemma's causal suffix in ``token_type_ids``.

    Returns:
        ``(batch, positions, targets, mask)``: the extended batch (``(R, T')`` per-token tensors,
        other tensors untouched); ``positions`` ``(R, P)`` the index whose logits predict each
        answer token (``P`` = longest answer; short answers repeat their last index);
        ``targets`` ``(R, P)`` the answer token ids (0 where unused); ``mask`` ``(R, P)`` bool,
        ``True`` on real answer tokens.
    """
    input_ids = batch["input_ids"]
    attention_mask = batch["attention_mask"]
    lengths = _prompt_lengths(attention_mask).tolist()
    rows, width = input_ids.shape
    answer_lengths = [len(c) for c in continuations]
    if len(continuations) != rows or min(answer_lengths, default=1) < 1:
        raise ValueError("need one non-empty continuation per row")
    longest = max(answer_lengths)
    new_width = max(n + m for n, m in zip(lengths, answer_lengths))
    per_token = {
        key: value
        for key, value in batch.items()
        if key not in ("input_ids", "attention_mask")
        and isinstance(value, torch.Tensor)
        and value.shape[:2] == (rows, width)
        and value.ndim == 2
    }
    out: dict[str, torch.Tensor] = dict(batch)
    new_ids = input_ids.new_full((rows, new_width), pad_token_id)  # (R, T')
    new_mask = attention_mask.new_zeros((rows, new_width))  # (R, T')
    new_extra = {key: value.new_zeros((rows, new_width)) for key, value in per_token.items()}
    positions = torch.zeros((rows, longest), dtype=torch.long)  # (R, P)
    targets = torch.zeros((rows, longest), dtype=torch.long)  # (R, P)
    mask = torch.zeros((rows, longest), dtype=torch.bool)  # (R, P)
    for r, (n, answer) in enumerate(zip(lengths, continuations)):
        m = len(answer)
        new_ids[r, :n] = input_ids[r, :n]
        new_ids[r, n : n + m] = torch.as_tensor(answer, dtype=input_ids.dtype)
        new_mask[r, : n + m] = 1
        for key, value in per_token.items():
            fill = _PALIGEMMA_SUFFIX_TYPE if paligemma and key == "token_type_ids" else _PER_TOKEN_FILL.get(key, 0)
            new_extra[key][r, :n] = value[r, :n]
            new_extra[key][r, n : n + m] = fill
        # Token t of the answer sits at n + t and is predicted by the logits at n + t - 1.
        positions[r, :m] = torch.arange(n - 1, n - 1 + m)
        positions[r, m:] = n - 1 + m - 1
        targets[r, :m] = torch.as_tensor(answer)
        mask[r, :m] = True
    out["input_ids"] = new_ids
    out["attention_mask"] = new_mask
    out.update(new_extra)
    return out, positions, targets, mask


def continuation_log_likelihoods(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Sum of answer-token log-probabilities per row (teacher forcing).

    Args:
        logits: ``(R, P, V)`` logits at the positions from :func:`append_continuations`.
        targets: ``(R, P)`` answer token ids.
        mask: ``(R, P)`` bool, real answer tokens.

    Returns:
        ``(R,)`` float32 ``sum_t log p(answer_t | prompt, answer_<t)``.
    """
    # float32 log-softmax: bf16 logits would lose ~3 significant digits in the normaliser.
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (R, P, V)
    picked = log_probs.gather(-1, targets[..., None].to(logits.device)).squeeze(-1)  # (R, P)
    return (picked * mask.to(picked.device)).sum(dim=-1)  # (R,)


def first_token_log_probs(logits: torch.Tensor, first_ids: Sequence[int]) -> torch.Tensor:
    """Next-token log-probabilities of each answer's first token (the fast path).

    Args:
        logits: ``(R, 1, V)`` logits at each row's last prompt token.
        first_ids: ``C`` first token ids, distinct.

    Returns:
        ``(R, C)`` float32 log-probabilities (normalised over the whole vocabulary).
    """
    log_probs = torch.log_softmax(logits[:, 0].float(), dim=-1)  # (R, V)
    index = torch.as_tensor(list(first_ids), device=log_probs.device)
    return log_probs[:, index]  # (R, C)


def normalise_label_scores(
    answer_scores: np.ndarray, n: int, k: int, n_labels: int, multi_label: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Turn answer log-likelihoods into label log-probabilities.

    Args:
        answer_scores: ``(n * k * Q, C)`` log-likelihood of each answer per prompt, prompts in
            (case, candidate, question) order. Single-label: ``Q = 1``, ``C = L`` verbalizers.
            Multi-label: ``Q = L`` per-label questions, ``C = 2`` (yes, no).
        n: Cases.
        k: Candidates per case.
        n_labels: Labels ``L``.
        multi_label: Which layout ``answer_scores`` has.

    Returns:
        ``(log_probs, raw)``, both ``(n, k, L)`` float64. Single-label: ``log_probs`` is the
        log-softmax of ``raw`` over labels. Multi-label: ``raw`` is the yes log-likelihood and
        ``log_probs = yes - log(e^yes + e^no)``.
    """
    if multi_label:
        per_label = answer_scores.reshape(n, k, n_labels, 2)  # (n, k, L, yes/no)
        raw = per_label[..., 0]
        log_probs = raw - np.logaddexp(per_label[..., 0], per_label[..., 1])
    else:
        raw = answer_scores.reshape(n, k, n_labels)  # (n, k, L)
        log_probs = raw - np.logaddexp.reduce(raw, axis=-1, keepdims=True)
    return log_probs.astype(np.float64), raw.astype(np.float64)
