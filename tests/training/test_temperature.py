"""gamma='auto' with tied scores: the target lies between the most peaked reachable softmax and uniform."""

from __future__ import annotations

import math

import torch

from llama_index_lvlm_retriever.training.temperature import auto_gamma, retrieval_entropy


def test_tied_top_scores_do_not_drive_gamma_to_the_floor() -> None:
    # Four candidates: two tied at the top (identical captions), then 0.05 and 0.10 lower.
    scores = torch.tensor([[0.30, 0.30, 0.25, 0.20]])
    mask = torch.ones_like(scores, dtype=torch.bool)
    floor, log_n = retrieval_entropy(scores, mask, 1e-6)
    assert math.isclose(floor, math.log(2), rel_tol=1e-6)  # gamma -> 0: uniform over the two tied
    gamma = auto_gamma(scores, mask)
    h, _ = retrieval_entropy(scores, mask, gamma)
    # Half-way between log 2 and log 4, reached at a gamma on the scale of the gaps (not 1e-6).
    assert math.isclose(h, floor + 0.5 * (log_n - floor), rel_tol=1e-4)
    assert 1e-3 < gamma < 0.1


def test_without_ties_the_target_is_half_of_log_n() -> None:
    scores = torch.tensor([[0.987 - 0.022 * j / 15 for j in range(16)]])
    mask = torch.ones_like(scores, dtype=torch.bool)
    h, log_n = retrieval_entropy(scores, mask, auto_gamma(scores, mask))
    assert math.isclose(h / log_n, 0.5, rel_tol=1e-3)
