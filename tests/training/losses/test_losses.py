"""Behaviour shared by every retriever-training loss: the parametrized contract, masking, selection, bad input.

Hand-computed values for each loss live in ``test_posterior_kl.py``, ``test_lsr.py`` and ``test_emdr.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional

from llama_index_lvlm_retriever.training.losses import (
    ENTROPY_RETRIEVER_KEY,
    ENTROPY_TARGET_KEY,
    LOSS_KEY,
    N_CASES_KEY,
    EMDRLoss,
    LSRLoss,
    PosteriorKLLoss,
    ReaderRankLoss,
)

GAMMA = 0.1
BETA = 0.5
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "posterior_kl": lambda **kw: PosteriorKLLoss(gamma=GAMMA, **kw),
    "lsr": lambda **kw: LSRLoss(gamma=GAMMA, beta=BETA, **kw),
    "emdr": lambda **kw: EMDRLoss(gamma=GAMMA, **kw),
}
# The KL-style losses share the gradient (P_retr - Q) / gamma tested below; the ranking loss joins the
# contract tests that every loss must pass (test_reader_rank.py has its closed-form cases).
CONTRACT_LOSSES: dict[str, Callable[..., nn.Module]] = {**LOSSES, "rank": lambda **kw: ReaderRankLoss(gamma=GAMMA, **kw)}
KEYS = {LOSS_KEY, ENTROPY_RETRIEVER_KEY, ENTROPY_TARGET_KEY, N_CASES_KEY}


def _target(
    name: str, scores: torch.Tensor, reader: torch.Tensor, frozen: torch.Tensor
) -> torch.Tensor:
    """Each loss's target ``Q`` from its formula, written independently of the package code, ``(B, n)``."""
    if name == "posterior_kl":  # Q ∝ P_reader * softmax(frozen / gamma)
        weights = reader.exp() * torch.softmax(frozen / GAMMA, dim=1)
    elif name == "lsr":  # Q ∝ exp(log P_reader / beta)
        weights = (reader / BETA).exp()
    else:  # EMDR's gradient target: the current posterior, Q ∝ P_reader * P_retr
        weights = reader.exp() * torch.softmax(scores / GAMMA, dim=1)
    return weights / weights.sum(dim=1, keepdim=True)


def _random_inputs(
    batch: int, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine-like scores in [-0.5, 0.5], reader log-probs of probabilities in [0.05, 0.95], frozen scores."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, n, generator=gen, dtype=torch.float64) - 0.5
    reader = torch.log(0.05 + 0.9 * torch.rand(batch, n, generator=gen, dtype=torch.float64))
    frozen = torch.rand(batch, n, generator=gen, dtype=torch.float64) - 0.5
    return scores, reader, frozen


# ---------------------------------------------------------------------- the parametrized contract
@pytest.mark.parametrize("name", sorted(CONTRACT_LOSSES))
def test_loss_is_finite_scalar_with_gradients_to_scores_and_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    batch, n, dim = 4, 5, 8
    head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))  # tiny query head
    queries, keys = torch.randn(batch, dim), torch.randn(batch, n, dim)  # (B, D), (B, n, D)
    scores = torch.einsum(
        "bd,bnd->bn",
        functional.normalize(head(queries), dim=-1),
        functional.normalize(keys, dim=-1),
    )  # (B, n) cosines
    scores.retain_grad()
    reader = torch.log(0.05 + 0.9 * torch.rand(batch, n))
    out = CONTRACT_LOSSES[name]()(scores, reader, frozen_scores=scores.detach())

    assert set(out) == KEYS
    loss = out[LOSS_KEY]
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    assert int(out[N_CASES_KEY]) == batch
    for key in (ENTROPY_RETRIEVER_KEY, ENTROPY_TARGET_KEY):
        assert not out[key].requires_grad
        assert 0.0 <= float(out[key]) <= math.log(n) + 1e-6
    loss.backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0
    for param_name, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", sorted(CONTRACT_LOSSES))
