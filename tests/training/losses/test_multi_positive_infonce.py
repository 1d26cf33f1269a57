"""Tests of the multi-positive (identical captions = positives) symmetric InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional

from llama_index_lvlm_retriever.training.losses.multi_positive_infonce import (
    MultiPositiveInfoNCELoss,
)


def _lse(values: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in values))


def test_hand_computed_3x3_with_a_duplicate_caption() -> None:
    rows = [[2.0, 0.0, 1.0], [0.5, 1.0, -1.0], [1.0, 0.0, 3.0]]
    # Captions 0 and 1 are the same string: images 0 and 1 each have two positive captions.
    groups = torch.tensor([7, 7, 2])
    target = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    cols = [[rows[i][j] for i in range(3)] for j in range(3)]
    loss_it = (
        -sum(target[i][j] * (rows[i][j] - _lse(rows[i])) for i in range(3) for j in range(3)) / 3
    )
    loss_ti = (
        -sum(target[j][i] * (cols[j][i] - _lse(cols[j])) for j in range(3) for i in range(3)) / 3
    )
    expected = (loss_it + loss_ti) / 2
    got = MultiPositiveInfoNCELoss()(torch.tensor(rows), groups)
    assert got.ndim == 0
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # Plain CLIP (diagonal targets) gives a different value on the same logits.
    matrix, eye = torch.tensor(rows), torch.arange(3)
    plain = (functional.cross_entropy(matrix, eye) + functional.cross_entropy(matrix.T, eye)) / 2
    assert abs(float(got) - float(plain)) > 0.1


def test_all_distinct_captions_equal_the_clip_loss_and_its_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 6, requires_grad=True)
    ours = MultiPositiveInfoNCELoss()(logits, torch.arange(6) * 3)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    labels = torch.arange(6)
    clip = (
        functional.cross_entropy(logits, labels) + functional.cross_entropy(logits.T, labels)
    ) / 2
    (grad_clip,) = torch.autograd.grad(clip, logits)
    assert float(ours.detach()) == pytest.approx(float(clip.detach()), rel=1e-6)
    torch.testing.assert_close(grad_ours, grad_clip)


def test_uniform_logits_give_log_batch_and_the_optimum_the_target_entropy() -> None:
    loss = MultiPositiveInfoNCELoss()
    groups = torch.tensor([0, 0, 1, 2])
    assert float(loss(torch.zeros(4, 4), groups)) == pytest.approx(math.log(4))
    # Large equal logits inside each group: every image spreads evenly over its positives.
    ideal = 50.0 * (groups[:, None] == groups[None, :]).float()
    assert float(loss(ideal, groups)) == pytest.approx(2 * math.log(2) / 4, abs=1e-6)


def test_lower_on_correct_groups_than_on_shuffled_and_gradient_flows() -> None:
    torch.manual_seed(1)
    groups = torch.tensor([0, 0, 1, 1, 2, 3])
    aligned = 4.0 * (groups[:, None] == groups[None, :]).float() + 0.1 * torch.randn(6, 6)
    aligned.requires_grad_(True)
    loss = MultiPositiveInfoNCELoss()
    good = loss(aligned, groups)
    bad = loss(aligned, groups[torch.tensor([4, 2, 5, 0, 1, 3])])
    assert torch.isfinite(good) and float(good.detach()) < float(bad.detach())
    good.backward()
    assert aligned.grad is not None and float(aligned.grad.abs().sum()) > 0


def test_bad_shapes_raise() -> None:
    loss = MultiPositiveInfoNCELoss()
    with pytest.raises(ValueError, match=r"square \(batch, batch\) matrix, got shape \(2, 3\)"):
        loss(torch.zeros(2, 3), torch.arange(2))
    with pytest.raises(
        ValueError, match=r"groups must have shape \(3,\) to match logits, got \(2,\)"
    ):
        loss(torch.zeros(3, 3), torch.arange(2))
