"""Closed-form checks of ``EMDRLoss`` on a hand-computed 3-candidate case."""

from __future__ import annotations

import math

import pytest
import torch

from llama_index_lvlm_retriever.training.losses import ENTROPY_TARGET_KEY, LOSS_KEY, EMDRLoss

SCORES = [0.30, 0.25, 0.10]  # retriever cosines s(c)
READER = [0.2, 0.6, 0.9]  # P_reader(gold | c)
GAMMA = 0.1


def test_value_matches_hand_computation() -> None:
    # P_retr = softmax([3.0, 2.5, 1.0]) = [0.57410, 0.34821, 0.07770]
    logits = [s / GAMMA for s in SCORES]
    p_retr = [math.exp(v) / sum(math.exp(u) for u in logits) for v in logits]
    # P_retr * P_reader = [0.11482, 0.20892, 0.06993], marginal 0.39367 -> loss = -log 0.39367 = 0.93224
    joint = [p * r for p, r in zip(p_retr, READER)]
    expected = -math.log(sum(joint))
    # posterior Q = joint / 0.39367 = [0.29166, 0.53071, 0.17763]; H(Q) = 0.35937 + 0.33623 + 0.30695 = 1.00255
    q = [j / sum(joint) for j in joint]
    entropy_q = -sum(qc * math.log(qc) for qc in q)

    out = EMDRLoss(gamma=GAMMA)(
        torch.tensor([SCORES], dtype=torch.float64),
        torch.log(torch.tensor([READER], dtype=torch.float64)),
    )
    assert float(out[LOSS_KEY]) == pytest.approx(expected, rel=1e-9)
    assert float(out[LOSS_KEY]) == pytest.approx(0.93224, abs=1e-5)  # the comment's arithmetic
    assert float(out[ENTROPY_TARGET_KEY]) == pytest.approx(entropy_q, rel=1e-9)
    assert entropy_q == pytest.approx(1.00255, abs=1e-5)


@pytest.mark.parametrize("scores", [[0.0, 0.0, 0.0], [0.9, -0.3, 0.2]])
def test_reader_uniform_across_candidates_gives_minus_log_p_whatever_the_scores(
    scores: list[float],
) -> None:
    # sum_c P_retr(c) * p = p, so loss = -log p = -log 0.3 = 1.20397 for any P_retr.
    out = EMDRLoss(gamma=GAMMA)(
        torch.tensor([scores], dtype=torch.float64),
        torch.full((1, 3), math.log(0.3), dtype=torch.float64),
    )
    assert float(out[LOSS_KEY]) == pytest.approx(-math.log(0.3), rel=1e-9)


def test_batch_mean_of_two_cases() -> None:
    # Case 0: uniform scores over 2 candidates, reader [0.2, 0.6] -> -log(0.5 * 0.2 + 0.5 * 0.6) = -log 0.4
    # Case 1: uniform reader 0.5 -> -log 0.5.   batchmean = (0.91629 + 0.69315) / 2 = 0.80472
    expected = (-math.log(0.4) - math.log(0.5)) / 2
    out = EMDRLoss(gamma=GAMMA)(
        torch.tensor([[0.1, 0.1], [0.4, 0.2]], dtype=torch.float64),
        torch.log(torch.tensor([[0.2, 0.6], [0.5, 0.5]], dtype=torch.float64)),
    )
    assert float(out[LOSS_KEY]) == pytest.approx(expected, rel=1e-9)