def test_loss_is_lower_when_retriever_agrees_with_reader_than_on_shuffled_targets(
    name: str,
) -> None:
    probs = torch.tensor([[0.6, 0.25, 0.1, 0.05], [0.05, 0.5, 0.15, 0.3]], dtype=torch.float64)
    reader = probs.log()  # (2, 4)
    scores = GAMMA * reader  # the retriever ranks candidates exactly as the reader does
    frozen = torch.zeros_like(scores)  # uniform prior for PosteriorKLLoss
    loss_fn = CONTRACT_LOSSES[name]()
    correct = loss_fn(scores, reader, frozen_scores=frozen)[LOSS_KEY]
    shuffled = loss_fn(scores, reader.roll(1, dims=1), frozen_scores=frozen)[
        LOSS_KEY
    ]  # targets moved by one
    assert correct.item() < shuffled.item()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_is_retriever_minus_target_over_gamma_and_batch(name: str) -> None:
    batch = 3
    scores, reader, frozen = _random_inputs(batch, 4, seed=1)
    scores.requires_grad_(True)
    LOSSES[name]()(scores, reader, frozen_scores=frozen)[LOSS_KEY].backward()
    p_retr = torch.softmax(scores.detach() / GAMMA, dim=1)
    expected = (
        (p_retr - _target(name, scores.detach(), reader, frozen)) / GAMMA / batch
    )  # batchmean
    torch.testing.assert_close(scores.grad, expected)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_sum_reduction_gradient_is_not_divided_by_batch(name: str) -> None:
    scores, reader, frozen = _random_inputs(3, 4, seed=2)
    scores.requires_grad_(True)
    LOSSES[name](reduction="sum")(scores, reader, frozen_scores=frozen)[LOSS_KEY].backward()
    p_retr = torch.softmax(scores.detach() / GAMMA, dim=1)
    torch.testing.assert_close(
        scores.grad, (p_retr - _target(name, scores.detach(), reader, frozen)) / GAMMA
    )


def _inputs_where_target_equals_retriever(
    name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scores, _, _ = _random_inputs(2, 4, seed=3)
    uniform_reader = torch.full_like(scores, math.log(0.3))
    if name == "posterior_kl":  # flat reader, prior = current retriever -> Q = P_retr
        return scores, uniform_reader, scores.clone()
    if name == "lsr":  # log P_reader / beta = s / gamma -> Q = softmax(s / gamma) = P_retr
        return scores, BETA * scores / GAMMA, torch.zeros_like(scores)
    return (
        scores,
        uniform_reader,
        torch.zeros_like(scores),
    )  # EMDR: flat reader -> posterior = P_retr


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_is_zero_when_target_equals_retriever_distribution(name: str) -> None:
    scores, reader, frozen = _inputs_where_target_equals_retriever(name)
    scores.requires_grad_(True)
    out = LOSSES[name]()(scores, reader, frozen_scores=frozen)
    out[LOSS_KEY].backward()
    torch.testing.assert_close(scores.grad, torch.zeros_like(scores))
    torch.testing.assert_close(out[ENTROPY_TARGET_KEY], out[ENTROPY_RETRIEVER_KEY])
    if name != "emdr":  # KL(P || P) = 0; EMDR's value is -log p instead (see test_emdr.py)
        assert abs(out[LOSS_KEY].item()) < 1e-12


# ---------------------------------------------------------------------- relations between the losses
def test_lsr_with_beta_one_equals_posterior_kl_with_uniform_prior() -> None:
    scores, reader, _ = _random_inputs(3, 5, seed=4)
    constant = torch.full_like(scores, 0.2)  # constant frozen scores = uniform prior
    lsr = LSRLoss(gamma=GAMMA, beta=1.0)(scores, reader)
    posterior = PosteriorKLLoss(gamma=GAMMA)(scores, reader, frozen_scores=constant)
    for key in KEYS:
        torch.testing.assert_close(lsr[key], posterior[key])


def test_emdr_and_posterior_kl_have_the_same_gradient_at_the_frozen_retriever() -> None:
    scores, reader, _ = _random_inputs(3, 5, seed=5)
    grads = []
    for loss_fn in (EMDRLoss(gamma=GAMMA), PosteriorKLLoss(gamma=GAMMA)):
        leaf = scores.clone().requires_grad_(True)
        loss_fn(leaf, reader, frozen_scores=scores)[LOSS_KEY].backward()  # s = s_0: the first step
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1])


