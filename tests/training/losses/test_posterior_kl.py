"""Closed-form checks of ``PosteriorKLLoss`` on a hand-computed 3-candidate case."""

from __future__ import annotations

import math

import pytest
import torch

from llama_index_lvlm_retriever.training.losses import ENTROPY_TARGET_KEY, LOSS_KEY, PosteriorKLLoss

SCORES = [0.30, 0.25, 0.10]  # current retriever cosines s(c)
FROZEN = [0.20, 0.30, 0.10]  # frozen retriever cosines s_0(c)
READER = [0.2, 0.6, 0.9]  # P_reader(gold | c)
GAMMA = 0.1


def _softmax(logits: list[float]) -> list[float]:
    exps = [math.exp(v) for v in logits]
    return [v / sum(exps) for v in exps]


def test_value_and_target_entropy_match_hand_computation() -> None:
    # P_retr = softmax([3.0, 2.5, 1.0]): exps [20.0855, 12.1825, 2.7183], Z 34.9863
    #        = [0.57410, 0.34821, 0.07770]
    p_retr = _softmax([s / GAMMA for s in SCORES])
    # P_0 = softmax([2.0, 3.0, 1.0]): exps [7.3891, 20.0855, 2.7183], Z 30.1929
    #     = [0.24473, 0.66524, 0.09003]
    prior = _softmax([s / GAMMA for s in FROZEN])
    # P_reader * P_0 = [0.04895, 0.39914, 0.08103], sum 0.52912 -> Q = [0.09250, 0.75436, 0.15314]
    weights = [r * p for r, p in zip(READER, prior)]
    q = [w / sum(weights) for w in weights]
    # KL = sum Q log(Q / P) = -0.16887 + 0.58317 + 0.10391 = 0.51821
    expected = sum(qc * math.log(qc / pc) for qc, pc in zip(q, p_retr))
    # H(Q) = -sum Q log Q = 0.22021 + 0.21264 + 0.28735 = 0.72020
    entropy_q = -sum(qc * math.log(qc) for qc in q)

    out = PosteriorKLLoss(gamma=GAMMA)(
        torch.tensor([SCORES], dtype=torch.float64),
        torch.log(torch.tensor([READER], dtype=torch.float64)),
        frozen_scores=torch.tensor([FROZEN], dtype=torch.float64),
    )
    assert float(out[LOSS_KEY]) == pytest.approx(expected, rel=1e-9)
    assert float(out[LOSS_KEY]) == pytest.approx(0.51821, abs=1e-5)  # the comment's arithmetic
    assert float(out[ENTROPY_TARGET_KEY]) == pytest.approx(entropy_q, rel=1e-9)
    assert entropy_q == pytest.approx(0.72020, abs=1e-5)


def test_prior_gamma_divides_the_frozen_scores() -> None:
    # prior_gamma = 1: P_0 = softmax([0.2, 0.3, 0.1]) = [0.33222, 0.36717, 0.30061] (nearly flat),
    # so Q follows the reader: Q ∝ [0.06644, 0.22030, 0.27055] -> [0.11923, 0.39530, 0.48547].
    p_retr = _softmax([s / GAMMA for s in SCORES])
    prior = _softmax(FROZEN)
    weights = [r * p for r, p in zip(READER, prior)]
    q = [w / sum(weights) for w in weights]
    expected = sum(qc * math.log(qc / pc) for qc, pc in zip(q, p_retr))

    out = PosteriorKLLoss(gamma=GAMMA, prior_gamma=1.0)(
        torch.tensor([SCORES], dtype=torch.float64),
        torch.log(torch.tensor([READER], dtype=torch.float64)),
        frozen_scores=torch.tensor([FROZEN], dtype=torch.float64),
    )
    assert float(out[LOSS_KEY]) == pytest.approx(expected, rel=1e-9)


def test_uniform_scores_and_one_hot_like_target_give_log_n_minus_target_entropy() -> None:
    # With P_retr uniform over n = 4, KL(Q || U) = sum Q log Q + log 4 = log 4 - H(Q).
    # Uniform prior too, so Q = normalised reader = [0.7, 0.1, 0.1, 0.1] / 1.0.
    reader = [0.7, 0.1, 0.1, 0.1]
    expected = math.log(4) + sum(r * math.log(r) for r in reader)  # 1.38629 - 0.94045 = 0.44585
    out = PosteriorKLLoss(gamma=GAMMA)(
        torch.zeros(1, 4, dtype=torch.float64),
        torch.log(torch.tensor([reader], dtype=torch.float64)),
        frozen_scores=torch.zeros(1, 4, dtype=torch.float64),
    )
    assert float(out[LOSS_KEY]) == pytest.approx(expected, rel=1e-9)
