"""Where a training target's optimum puts the candidates, and the check that says so before training.

Designed feedback (issue 18): one query, six candidates whose frozen cosines step down by 0.002
(0.900, 0.898, ..., 0.890); the reader prefers ranks 3 and 4 by 0.1 nats (log P(gold) -0.6 against
-0.7 elsewhere). Any useful target must move those two into the top-2.
"""

from __future__ import annotations

import logging

import pytest
import torch

from llama_index_lvlm_retriever.training.config import TrainerConfig
from llama_index_lvlm_retriever.training.loss_config import config_loss
from llama_index_lvlm_retriever.training.losses import (
    EMDRLoss,
    LSRLoss,
    PosteriorKLLoss,
    ReaderRankLoss,
)
from llama_index_lvlm_retriever.training.target_diagnostics import (
    TargetDiagnostics,
    diagnose_target,
)
from llama_index_lvlm_retriever.training.temperature import auto_gamma

FROZEN = torch.tensor([[0.900, 0.898, 0.896, 0.894, 0.892, 0.890]], dtype=torch.float64)
READER = torch.tensor([[-0.7, -0.7, -0.6, -0.6, -0.7, -0.7]], dtype=torch.float64)
MASK = torch.ones_like(FROZEN, dtype=torch.bool)
PREFERRED = {2, 3}


def _optimise_top2(loss: torch.nn.Module, steps: int = 3000) -> set[int]:
    """Free scores started at the frozen cosines, trained to the loss's optimum; their top-2."""
    scores = FROZEN.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([scores], lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        loss(scores, READER, frozen_scores=FROZEN, mask=MASK)["loss"].backward()
        optimizer.step()
    return set(scores.detach()[0].topk(2).indices.tolist())


def _resolved_gamma(config: TrainerConfig) -> float:
    return auto_gamma(FROZEN, MASK) if config.gamma == "auto" else float(config.gamma)


def test_the_old_default_keeps_the_frozen_top2() -> None:
    # PosteriorKLLoss with prior_gamma = gamma = "auto": the optimum is s_0 + gamma * log P_reader,
    # a shift of gamma * 0.1 against gaps of 0.002 (gamma ~ 0.002 here): the frozen order survives.
    old = TrainerConfig(loss="posterior", gamma="auto", prior_gamma=None)
    loss = config_loss(old, _resolved_gamma(old))
    assert _optimise_top2(loss) == {0, 1}
    assert diagnose_target(loss, FROZEN, READER, MASK, k=2).frozen_topk_share == 1.0


def test_the_default_target_moves_the_readers_preferred_pair_into_the_top2() -> None:
    default = TrainerConfig()
    loss = config_loss(default, _resolved_gamma(default))
    assert _optimise_top2(loss) == PREFERRED
    assert diagnose_target(loss, FROZEN, READER, MASK, k=2).frozen_topk_share == 0.0


@pytest.mark.parametrize(
    "loss",
    [PosteriorKLLoss(gamma=0.002, prior_gamma=1.0), LSRLoss(gamma=0.002, beta=0.1), ReaderRankLoss(gamma=0.002),
     EMDRLoss(gamma=0.002)],
    ids=["posterior-flat-prior", "lsr", "rank", "emdr"],
)
def test_reader_ranked_targets_have_the_preferred_pair_at_their_optimum(loss: torch.nn.Module) -> None:
    order = loss.optimum_order(READER, FROZEN, MASK)
    assert set(order[0].topk(2).indices.tolist()) == PREFERRED
    assert _optimise_top2(loss) == PREFERRED


def test_diagnostics_numbers_by_hand() -> None:
    # Two queries, k = 1. Query 0: frozen top-1 is candidate 0, the reader prefers candidate 1 by
    # 0.5 nats -> LSR's optimum changes the top-1. Query 1: the reader prefers the frozen top-1 ->
    # unchanged. Share 1/2. Spreads 0.5 and 0.3 -> median of two = their mean 0.4. Adjacent gaps of
    # the top-2: 0.10 and 0.05 -> median 0.075. A third query with a single candidate cannot change.
    frozen = torch.tensor([[0.8, 0.7, 0.0], [0.6, 0.55, 0.0], [0.9, 0.0, 0.0]])
    reader = torch.tensor([[-1.0, -0.5, 0.0], [-0.2, -0.5, 0.0], [-0.1, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, False], [True, False, False]])
    found = diagnose_target(LSRLoss(gamma=1.0), frozen, reader, mask, k=1, head="text")
    assert isinstance(found, TargetDiagnostics)
    assert (found.head, found.k, found.n_queries) == ("text", 1, 2)
    assert found.frozen_topk_share == pytest.approx(0.5)
    assert found.reader_spread == pytest.approx(0.4)
    assert found.cosine_gap == pytest.approx(0.075)
    assert not found.cannot_change_retrieval
    assert found.to_dict()["cannot_change_retrieval"] is False
    assert "50.0% of 2 training queries" in found.line()


def test_a_target_that_cannot_change_retrieval_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        found = diagnose_target(PosteriorKLLoss(gamma=0.001), FROZEN, READER, MASK, k=2, head="image")
    assert found.cannot_change_retrieval
    assert "this target cannot change retrieval" in caplog.text


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        diagnose_target(LSRLoss(), FROZEN, READER, MASK, k=0)
    with pytest.raises(ValueError, match="must have one shape"):
        diagnose_target(LSRLoss(), FROZEN, READER[:, :3], MASK, k=2)
    with pytest.raises(TypeError, match="optimum_order"):
        diagnose_target(torch.nn.MSELoss(), FROZEN, READER, MASK, k=2)


def test_config_loss_builds_every_target() -> None:
    assert isinstance(config_loss(TrainerConfig(loss="posterior", prior_gamma=1.0), 0.01), PosteriorKLLoss)
    lsr = config_loss(TrainerConfig(loss="lsr", beta=0.3, inconsistent_weight=2.0), 0.01)
    assert isinstance(lsr, LSRLoss) and lsr.beta == 0.3 and lsr.inconsistent_weight == 2.0
    rank = config_loss(TrainerConfig(loss="rank", rank_min_gap=0.02, only_inconsistent=True), 0.01)
    assert isinstance(rank, ReaderRankLoss) and rank.min_gap == 0.02 and rank.only_inconsistent
    assert isinstance(config_loss(TrainerConfig(loss="emdr"), 0.01), EMDRLoss)