# ---------------------------------------------------------------------- masking and case selection
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_candidate_changes_nothing_compared_with_removing_it(name: str) -> None:
    scores, reader, frozen = _random_inputs(2, 4, seed=6)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    # Garbage at the padded slot of case 0: it must never be read.
    scores[0, 3], reader[0, 3], frozen[0, 3] = float("nan"), float("inf"), float("-inf")
    padded = scores.clone().requires_grad_(True)
    out = LOSSES[name]()(padded, reader, frozen_scores=frozen, mask=mask)
    out[LOSS_KEY].backward()

    loss_fn = LOSSES[name]()
    alone = [scores[0, :3].clone().requires_grad_(True), scores[1].clone().requires_grad_(True)]
    parts = [
        loss_fn(alone[0][None], reader[:1, :3], frozen_scores=frozen[:1, :3]),
        loss_fn(alone[1][None], reader[1:], frozen_scores=frozen[1:]),
    ]
    (parts[0][LOSS_KEY] + parts[1][LOSS_KEY]).backward()

    torch.testing.assert_close(out[LOSS_KEY], (parts[0][LOSS_KEY] + parts[1][LOSS_KEY]) / 2)
    for key in (ENTROPY_RETRIEVER_KEY, ENTROPY_TARGET_KEY):
        torch.testing.assert_close(out[key], (parts[0][key] + parts[1][key]) / 2)
    torch.testing.assert_close(padded.grad[0, :3], alone[0].grad / 2)  # batchmean over 2 cases
    torch.testing.assert_close(padded.grad[1], alone[1].grad / 2)
    assert float(padded.grad[0, 3]) == 0.0  # exactly zero, not NaN


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_only_inconsistent_drops_consistent_cases(name: str) -> None:
    scores, reader, frozen = _random_inputs(3, 4, seed=7)
    disagree = torch.tensor([True, False, True])
    leaf = scores.clone().requires_grad_(True)
    out = LOSSES[name](only_inconsistent=True)(
        leaf, reader, frozen_scores=frozen, disagree=disagree
    )
    out[LOSS_KEY].backward()
    kept = [0, 2]
    ref_leaf = scores[kept].clone().requires_grad_(True)
    ref = LOSSES[name]()(ref_leaf, reader[kept], frozen_scores=frozen[kept])
    ref[LOSS_KEY].backward()

    assert int(out[N_CASES_KEY]) == 2
    for key in (LOSS_KEY, ENTROPY_RETRIEVER_KEY, ENTROPY_TARGET_KEY):
        torch.testing.assert_close(out[key], ref[key])
    torch.testing.assert_close(leaf.grad[kept], ref_leaf.grad)
    assert leaf.grad[1].abs().sum() == 0  # the consistent case gets no gradient

    # Without the option the flags are ignored and every case is used.
    assert (
        int(LOSSES[name]()(scores, reader, frozen_scores=frozen, disagree=disagree)[N_CASES_KEY])
        == 3
    )


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_no_inconsistent_case_gives_zero_loss_still_connected_to_scores(name: str) -> None:
    scores, reader, frozen = _random_inputs(2, 3, seed=8)
    scores.requires_grad_(True)
    out = LOSSES[name](only_inconsistent=True)(
        scores, reader, frozen_scores=frozen, disagree=torch.tensor([False, False])
    )
    assert int(out[N_CASES_KEY]) == 0
    assert out[LOSS_KEY].item() == 0.0 and out[LOSS_KEY].requires_grad
    assert float(out[ENTROPY_RETRIEVER_KEY]) == 0.0 and float(out[ENTROPY_TARGET_KEY]) == 0.0
    out[LOSS_KEY].backward()
    torch.testing.assert_close(scores.grad, torch.zeros_like(scores))


def test_low_precision_scores_are_computed_in_float32_and_get_gradients() -> None:
    scores, reader, frozen = _random_inputs(2, 4, seed=9)
    half = scores.to(torch.bfloat16).requires_grad_(True)
    out = PosteriorKLLoss(gamma=GAMMA)(half, reader.float(), frozen_scores=frozen.float())
    assert out[LOSS_KEY].dtype == torch.float32
    out[LOSS_KEY].backward()
    assert half.grad is not None and half.grad.dtype == torch.bfloat16


def test_hyperparameters_are_attributes_and_appear_in_repr() -> None:
    loss_fn = PosteriorKLLoss(gamma=0.07, prior_gamma=0.2, only_inconsistent=True)
    assert (loss_fn.gamma, loss_fn.prior_gamma, loss_fn.only_inconsistent) == (0.07, 0.2, True)
    assert "gamma=0.07" in repr(loss_fn) and "prior_gamma=0.2" in repr(loss_fn)
    assert PosteriorKLLoss(gamma=0.07).prior_gamma == 0.07  # defaults to gamma
    assert "beta=0.3" in repr(LSRLoss(beta=0.3))


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("gamma", [0.0, -0.05, float("nan"), float("inf")])
def test_non_positive_or_non_finite_gamma_is_rejected(name: str, gamma: float) -> None:
    cls = type(LOSSES[name]())
    with pytest.raises(ValueError, match=rf"gamma must be a finite float > 0 .*got {gamma!r}"):
        cls(gamma=gamma)


