from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llama_index_lvlm_retriever.readers._hf_batch import (
    append_continuations,
    continuation_log_likelihoods,
    first_token_log_probs,
    last_positions,
    normalise_label_scores,
)

PAD = 0


def _batch() -> dict[str, torch.Tensor]:
    # Two right-padded prompts: [5, 6, 7] and [8, 9]; token 9 is an image token (type 1).
    return {
        "input_ids": torch.tensor([[5, 6, 7], [8, 9, PAD]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "mm_token_type_ids": torch.tensor([[0, 0, 0], [0, 1, 0]]),
        "pixel_values": torch.ones(1, 3, 2, 2),
    }


def test_append_continuations_places_answers_before_padding() -> None:
    batch, positions, targets, mask = append_continuations(_batch(), [[1, 2], [3]], pad_token_id=PAD)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1, 2], [8, 9, 3, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 1, 0, 0, 0]]
    assert torch.equal(batch["pixel_values"], torch.ones(1, 3, 2, 2))  # not per-token: untouched
    # Row 0: answer tokens at 3, 4 are predicted from 2, 3. Row 1: token at 2 from 1 (then repeat).
    assert positions.tolist() == [[2, 3], [1, 1]]
    assert targets.tolist() == [[1, 2], [3, 0]]
    assert mask.tolist() == [[True, True], [True, False]]


def test_paligemma_answers_are_marked_as_suffix() -> None:
    batch = {
        "input_ids": torch.tensor([[5, 6]]),
        "attention_mask": torch.tensor([[1, 1]]),
        "token_type_ids": torch.tensor([[0, 0]]),
    }
    out, *_ = append_continuations(batch, [[4]], pad_token_id=PAD, paligemma=True)
    assert out["token_type_ids"].tolist() == [[0, 0, 1]]
    out, *_ = append_continuations(batch, [[4]], pad_token_id=PAD)
    assert out["token_type_ids"].tolist() == [[0, 0, 0]]


def test_left_padded_batches_are_refused() -> None:
    batch = {"input_ids": torch.tensor([[PAD, 5]]), "attention_mask": torch.tensor([[0, 1]])}
    with pytest.raises(RuntimeError, match="did not right-pad the batch"):
        append_continuations(batch, [[1]], pad_token_id=PAD)
    with pytest.raises(RuntimeError, match="did not right-pad the batch"):
        last_positions(batch["attention_mask"])


def test_last_positions() -> None:
    assert last_positions(_batch()["attention_mask"]).tolist() == [[2], [1]]


def test_continuation_log_likelihood_sums_only_real_tokens() -> None:
    vocab = 4
    logits = torch.zeros(2, 2, vocab)  # uniform: every token has log-probability -log 4
    logits[0, 1] = torch.tensor([0.0, 0.0, math.log(2.0), 0.0])  # token 2: 2/5 at step 2 of row 0
    targets = torch.tensor([[1, 2], [3, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    got = continuation_log_likelihoods(logits, targets, mask)
    # Row 0: log(1/4) + log(2/5); row 1: log(1/4) only (its second slot is padding).
    assert got.tolist() == pytest.approx([math.log(1 / 4) + math.log(2 / 5), math.log(1 / 4)])


def test_first_token_log_probs_normalise_over_the_vocabulary() -> None:
    logits = torch.tensor([[[math.log(3.0), 0.0, 0.0, 0.0]]])  # probabilities 3/6, 1/6, 1/6, 1/6
    got = first_token_log_probs(logits, [0, 2])
    assert got.shape == (1, 2)
    assert got[0].tolist() == pytest.approx([math.log(0.5), math.log(1 / 6)])


def test_normalise_label_scores_single_label_is_a_log_softmax() -> None:
    # One case, k = 1, three labels with likelihoods 1/2, 1/4, 1/4 of the whole vocabulary mass:
    # renormalised over the label set they stay 0.5, 0.25, 0.25.
    raw = np.log(np.array([[0.5, 0.25, 0.25]]))
    log_probs, kept = normalise_label_scores(raw, n=1, k=1, n_labels=3, multi_label=False)
    np.testing.assert_allclose(np.exp(log_probs), [[[0.5, 0.25, 0.25]]])
    # Halving every likelihood (mass on other tokens) changes raw but not the distribution.
    halved, _ = normalise_label_scores(raw + np.log(0.5), n=1, k=1, n_labels=3, multi_label=False)
    np.testing.assert_allclose(halved, log_probs)
    np.testing.assert_allclose(kept, raw[None])


def test_normalise_label_scores_multi_label_is_yes_over_yes_plus_no() -> None:
    # Two labels: P(yes) = 0.3, P(no) = 0.1 -> 0.75; P(yes) = 0.1, P(no) = 0.4 -> 0.2.
    answers = np.log(np.array([[0.3, 0.1], [0.1, 0.4]]))
    log_probs, raw = normalise_label_scores(answers, n=1, k=1, n_labels=2, multi_label=True)
    np.testing.assert_allclose(np.exp(log_probs), [[[0.75, 0.2]]])
    np.testing.assert_allclose(np.exp(raw), [[[0.3, 0.1]]])
