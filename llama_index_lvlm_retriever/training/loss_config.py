"""``config_loss``: the stage-2 loss module that a :class:`TrainerConfig` names, for one head's temperature."""

from __future__ import annotations

from typing import Any

from torch import nn

from llama_index_lvlm_retriever.training.config import TrainerConfig
from llama_index_lvlm_retriever.training.losses import (
    EMDRLoss,
    LSRLoss,
    PosteriorKLLoss,
    ReaderRankLoss,
)

__all__ = ["config_loss"]


def config_loss(config: TrainerConfig, gamma: float) -> nn.Module:
    """The loss ``TrainerConfig.loss`` names, with the head's resolved ``gamma`` and the config's settings.

    Example:
        >>> config_loss(TrainerConfig(loss="posterior", prior_gamma=1.0), 0.01)
        PosteriorKLLoss(gamma=0.01, only_inconsistent=False, reduction='batchmean', prior_gamma=1.0)
    """
    common: dict[str, Any] = {"only_inconsistent": config.only_inconsistent,
                              "inconsistent_weight": config.inconsistent_weight}
    if config.loss == "posterior":
        return PosteriorKLLoss(gamma, prior_gamma=config.prior_gamma, **common)
    if config.loss == "lsr":
        return LSRLoss(gamma, beta=config.beta, **common)
    if config.loss == "rank":
        return ReaderRankLoss(gamma, min_gap=config.rank_min_gap, **common)
    return EMDRLoss(gamma, **common)