def test_non_numeric_temperature_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"gamma must be a float > 0, got '0.05' \(str\)"):
        EMDRLoss(gamma="0.05")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"gamma must be a float > 0, got True \(bool\)"):
        EMDRLoss(gamma=True)


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_non_positive_beta_is_rejected(beta: float) -> None:
    with pytest.raises(ValueError, match=rf"beta must be a finite float > 0 .*got {beta!r}"):
        LSRLoss(beta=beta)


def test_non_positive_prior_gamma_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"prior_gamma must be a finite float > 0 .*got -0.1"):
        PosteriorKLLoss(prior_gamma=-0.1)


def test_unknown_reduction_and_non_bool_flag_are_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"reduction must be one of \('batchmean', 'sum'\), got 'mean'"
    ):
        LSRLoss(reduction="mean")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"only_inconsistent must be a bool, got 'yes'"):
        EMDRLoss(only_inconsistent="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_shape_mismatch_names_both_shapes(name: str) -> None:
    scores, reader, frozen = _random_inputs(2, 3, seed=10)
    loss_fn = LOSSES[name]()
    with pytest.raises(
        ValueError, match=r"reader_log_probs has shape \(2, 4\) but scores have shape \(2, 3\)"
    ):
        loss_fn(scores, torch.zeros(2, 4), frozen_scores=frozen)
    with pytest.raises(
        ValueError, match=r"frozen_scores has shape \(3, 3\) but scores have shape \(2, 3\)"
    ):
        loss_fn(scores, reader, frozen_scores=torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"mask has shape \(2,\) but scores have shape \(2, 3\)"):
        loss_fn(scores, reader, frozen_scores=frozen, mask=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"disagree has shape \(2, 3\), expected \(2,\)"):
        loss_fn(scores, reader, frozen_scores=frozen, disagree=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(
        ValueError,
        match=r"scores must be a float tensor of shape \(batch, n_candidates\), got shape \(3,\)",
    ):
        loss_fn(scores[0], reader[0], frozen_scores=frozen[0])


def test_wrong_dtypes_are_rejected() -> None:
    scores, reader, frozen = _random_inputs(2, 3, seed=11)
    loss_fn = PosteriorKLLoss()
    with pytest.raises(ValueError, match=r"mask must have dtype torch.bool, got torch.float64"):
        loss_fn(scores, reader, frozen_scores=frozen, mask=torch.ones_like(scores))
    with pytest.raises(ValueError, match=r"disagree must have dtype torch.bool, got torch.int64"):
        loss_fn(scores, reader, frozen_scores=frozen, disagree=torch.ones(2, dtype=torch.int64))
    with pytest.raises(
        ValueError, match=r"reader_log_probs must be a floating-point tensor, got torch.int64"
    ):
        loss_fn(scores, torch.zeros(2, 3, dtype=torch.int64), frozen_scores=frozen)


def test_posterior_kl_without_frozen_scores_is_rejected() -> None:
    scores, reader, _ = _random_inputs(2, 3, seed=12)
    with pytest.raises(ValueError, match=r"PosteriorKLLoss needs frozen_scores= .*shape \(2, 3\)"):
        PosteriorKLLoss()(scores, reader)


def test_only_inconsistent_without_disagree_is_rejected() -> None:
    scores, reader, _ = _random_inputs(2, 3, seed=13)
    with pytest.raises(ValueError, match=r"LSRLoss\(only_inconsistent=True\) needs disagree="):
        LSRLoss(only_inconsistent=True)(scores, reader)


def test_case_without_any_candidate_is_rejected() -> None:
    scores, reader, _ = _random_inputs(2, 3, seed=14)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(
        ValueError, match=r"case 1 has no unmasked candidate \(mask\[1\] is all False\)"
    ):
        EMDRLoss()(scores, reader, mask=mask)


def test_non_finite_reader_or_frozen_value_at_real_candidate_is_rejected() -> None:
    scores, reader, frozen = _random_inputs(2, 3, seed=15)
    bad_reader = reader.clone()
    bad_reader[1, 2] = float("-inf")
    with pytest.raises(
        ValueError, match=r"reader_log_probs\[1, 2\] is -inf at an unmasked candidate"
    ):
        LSRLoss()(scores, bad_reader)
    bad_frozen = frozen.clone()
    bad_frozen[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"frozen_scores\[0, 1\] is nan at an unmasked candidate"):
        PosteriorKLLoss()(scores, reader, frozen_scores=bad_frozen)
    # The same values at padded candidates are fine.
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert torch.isfinite(LSRLoss()(scores, bad_reader, mask=mask)[LOSS_KEY])
