"""The KB-side option of issue 18, measured: a key adapter trained with the query head, then a re-index.

Stage 2's adapter heads move only the query vector; the knowledge base keeps its frozen keys. Atlas
(Izacard et al., 2022) also updates the document side and re-indexes. Here each head gets a key
adapter of the same form as the query head (a residual MLP blended with the frozen vector, identity
at start)::

    key' = normalize((1 - alpha) * key + alpha * normalize(g(key)))

trained jointly with the query head on the same target (the default loss, through ``config_loss``),
then every knowledge-base vector of that modality is mapped through ``g`` and the knowledge base is
re-indexed (``KnowledgeBase(embed_model, items, image_vectors=..., text_vectors=...)``). The encoder
is untouched, so a test query meets the same items in the adapted geometry: the KB side is shared by
training and test queries, which is what might help a head that does not generalise from the query
side alone.

Selection and adoption follow the engine (``RetrieverFinetuneEngine``): checkpoints on one part of
the validation cases by real retrieval with the reader, adoption by the no-regression rule on the
other part. Used by ``training/target_grid.py`` (grid point key ``"key_adapter"``); not a library
option, because it did not earn one (README, "Choosing the training target").
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from llama_index_lvlm_retriever.data.records import Case
from llama_index_lvlm_retriever.heads import QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.retriever import HEAD_IMAGE, HEAD_TEXT, LVLMAwareRetriever
from llama_index_lvlm_retriever.training import TrainerConfig
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache
from llama_index_lvlm_retriever.training.head_data import HeadData, build_head_data
from llama_index_lvlm_retriever.training.loss_config import config_loss
from llama_index_lvlm_retriever.training.losses import LOSS_KEY
from llama_index_lvlm_retriever.training.validation import (
    AdoptionDecision,
    RetrievalValidator,
    ValidationResult,
    no_regression_decision,
    split_for_adoption,
)

logger = logging.getLogger(__name__)

PHASE_ORDER = (HEAD_TEXT, HEAD_IMAGE)  # the paper's order: the text head first


@dataclass
class KeyAdapterRun:
    """What :func:`train_key_adapter` produced."""

    trained: LVLMAwareRetriever  # the selected checkpoint (re-indexed KB, trained query heads)
    decision: AdoptionDecision | None  # None without validation
    history: list[dict[str, Any]]
    initial: ValidationResult | None = None
    best: ValidationResult | None = None


class _Pair(torch.nn.Module):
    """One head's query adapter and key adapter, trained together."""

    def __init__(self, dim: int, key_dim: int, config: TrainerConfig) -> None:
        super().__init__()
        self.query = QueryHead(QueryHeadConfig(dim=dim, kind=config.head_kind, hidden_dim=config.head_hidden_dim,
                                               out_dim=key_dim, alpha=config.alpha, dropout=config.dropout))
        self.key = QueryHead(QueryHeadConfig(dim=key_dim, kind=config.head_kind, hidden_dim=config.head_hidden_dim,
                                             alpha=config.alpha, dropout=config.dropout))

    def scores(self, data: HeadData, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Cosines of the adapted query with the adapted keys of the selected candidates, ``(B, n)``."""
        query = self.query(data.embeddings[rows])  # (B, D)
        keys = self.key(data.keys)  # (U, D): every distinct candidate key, adapted once
        return torch.einsum("bd,bnd->bn", query, keys[data.slots[rows].gather(1, cols)])

    @torch.no_grad()
    def pool_scores(self, data: HeadData) -> torch.Tensor:
        """Scores over every case's whole pool, ``(n, N)``, ``-inf`` where masked."""
        n, big_n = data.mask.shape
        cols = torch.arange(big_n).expand(n, big_n)
        return self.scores(data, torch.arange(n), cols).masked_fill(~data.mask, float("-inf"))


def reindexed_retriever(standard: LVLMAwareRetriever, pairs: dict[str, _Pair]) -> LVLMAwareRetriever:
    """``standard``'s knowledge base with adapted keys, searched by the trained query heads."""
    kb = standard.knowledge_base
    vectors = {HEAD_IMAGE: kb.image_vectors, HEAD_TEXT: kb.text_vectors}
    with torch.no_grad():
        for name, pair in pairs.items():
            pair.eval()
            vectors[name] = pair.key(torch.tensor(np.asarray(vectors[name]), dtype=torch.float32)).numpy()
    adapted = KnowledgeBase(kb.embed_model, kb.items, image_vectors=vectors[HEAD_IMAGE],
                            text_vectors=vectors[HEAD_TEXT], image_hashes=kb.image_hashes)
    heads = {name: pair.query for name, pair in pairs.items()}
    return LVLMAwareRetriever(adapted, heads.get(HEAD_IMAGE, standard.image_head), heads.get(HEAD_TEXT, standard.text_head),
                              k_image=standard.k_image, k_text=standard.k_text, head_fusion=standard.config.head_fusion)


def _batches(rows: torch.Tensor, size: int, seed: int) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = min(size, rows.numel())
    while True:
        perm = rows[torch.randperm(rows.numel(), generator=generator)]
        for start in range(0, perm.numel() - size + 1, size):
            yield perm[start : start + size]


def train_key_adapter(
    standard: LVLMAwareRetriever,
    feedback: FeedbackCache,
    config: TrainerConfig,
    *,
    reader: Any = None,
    validation_cases: Sequence[Case] | None = None,
) -> KeyAdapterRun:
    """Train query + key adapters per head (text, then image) and keep the validation-selected checkpoint.

    Without ``reader``/``validation_cases`` the last checkpoint is kept (the oracle-fit use).

    Raises:
        ValueError: ``config.gamma`` is not a number (the key adapter has no ``"auto"``), or the
            feedback has no head the retriever reads.
    """
    if not isinstance(config.gamma, float | int):
        raise ValueError(f"the key adapter needs a numeric gamma, got {config.gamma!r}")
    torch.manual_seed(config.seed)
    kb = standard.knowledge_base
    names = [name for name in PHASE_ORDER if name in feedback.heads]
    if not names:
        raise ValueError(f"the feedback has no candidates for {list(PHASE_ORDER)}")
    loss = config_loss(config, float(config.gamma))
    validate = reader is not None and validation_cases is not None
    pairs: dict[str, _Pair] = {}
    history: list[dict[str, Any]] = []
    initial: ValidationResult | None = None
    best: ValidationResult | None = None
    selection = holdout = None

    def run_validation(step: int, phase: str) -> ValidationResult:
        result = RetrievalValidator(reindexed_retriever(standard, pairs), reader, list(validation_cases or ()),
                                    cache=feedback)({})
        history.append({"event": "validation", "phase": phase, "step": step, **result.summary()})
        return result

    for name in names:
        data = build_head_data(feedback, name, kb, torch.device("cpu"))
        pair = pairs[name] = _Pair(feedback.dim, kb.dim, config)
        params = [p for p in pair.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.resolved_learning_rate, weight_decay=0.0)
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(round(config.warmup_ratio * config.max_steps)),
                                                    config.max_steps)
        n_keep = min(config.n_train_candidates or data.mask.shape[1], data.mask.shape[1])
        cols = pair.pool_scores(data).topk(n_keep, dim=1).indices
        best_state, best_metric = copy.deepcopy(pair.state_dict()), -np.inf
        if validate:
            result = run_validation(0, name)
            if initial is None:
                initial = result
                selection, holdout = split_for_adoption(len(result.loglik), config.adoption_holdout, config.seed)
            best, best_metric = result, float(np.mean(result.loglik[selection]))
        batches = _batches(data.rows, config.batch_size, config.seed)
        for step in range(1, config.max_steps + 1):
            if config.refresh_every and step > 1 and (step - 1) % config.refresh_every == 0:
                cols = pair.pool_scores(data).topk(n_keep, dim=1).indices
            pair.train()
            rows = next(batches)
            batch_cols = cols[rows]
            out = loss(pair.scores(data, rows, batch_cols), data.gold[rows].gather(1, batch_cols),
                       frozen_scores=data.frozen_scores[rows].gather(1, batch_cols),
                       mask=data.mask[rows].gather(1, batch_cols), disagree=data.disagree[rows])
            optimizer.zero_grad(set_to_none=True)
            out[LOSS_KEY].backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if step % config.log_every == 0:
                history.append({"event": "train", "phase": name, "step": step, "loss": float(out[LOSS_KEY].detach())})
            if validate and (step % config.eval_every == 0 or step == config.max_steps):
                result = run_validation(step, name)
                metric = float(np.mean(result.loglik[selection]))
                if metric > best_metric:
                    best, best_metric, best_state = result, metric, copy.deepcopy(pair.state_dict())
        if validate:
            pair.load_state_dict(best_state)
        pair.eval()
    decision = None
    if validate and initial is not None and best is not None:
        decision = no_regression_decision(initial.subset(holdout), best.subset(holdout),
                                          confidence=config.adoption_confidence,
                                          n_resamples=config.bootstrap_resamples, seed=config.seed)
        logger.info("key adapter: %s", decision.message)
    return KeyAdapterRun(trained=reindexed_retriever(standard, pairs), decision=decision, history=history,
                         initial=initial, best=best)


__all__ = ["KeyAdapterRun", "reindexed_retriever", "train_key_adapter"]
