"""Validation of trained query heads on real retrieval, and the no-regression rule that adopts them.

**Real-retrieval validation** (:class:`RetrievalValidator`, used when the engine has the reader):
with the current heads installed, search the *whole* knowledge base for each validation case, take
the top ``k_image`` / ``k_text`` per head as at inference, get the reader's label distribution for
every (case, neighbour) pair through the feedback cache (each pair is scored by the reader once,
ever: :func:`~llama_index_lvlm_retriever.training.feedback_pairs.score_pairs`), fuse as at
inference and measure the RAG accuracy and the mean ``log P(gold)`` of the fused distribution.

Fusion (the paper's rule): each head's scores are divided by that head's top score for the query
(``s / max(s)``, so image->image cosines ~0.95 and image->caption cosines ~0.1 weigh alike), a pair
found by both heads keeps its best normalised score, and the label distributions are averaged with
``softmax(s / 0.05)`` weights (:func:`~llama_index_lvlm_retriever.aggregation.aggregate` at
``DEFAULT_TEMPERATURE``). A head whose top score is not positive falls back to ``1 + s - max(s)``
(dividing by a negative maximum would reverse its order).

**Pool validation** (:func:`pool_rag_loglik`, the fallback without a reader) re-ranks each
validation case's cached candidates with the current head; it cannot see what the head retrieves
outside that pool.

**No-regression rule** (:func:`no_regression_decision`): adopt the trained heads only when the
paired per-case gain in validation log-likelihood over the initial heads has a one-sided bootstrap
lower bound above 0 and validation accuracy does not drop; otherwise keep the initial heads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llama_index_lvlm_retriever.aggregation import (
    DEFAULT_TEMPERATURE,
    MULTI_LABEL_THRESHOLD,
    aggregate,
)
from llama_index_lvlm_retriever.evaluation.bootstrap import bootstrap_estimates
from llama_index_lvlm_retriever.retriever import HEAD_IMAGE, HEAD_TEXT, LVLMAwareRetriever
from llama_index_lvlm_retriever.retriever.fusion import fuse_head_scores
from llama_index_lvlm_retriever.training._reader_scoring import _gold_targets
from llama_index_lvlm_retriever.training.feedback_pairs import pool_lookup, score_pairs

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.data.records import Case
    from llama_index_lvlm_retriever.readers.base import Reader
    from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache
    from llama_index_lvlm_retriever.training.head_data import HeadData

logger = logging.getLogger(__name__)

OUTSIDE_POOL_WARNING = 0.05
"""Warn when more than this share of the validation top-k lies outside the feedback pool."""
_LOG_FLOOR = 1e-12  # log P(gold) floor: one zero-probability case must not make the mean -inf


@dataclass
class ValidationResult:
    """Per-case outcomes of one validation of the current heads.

    Args:
        loglik: ``(m,)`` log P(gold) of the fused distribution (pool validation: of the pool RAG mixture).
        correct: ``(m,)`` 1.0 where the fused answer is the gold answer; ``None`` for pool validation.
        outside_pool: Per head, the share of its validation top-k outside the cases' feedback pools
            (``None`` when the cases have no pool).
        pairs_scored: (case, neighbour) pairs the reader scored for this validation.
    """

    loglik: np.ndarray
    correct: np.ndarray | None = None
    outside_pool: dict[str, float | None] = field(default_factory=dict)
    pairs_scored: int = 0

    def subset(self, rows: np.ndarray) -> ValidationResult:
        """The outcomes of ``rows`` only, in that order (e.g. the half kept for the adoption rule)."""
        return ValidationResult(loglik=np.asarray(self.loglik)[rows],
                                correct=None if self.correct is None else np.asarray(self.correct)[rows],
                                outside_pool=self.outside_pool, pairs_scored=self.pairs_scored)

    def summary(self) -> dict[str, Any]:
        """Flat JSON-ready metrics: ``val_rag_loglik``, ``val_rag_accuracy``, ``val_outside_pool/<head>``."""
        out: dict[str, Any] = {"val_rag_loglik": float(np.mean(self.loglik))}
        if self.correct is not None:
            out["val_rag_accuracy"] = float(np.mean(self.correct))
            out["val_pairs_scored"] = self.pairs_scored
        for head, share in self.outside_pool.items():
            out[f"val_outside_pool/{head}"] = share
        return out


class RetrievalValidator:
    """Validate heads by retrieving from the whole knowledge base and reading the neighbours.

    Args:
        retriever: The retriever being fine-tuned (knowledge base, ``k_image`` / ``k_text``,
            question fusion); its heads are replaced by the ones validated.
        reader: The frozen reader that scored ``cache``.
        cases: The validation cases.
        cache: The feedback cache whose pair store receives newly scored pairs (the validation
            cache, or the training cache when the validation cases have none).
        pool_cache: The validation cases' own feedback (their candidate pools, their frozen query
            embeddings); ``None`` = the cases are embedded here and have no pool.
        batch_size: Pairs per ``reader.score`` call.

    Raises:
        ValueError: A validation case without a gold label in the reader's task.

    Example:
        .. code-block:: python

            validator = RetrievalValidator(retriever, reader, val_cases, cache=val_cache, pool_cache=val_cache)
            result = validator({"image": trained_image_head})
            print(result.summary())  # {'val_rag_loglik': -0.61, 'val_rag_accuracy': 0.71, ...}
    """

    def __init__(
        self,
        retriever: LVLMAwareRetriever,
        reader: Reader,
        cases: Sequence[Case],
        *,
        cache: FeedbackCache,
        pool_cache: FeedbackCache | None = None,
        batch_size: int = 64,
    ) -> None:
        self._retriever = retriever
        self._reader = reader
        self._cases = list(cases)
        self._by_id = {case.id: case for case in self._cases}
        self._cache = cache
        self._batch_size = batch_size
        self._gold = _gold_targets(self._cases, reader).numpy()  # (m, L) bool
        self._multi_label = bool(reader.task.multi_label)
        kb = retriever.knowledge_base
        ids = [case.id for case in self._cases]
        if pool_cache is not None:
            row_of = {cid: i for i, cid in enumerate(pool_cache.case_ids)}
            rows = [row_of[cid] for cid in ids]
            self._embeddings = pool_cache.query_embeddings[rows].numpy()  # (m, d)
            self._pools: dict[str, list[set[str]]] | None = {
                head: [set(pool_cache.candidate_ids(head)[r]) for r in rows] for head in pool_cache.heads
            }
            self._pool_index = pool_lookup(pool_cache)
        else:
            self._embeddings = retriever.embed_queries(
                [c.image_path for c in self._cases], [c.question for c in self._cases]
            )  # (m, d)
            self._pools = None
            self._pool_index = pool_lookup(cache)
        # The case's own pair and copies of its image are excluded, as in feedback collection.
        self._exclude_ids = [{cid} for cid in ids]
        self._exclude_hashes = [{kb.content_hash_of(c.image_path)} for c in self._cases]

    def __len__(self) -> int:
        return len(self._cases)

    def retriever_with(self, heads: Mapping[str, Any]) -> LVLMAwareRetriever:
        """The retriever with ``heads`` (``{"image": head, "text": head}``) replacing its own."""
        base = self._retriever
        return LVLMAwareRetriever(
            base.knowledge_base,
            heads.get(HEAD_IMAGE, base.image_head),
            heads.get(HEAD_TEXT, base.text_head),
            k_image=base.k_image,
            k_text=base.k_text,
            question_weight=base.question_weight,
            head_fusion=base.config.head_fusion,
            allow_other_kb=base.config.allow_other_kb,
        )

    @torch.no_grad()
    def __call__(self, heads: Mapping[str, Any]) -> ValidationResult:
        """Validate the retriever with ``heads`` installed (the others as the retriever has them)."""
        model = self.retriever_with(heads)
        hits = model.search_heads(
            self._embeddings, exclude_ids=self._exclude_ids, exclude_hashes=self._exclude_hashes,
            images=[c.image_path for c in self._cases],
        )
        active = [h for h in (HEAD_IMAGE, HEAD_TEXT) if any(hits[h])]
        wanted = [(case.id, hit.item) for i, case in enumerate(self._cases) for h in active for hit in hits[h][i]]
        scores, n_scored = score_pairs(
            self._cache, wanted, self._reader, self._by_id, batch_size=self._batch_size, pool=self._pool_index
        )
        m = len(self._cases)
        loglik, correct = np.zeros(m), np.zeros(m)
        for i, case in enumerate(self._cases):
            fused: dict[str, float] = {}
            for head in active:
                row = hits[head][i]
                if not row:
                    continue
                # The retriever's own per-head fusion, so validation aggregates exactly as inference does.
                normalised = fuse_head_scores([hit.score for hit in row], self._retriever.config.head_fusion)  # (k,)
                for hit, s in zip(row, normalised):
                    fused[hit.item.id] = max(fused.get(hit.item.id, -math.inf), float(s))
            if not fused:
                loglik[i] = math.log(_LOG_FLOOR)  # nothing retrieved: no evidence for the gold answer
                continue
            probs = np.stack([scores[(case.id, kb_id)].double().exp().numpy() for kb_id in fused])  # (k, L)
            if not self._multi_label:
                probs = probs / probs.sum(axis=1, keepdims=True)  # label-token probabilities renormalised
            p = aggregate(probs, np.array(list(fused.values())), temperature=DEFAULT_TEMPERATURE,
                          multi_label=self._multi_label)  # (L,)
            loglik[i], correct[i] = self._score_answer(p, self._gold[i])
        outside: dict[str, float | None] = {}
        for head in active:
            if self._pools is None or head not in self._pools:
                outside[head] = None
                continue
            pairs = [(i, hit.item.id) for i in range(m) for hit in hits[head][i]]
            out_count = sum(kb_id not in self._pools[head][i] for i, kb_id in pairs)
            outside[head] = out_count / max(1, len(pairs))
        return ValidationResult(loglik=loglik, correct=correct, outside_pool=outside, pairs_scored=n_scored)

    def _score_answer(self, p: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
        """``(log P(gold), correct)`` of a fused distribution ``(L,)`` against multi-hot ``gold`` ``(L,)``."""
        p = np.clip(p, _LOG_FLOOR, 1.0)
        if not self._multi_label:
            y = int(np.argmax(gold))
            return float(np.log(p[y])), float(int(np.argmax(p)) == y)
        # Independent labels: log P(set) = sum_l [y_l log p_l + (1 - y_l) log(1 - p_l)].
        loglik = float(np.sum(np.where(gold, np.log(p), np.log(np.clip(1.0 - p, _LOG_FLOOR, 1.0)))))
        return loglik, float(np.array_equal(p >= MULTI_LABEL_THRESHOLD, gold))


def pool_rag_loglik(pool_scores: torch.Tensor, data: HeadData, k: int, gamma: float) -> np.ndarray:
    """Per-case RAG log-likelihood over the cached pool: ``log sum_{c in top-k} P_retr(c) P_reader(gold | c)``.

    Args:
        pool_scores: ``(n, N)`` current-head cosines over each case's cached pool, ``-inf`` where masked.
        data: The validation cases' head data (reader log P(gold) per candidate).
        k: Top candidates per case.
        gamma: Temperature dividing the cosines in ``P_retr``.

    Returns:
        ``(n,)`` float64; 0 for cases without candidates.
    """
    k = min(k, pool_scores.shape[1])
    top, idx = pool_scores.topk(k, dim=1)  # (n, k)
    valid = torch.isfinite(top)
    log_p = torch.log_softmax((top / gamma).masked_fill(~valid, float("-inf")), dim=1)  # (n, k)
    joint = (log_p + data.gold.gather(1, idx)).masked_fill(~valid, float("-inf"))  # (n, k)
    out = torch.logsumexp(joint, dim=1)  # (n,); -inf for a case without candidates
    return out.masked_fill(~valid.any(dim=1), 0.0).double().cpu().numpy()


def build_validator(
    retriever: LVLMAwareRetriever,
    reader: Reader | None,
    feedback: FeedbackCache,
    validation: FeedbackCache | None,
    validation_cases: Sequence[Case] | None,
    cases: Mapping[str, Case],
) -> RetrievalValidator | None:
    """The engine's real-retrieval validator, or ``None`` (no reader, or nothing to validate on).

    Validation cases are ``validation_cases`` (their pool: ``validation`` when it holds them all),
    else the Case records of ``validation``'s rows found in ``cases``.

    Raises:
        ValueError: A validation case is also a training case, or a validation row has no Case record.
    """
    if reader is None:
        if validation is not None:
            logger.warning("no reader given: validation re-ranks the validation cases' cached pools and cannot "
                           "see what the heads retrieve outside them; pass reader= for real-retrieval validation")
        return None
    if validation_cases is None and validation is None:
        return None
    if validation_cases is not None:
        val_cases = list(validation_cases)
        overlap = sorted({c.id for c in val_cases} & set(feedback.case_ids))
        if overlap:
            raise ValueError(f"validation case {overlap[0]!r} is also a training case ({len(overlap)} overlap); "
                             "validate on held-out cases")
        val_ids = {c.id for c in val_cases}
        pool = validation if validation is not None and val_ids <= set(validation.case_ids) else None
    else:
        assert validation is not None
        missing = [cid for cid in validation.case_ids if cid not in cases]
        if missing:
            raise ValueError(
                f"real-retrieval validation reads the validation cases, but no Case record was given for "
                f"{missing[0]!r} ({len(missing)} missing); pass cases= (all cases of the feedback) or validation_cases="
            )
        val_cases, pool = [cases[cid] for cid in validation.case_ids], validation
    return RetrievalValidator(retriever, reader, val_cases, cache=pool if pool is not None else feedback,
                              pool_cache=pool)


@dataclass(frozen=True)
class AdoptionDecision:
    """Whether the trained heads replace the initial ones, and the numbers behind it.

    Args:
        adopted: ``True`` = keep the trained heads.
        delta_loglik: Mean paired gain in validation log P(gold), trained minus initial.
        loglik_lower_bound: Its one-sided bootstrap lower bound.
        delta_accuracy: Trained minus initial validation accuracy (``None``: pool validation).
        confidence: One-sided confidence of the bound.
        n_cases: Validation cases.
        message: One line for the log and the records.
    """

    adopted: bool
    delta_loglik: float
    loglik_lower_bound: float
    delta_accuracy: float | None
    confidence: float
    n_cases: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {key: getattr(self, key) for key in self.__dataclass_fields__}

    def card_metrics(self) -> dict[str, float]:
        """The validation numbers a saved head's model card shows."""
        metrics = {"delta_val_loglik": self.delta_loglik, "delta_val_loglik_lower_bound": self.loglik_lower_bound}
        if self.delta_accuracy is not None:
            metrics["delta_val_accuracy"] = self.delta_accuracy
        return metrics


