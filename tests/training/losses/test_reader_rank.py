"""ReaderRankLoss: hand-computed values, padding, pairs below the gap, and the soft inconsistent weight."""

from __future__ import annotations

import math

import pytest
import torch

from llama_index_lvlm_retriever.training.losses import (
    LOSS_KEY,
    N_CASES_KEY,
    LSRLoss,
    ReaderRankLoss,
)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_two_candidates_closed_form() -> None:
    # The reader prefers candidate 1 (gap 0.5 nats); one pair (1, 0), weight 0.5, divided by 0.5:
    # loss = softplus(-(s1 - s0) / gamma) = softplus(-(0.28 - 0.30) / 0.01) = softplus(2).
    scores = torch.tensor([[0.30, 0.28]], dtype=torch.float64, requires_grad=True)
    reader = torch.tensor([[-1.0, -0.5]], dtype=torch.float64)
    out = ReaderRankLoss(gamma=0.01)(scores, reader)
    assert out[LOSS_KEY].item() == pytest.approx(_softplus(2.0))
    out[LOSS_KEY].backward()
    # d/ds1 softplus(-(s1 - s0)/g) = -sigmoid(2) / g, and the opposite for s0.
    sig = 1 / (1 + math.exp(-2.0))
    torch.testing.assert_close(scores.grad, torch.tensor([[sig / 0.01, -sig / 0.01]], dtype=torch.float64))


def test_three_candidates_weight_pairs_by_the_readers_gap() -> None:
    # Reader -0.1, -0.4, -0.4 (candidate 0 best); pairs (0,1) and (0,2), each weight 0.3.
    # Scores 0.5, 0.5, 0.6 with gamma 0.1: margins 0 and -1 -> (softplus(0) + softplus(1)) / 2.
    scores = torch.tensor([[0.5, 0.5, 0.6]], dtype=torch.float64)
    reader = torch.tensor([[-0.1, -0.4, -0.4]], dtype=torch.float64)
    out = ReaderRankLoss(gamma=0.1)(scores, reader)
    assert out[LOSS_KEY].item() == pytest.approx((math.log(2) + _softplus(1.0)) / 2)
    # min_gap above 0.3: no pair is left, the case contributes 0.
    assert ReaderRankLoss(gamma=0.1, min_gap=0.35)(scores, reader)[LOSS_KEY].item() == 0.0


def test_padding_is_never_read() -> None:
    scores = torch.tensor([[0.30, 0.28, float("nan")]], dtype=torch.float64, requires_grad=True)
    reader = torch.tensor([[-1.0, -0.5, float("inf")]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    out = ReaderRankLoss(gamma=0.01)(scores, reader, mask=mask)
    assert out[LOSS_KEY].item() == pytest.approx(_softplus(2.0))
    out[LOSS_KEY].backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[0, 2] == 0


def test_inconsistent_weight_is_a_weighted_mean() -> None:
    # Case 0 (inconsistent) loss softplus(2); case 1 (consistent) loss softplus(0) = log 2.
    scores = torch.tensor([[0.30, 0.28], [0.30, 0.30]], dtype=torch.float64)
    reader = torch.tensor([[-1.0, -0.5], [-1.0, -0.5]], dtype=torch.float64)
    disagree = torch.tensor([True, False])
    out = ReaderRankLoss(gamma=0.01, inconsistent_weight=3.0)(scores, reader, disagree=disagree)
    assert out[LOSS_KEY].item() == pytest.approx((3 * _softplus(2.0) + math.log(2)) / 4)
    assert int(out[N_CASES_KEY]) == 2
    # The same weight works for the KL losses: LSR's per-case values, weighted 3 : 1.
    lsr = LSRLoss(gamma=0.01)
    per_case = [lsr(scores[i : i + 1], reader[i : i + 1])[LOSS_KEY].item() for i in range(2)]
    weighted = LSRLoss(gamma=0.01, inconsistent_weight=3.0)(scores, reader, disagree=disagree)[LOSS_KEY]
    assert weighted.item() == pytest.approx((3 * per_case[0] + per_case[1]) / 4)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_gap must be a finite float >= 0"):
        ReaderRankLoss(min_gap=-0.1)
    with pytest.raises(ValueError, match="inconsistent_weight must be a finite float >= 1"):
        ReaderRankLoss(inconsistent_weight=0.5)
    with pytest.raises(ValueError, match="needs disagree="):
        ReaderRankLoss(inconsistent_weight=2.0)(torch.zeros(1, 2), torch.zeros(1, 2))
