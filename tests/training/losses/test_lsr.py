"""Closed-form checks of ``LSRLoss`` on a hand-computed 3-candidate case."""

from __future__ import annotations

import math

import pytest
import torch

from llama_index_lvlm_retriever.training.losses import (
    ENTROPY_RETRIEVER_KEY,
    ENTROPY_TARGET_KEY,
    LOSS_KEY,
    LSRLoss,
)

SCORES = [0.30, 0.25, 0.10]  # retriever cosines s(c)
READER = [0.2, 0.6, 0.9]  # P_reader(gold | c)
GAMMA = 0.1


def test_value_and_entropies_match_hand_computation() -> None:
    # P_retr = softmax([3.0, 2.5, 1.0]) = [20.0855, 12.1825, 2.7183] / 34.9863 = [0.57410, 0.34821, 0.07770]
    logits = [s / GAMMA for s in SCORES]
    p_retr = [math.exp(v) / sum(math.exp(u) for u in logits) for v in logits]
    # beta = 0.5: exp(log r / 0.5) = r^2 = [0.04, 0.36, 0.81], sum 1.21 -> Q = [0.03306, 0.29752, 0.66942]
    squares = [r**2 for r in READER]
    q = [v / sum(squares) for v in squares]
    # KL = sum Q log(Q / P) = -0.09436 - 0.04680 + 1.44168 = 1.30051
    expected = sum(qc * math.log(qc / pc) for qc, pc in zip(q, p_retr))
    # H(P) = 0.31860 + 0.36734 + 0.19851 = 0.88445;  H(Q) = 0.11271 + 0.36068 + 0.26867 = 0.74205
    entropy_p = -sum(p * math.log(p) for p in p_retr)
    entropy_q = -sum(qc * math.log(qc) for qc in q)

    out = LSRLoss(gamma=GAMMA, beta=0.5)(
        torch.tensor([SCORES], dtype=torch.float64),
        torch.log(torch.tensor([READER], dtype=torch.float64)),
    )
    assert float(out[LOSS_KEY]) == pytest.approx(expected, rel=1e-9)
    assert float(out[LOSS_KEY]) == pytest.approx(1.30051, abs=1e-5)  # the comment's arithmetic
    assert float(out[ENTROPY_RETRIEVER_KEY]) == pytest.approx(entropy_p, rel=1e-9)
    assert float(out[ENTROPY_TARGET_KEY]) == pytest.approx(entropy_q, rel=1e-9)
    assert (entropy_p, entropy_q) == pytest.approx((0.88445, 0.74205), abs=1e-5)


def test_reader_equal_across_candidates_gives_uniform_target_and_log_n_minus_entropy() -> None:
    # Same reader probability for every candidate -> Q uniform (1/3 each) -> KL(U || P) = -log 3 - mean log P.
    logits = [s / GAMMA for s in SCORES]
    log_z = math.log(sum(math.exp(v) for v in logits))  # log 34.9863 = 3.55496
    expected = (
        -math.log(3) - sum(v - log_z for v in logits) / 3
    )  # -1.09861 + 3.55496 - 2.16667 = 0.28968
    out = LSRLoss(gamma=GAMMA, beta=0.5)(
        torch.tensor([SCORES], dtype=torch.float64),
        torch.full((1, 3), math.log(0.4), dtype=torch.float64),
    )
    assert float(out[LOSS_KEY]) == pytest.approx(expected, rel=1e-9)
    assert float(out[ENTROPY_TARGET_KEY]) == pytest.approx(math.log(3), rel=1e-9)