def split_for_adoption(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint validation rows ``(selection, adoption)``: a seeded ``holdout`` share decides adoption only.

    Choosing the best checkpoint and then testing it on the same cases overstates its gain (the
    winner's curse); deciding on cases the selection never saw does not. With ``holdout = 0`` (or
    too few cases for two non-empty parts) both get every row.

    Example:
        >>> selection, adoption = split_for_adoption(10, 0.5, seed=0)
        >>> len(selection), len(adoption), sorted({*selection, *adoption}) == list(range(10))
        (5, 5, True)
    """
    n_hold = int(round(n * holdout))
    if n_hold < 1 or n_hold >= n:
        everything = np.arange(n)
        return everything, everything
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


_MIN_GAIN = 1e-6  # nats per case; far below any gain worth adopting, far above float round-off


def no_regression_decision(
    initial: ValidationResult,
    trained: ValidationResult,
    *,
    confidence: float = 0.9,
    n_resamples: int = 1000,
    seed: int = 0,
) -> AdoptionDecision:
    """Adopt the trained heads only if they beat the initial ones on the same validation cases.

    Rule: the paired per-case gain ``d_i = loglik_trained_i - loglik_initial_i`` must have a one-sided
    ``confidence`` percentile-bootstrap lower bound > 0 (resampling cases), and the accuracy must
    not drop (when both results have one).

    Args:
        initial: Validation of the initial heads (step 0).
        trained: Validation of the selected trained heads, on the same cases in the same order.
        confidence: One-sided confidence, e.g. 0.9 (the bound is the 10th percentile).
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        The decision with its numbers.

    Example:
        >>> import numpy as np
        >>> base = ValidationResult(loglik=np.log(np.full(50, 0.5)), correct=np.ones(50))
        >>> better = ValidationResult(loglik=np.log(np.full(50, 0.6)), correct=np.ones(50))
        >>> no_regression_decision(base, better).adopted, no_regression_decision(base, base).adopted
        (True, False)
    """
    d = np.asarray(trained.loglik, dtype=np.float64) - np.asarray(initial.loglik, dtype=np.float64)  # (m,)
    n = int(d.size)
    # A two-sided interval at 2c - 1 has the one-sided c bound as its lower end.
    est = bootstrap_estimates(
        {"delta": lambda w: w @ d / w.sum(axis=1)}, n=n, n_resamples=n_resamples, confidence=2 * confidence - 1,
        seed=seed,
    )["delta"]
    delta_acc = None
    if initial.correct is not None and trained.correct is not None:
        delta_acc = float(np.mean(trained.correct) - np.mean(initial.correct))
    lower = est.ci_low if not math.isnan(est.ci_low) else est.value
    # Strictly above float noise: heads that changed nothing (gain ~1e-9) are not "better".
    gains = lower > _MIN_GAIN
    keeps_accuracy = delta_acc is None or delta_acc >= 0.0
    adopted = bool(gains and keeps_accuracy)
    numbers = (
        f"validation log-likelihood {est.value:+.4f} per case (one-sided {confidence:.0%} lower bound {lower:+.4f}), "
        + (f"accuracy {delta_acc:+.4f}" if delta_acc is not None else "accuracy not measured (pool validation)")
        + f", {n} cases"
    )
    if adopted:
        message = f"adopted the trained heads: {numbers}"
    else:
        why = "the log-likelihood gain is not significant" if not gains else "validation accuracy drops"
        message = f"kept the initial heads (no-regression rule: {why}): {numbers}"
    return AdoptionDecision(adopted, float(est.value), float(lower), delta_acc, confidence, n, message)


__all__ = [
    "OUTSIDE_POOL_WARNING",
    "AdoptionDecision",
    "RetrievalValidator",
    "build_validator",
    "ValidationResult",
    "no_regression_decision",
    "pool_rag_loglik",
    "split_for_adoption",
]
