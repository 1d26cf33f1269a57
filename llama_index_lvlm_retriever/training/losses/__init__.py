"""Retriever-training losses: compare the retriever's softmax over a case's candidates with the reader.

Each training case ``x`` (query image + question, gold answer ``y``) comes with ``n`` candidate
knowledge-base pairs ``c`` and, for each, the frozen reader's ``log P_reader(y | x, c)`` (the gold
answer's probability given that candidate alone). Every loss turns the retriever's scores into
``P_retr(c) = softmax_c(s(c) / gamma)`` and compares it with a reader-derived target:

* :class:`PosteriorKLLoss` (the paper, arXiv 2508.17394): ``KL(Q || P_retr)`` with
  ``Q ∝ P_reader(y | x, c) * P_retr_frozen(c)``;
* :class:`LSRLoss` (REPLUG, arXiv 2301.12652): ``KL(Q || P_retr)`` with
  ``Q = softmax(log P_reader(y | x, c) / beta)``;
* :class:`EMDRLoss` (EMDR², arXiv 2106.05346): ``-log sum_c P_retr(c) * P_reader(y | x, c)``;
* :class:`ReaderRankLoss` (RankNet/LambdaRank-style, beyond the paper): a pairwise logistic loss
  that asks for the reader's order of the candidates with a margin of a few ``gamma``.

What training can learn is decided by each loss's *optimum*, not its gradient: a KL loss is
minimised at ``s = gamma * log Q + const``, so with the paper's posterior and a prior as sharp as
the cosine gaps the optimum is the frozen ranking.
:func:`~llama_index_lvlm_retriever.training.target_diagnostics.diagnose_target` measures this
before training (the share of queries whose target top-k is the frozen top-k).

One more loss works before any of these, on a different input:

* :class:`MultiPositiveInfoNCELoss` (CLIP's symmetric InfoNCE, arXiv 2103.00020, with SupCon's
  multi-positive target, arXiv 2004.11362): the contrastive loss for pre-training the small CLIP
  on knowledge-base image-caption pairs
  (:class:`~llama_index_lvlm_retriever.training.clip_pretrain.CLIPPretrainEngine`), where
  identical captions are all positives. It takes ``(batch, batch)`` image-to-text logits and
  ``(batch,)`` caption group ids, returns a scalar, and does not follow the convention below.

Calling convention (shared by the three candidate losses above; losses are tensor-only, no model calls inside)::

    out = loss_fn(scores, reader_log_probs, frozen_scores=None, mask=None, disagree=None)

* ``scores`` ``(batch, n)``: the current retriever's scores (cosines); gradients flow into it.
* ``reader_log_probs`` ``(batch, n)``: ``log P_reader(y | x, c)``; treated as a constant.
* ``frozen_scores`` ``(batch, n)``: the frozen retriever's scores; required by ``PosteriorKLLoss``.
* ``mask`` ``(batch, n)`` bool: False marks padding (cases with fewer than ``n`` candidates);
  padded entries get zero probability and zero target, and their values are never read.
* ``disagree`` ``(batch,)`` bool: the case is *inconsistent* (the reader's prediction changes with
  the candidate). With ``only_inconsistent=True`` the other cases are dropped: when every candidate
  leads to the same answer, the reader term is nearly flat and the target carries no signal.

``out`` is a ``dict[str, torch.Tensor]`` of scalars (keys are the constants below): ``"loss"`` is
the value to optimise (the engine sums the ``"loss"`` of each head and logs every entry);
``"entropy_retriever"`` and ``"entropy_target"`` are the mean entropies (nats, detached) of
``P_retr`` and ``Q`` over the used cases, which show whether the softmax collapses or stays
uniform; ``"n_cases"`` (int64) counts the used cases. When no case is used the loss is a zero
still connected to ``scores`` (backward gives zero gradients), the entropies are 0 and
``n_cases`` is 0.

Example:
    >>> import torch
    >>> from llama_index_lvlm_retriever.training.losses import PosteriorKLLoss
    >>> scores = torch.tensor([[0.31, 0.30, 0.25], [0.40, 0.20, 0.0]], requires_grad=True)
    >>> reader = torch.log(torch.tensor([[0.2, 0.9, 0.5], [0.6, 0.6, 0.6]]))
    >>> out = PosteriorKLLoss(gamma=0.05, only_inconsistent=True)(
    ...     scores, reader, frozen_scores=scores.detach(), disagree=torch.tensor([True, False]))
    >>> int(out["n_cases"])
    1
"""

from __future__ import annotations

from llama_index_lvlm_retriever.training.losses._common import (
    ENTROPY_RETRIEVER_KEY,
    ENTROPY_TARGET_KEY,
    LOSS_KEY,
    N_CASES_KEY,
    Reduction,
)
from llama_index_lvlm_retriever.training.losses.emdr import EMDRLoss
from llama_index_lvlm_retriever.training.losses.lsr import LSRLoss
from llama_index_lvlm_retriever.training.losses.multi_positive_infonce import (
    MultiPositiveInfoNCELoss,
)
from llama_index_lvlm_retriever.training.losses.posterior_kl import PosteriorKLLoss
from llama_index_lvlm_retriever.training.losses.reader_rank import ReaderRankLoss

__all__ = [
    "ENTROPY_RETRIEVER_KEY",
    "ENTROPY_TARGET_KEY",
    "LOSS_KEY",
    "N_CASES_KEY",
    "EMDRLoss",
    "LSRLoss",
    "MultiPositiveInfoNCELoss",
    "PosteriorKLLoss",
    "ReaderRankLoss",
    "Reduction",
]
