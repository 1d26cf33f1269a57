"""Aggregation of per-neighbour reader distributions, consistency statistics and rerank scores.

The reader sees one retrieved neighbour per pass and returns a label distribution for each; this
module turns the ``(k, n_labels)`` stack of those distributions into one answer, says whether the
neighbours agreed (the paper's *inconsistent retrieval predictions*, arXiv 2508.17394), and scores
each neighbour for reranking. It is pure numpy so that ``LVLMRerank`` (inference) and the evaluator
share exactly the same arithmetic.

Shapes use one vocabulary: ``k`` neighbours, ``L`` labels, ``n`` cases.

* Single-label tasks: ``distributions[i]`` is the reader's probability distribution over the ``L``
  labels given neighbour ``i`` alone (rows sum to 1); a neighbour *votes* for its argmax label.
* Multi-label tasks (``multi_label=True``): ``distributions[i, l]`` is the independent probability
  that label ``l`` is present; a neighbour votes for the *set* of labels with probability
  ``>= MULTI_LABEL_THRESHOLD``. Aggregation averages the per-label probabilities the same way as
  for single-label tasks; consistency compares the predicted label sets, which are encoded as
  integers by :func:`label_set_code` (bit ``l`` set when label ``l`` is predicted).

Retrieval scores enter through :func:`retrieval_weights`, a softmax over the ``k`` neighbours at
temperature ``T`` (scores are divided by ``T``). The reference implementation used ``T = 1`` on
cosine similarities, which lie in a narrow band (a typical top-k spread is 0.05-0.2), so its
weights were nearly uniform: a 0.1 cosine gap gives a weight ratio of ``e^0.1 = 1.1``. The default
``T = 0.05`` turns the same gap into a ratio of ``e^2 = 7.4``, so retrieval confidence actually
matters while a neighbour 0.01 behind still keeps ~80% of the leader's weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

__all__ = [
    "DEFAULT_TEMPERATURE",
    "MULTI_LABEL_THRESHOLD",
    "AggregationMethod",
    "ConsistencyStats",
    "RerankMethod",
    "aggregate",
    "answer_support",
    "consistency",
    "label_set_code",
    "label_set_from_code",
    "label_set_probability",
    "neighbour_prediction",
    "predict_label",
    "predict_label_set",
    "rerank_scores",
    "retrieval_weights",
]

AggregationMethod = Literal["weighted", "majority", "most_confident"]
RerankMethod = Literal["posterior", "reader", "retrieval"]

DEFAULT_TEMPERATURE = 0.05
"""Softmax temperature over cosine retrieval scores (see the module docstring for why not 1)."""
MULTI_LABEL_THRESHOLD = 0.5
"""A multi-label label is predicted when its probability is ``>=`` this value."""

# Majority-vote ties are broken by nudging the winner's vote share by this much, so that argmax
# (single-label) or the 0.5 threshold (multi-label) of the aggregated vector picks it; far below
# any real share difference (1/k) and below what anyone prints.
_TIE_BREAK = 1e-6
# Single-label rows must sum to 1 within this tolerance (float16 readers land around 1e-4).
_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ConsistencyStats:
    """How far the neighbours agree on the answer.

    Args:
        consistent: ``True`` when every neighbour votes for the same answer (always for k == 1).
        agreement: Share of neighbours voting for the majority answer, in ``[1/k, 1]``.
        vote_entropy: Shannon entropy of the vote shares divided by its maximum ``log(min(k, A))``
            (``A`` = number of possible answers: ``L`` labels, or ``2**L`` label sets), so it lies
            in ``[0, 1]``; 0 when unanimous or when ``min(k, A) == 1``.
        n_distinct: Number of distinct answers among the neighbours.
        votes: One answer per neighbour: the argmax label index (single-label) or the
            :func:`label_set_code` of the predicted label set (multi-label).
        majority_label: The answer with the most votes; ties go to the answer with the largest
            summed probability over the neighbours, then to the smallest index/code. Same encoding
            as ``votes``.

    Example:
        >>> s = consistency(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]))
        >>> (s.consistent, round(s.agreement, 3), s.votes, s.majority_label)
        (False, 0.667, (0, 0, 1), 0)
    """

    consistent: bool
    agreement: float
    vote_entropy: float
    n_distinct: int
    votes: tuple[int, ...]
    majority_label: int


def retrieval_weights(scores: np.ndarray, temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """Softmax of retrieval scores over the neighbours: ``w_i = exp(s_i / T) / sum_j exp(s_j / T)``.

    Args:
        scores: ``(k,)`` or ``(n, k)`` retrieval scores (e.g. cosine similarities).
        temperature: ``T > 0``; divides the scores. Small ``T`` sharpens towards the best neighbour,
            large ``T`` flattens towards uniform.

    Returns:
        Weights of the same shape, each row summing to 1 (uniform when all scores are equal).

    Raises:
        ValueError: ``temperature`` is not a positive finite number, the scores are not 1-D/2-D,
            are empty, or contain NaN/inf.

    Example:
        >>> retrieval_weights(np.array([0.0, np.log(3.0)]), temperature=1.0).round(2).tolist()
        [0.25, 0.75]
    """
    _check_temperature(temperature)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim not in (1, 2) or s.shape[-1] == 0:
        raise ValueError(
            f"retrieval scores must have shape (k,) or (n, k) with k >= 1, got shape {s.shape}"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError(f"retrieval scores contain NaN or inf: {s.tolist()}; pass finite scores")
    z = s / temperature
    z = z - z.max(axis=-1, keepdims=True)  # subtract the row max so exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predict_label(distribution: np.ndarray) -> int:
    """Single-label prediction: the argmax of an ``(L,)`` distribution (ties: smallest index)."""
    return int(np.argmax(np.asarray(distribution)))


def predict_label_set(distribution: np.ndarray) -> tuple[int, ...]:
    """Multi-label prediction: indices of labels with probability ``>= MULTI_LABEL_THRESHOLD``."""
    p = np.asarray(distribution, dtype=np.float64)
    return tuple(int(i) for i in np.flatnonzero(p >= MULTI_LABEL_THRESHOLD))


def label_set_code(indices: Sequence[int]) -> int:
    """Encode a set of label indices as an int with bit ``l`` set for label ``l`` (``{0, 2} -> 5``)."""
    code = 0
    for i in indices:
        if int(i) < 0:
            raise ValueError(f"label indices must be >= 0, got {list(indices)}")
        code |= 1 << int(i)
    return code


def label_set_from_code(code: int) -> tuple[int, ...]:
    """Inverse of :func:`label_set_code` (``5 -> (0, 2)``)."""
    if code < 0:
        raise ValueError(f"a label-set code is >= 0, got {code}")
    return tuple(i for i in range(code.bit_length()) if code >> i & 1)


def aggregate(
    distributions: np.ndarray,
    retrieval_scores: np.ndarray | None = None,
    method: AggregationMethod = "weighted",
    temperature: float = DEFAULT_TEMPERATURE,
    multi_label: bool = False,
) -> np.ndarray:
    """Combine the per-neighbour distributions into one.

    Methods:

    * ``"weighted"``: ``sum_i w_i p_i`` with ``w = retrieval_weights(retrieval_scores, T)``
      (uniform weights when ``retrieval_scores`` is ``None``). This is the paper's inference rule.
    * ``"majority"``: vote shares. Single-label: share of neighbours whose argmax is each label.
      Multi-label: per label, share of neighbours predicting it. Ties are broken by the summed
      probability (single-label: the tied label with the largest ``sum_i p_i[l]``, then the smallest
      index; multi-label: a label with exactly half the votes is predicted iff its mean probability
      is ``>= 0.5``); the winner's share is nudged up by ``1e-6`` (the loser's down, multi-label)
      so that ``argmax``/thresholding of the result gives the tie-broken answer. Retrieval scores
      are not used.
    * ``"most_confident"``: the distribution of the neighbour whose prediction is most certain
      (single-label: largest max-probability; multi-label: largest mean of ``max(p, 1 - p)``);
      ties go to the larger retrieval score, then to the earlier neighbour.

    Args:
        distributions: ``(k, L)`` for one case or ``(n, k, L)`` for a batch.
        retrieval_scores: ``(k,)`` or ``(n, k)`` matching ``distributions``, or ``None``.
        method: One of ``"weighted"``, ``"majority"``, ``"most_confident"``.
        temperature: Softmax temperature for ``"weighted"`` (divides the scores).
        multi_label: Rows are independent per-label yes-probabilities instead of distributions.

    Returns:
        ``(L,)`` (or ``(n, L)``): a distribution (single-label) or per-label probabilities.

    Raises:
        ValueError: Bad shapes, probabilities outside ``[0, 1]``, single-label rows not summing to 1,
            mismatched retrieval scores, an unknown method, or a non-positive temperature.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.3, 0.7]])
        >>> aggregate(p, np.array([0.8, 0.7]), temperature=0.05).round(3).tolist()  # w = (0.881, 0.119)
        [0.828, 0.172]
    """
    _check_method(method, get_args(AggregationMethod), "aggregation method")
    _check_temperature(temperature)
    p = _check_distributions(distributions, multi_label)
    if p.ndim == 3:
        scores = _check_scores(retrieval_scores, p.shape[:2])
        return np.stack(
            [
                _aggregate_one(p[i], None if scores is None else scores[i], method, temperature, multi_label)
                for i in range(p.shape[0])
            ]
        )  # (n, L)
    scores = _check_scores(retrieval_scores, p.shape[:1])
    return _aggregate_one(p, scores, method, temperature, multi_label)


def consistency(distributions: np.ndarray, multi_label: bool = False) -> ConsistencyStats:
    """Consistency of the neighbours' votes for one case.

    Args:
        distributions: ``(k, L)`` per-neighbour distributions (or per-label probabilities).
        multi_label: Compare predicted label sets (thresholded at 0.5) instead of argmax labels.

    Returns:
        The :class:`ConsistencyStats` of the case.

    Raises:
        ValueError: ``distributions`` is not a valid ``(k, L)`` array.

    Example:
        >>> consistency(np.array([[0.7, 0.3]])).consistent  # one neighbour is always consistent
        True
    """
    p = _check_distributions(distributions, multi_label)
    if p.ndim != 2:
        raise ValueError(
            f"consistency takes one case, shape (k, n_labels), got shape {p.shape}; loop over cases"
        )
    k, n_labels = p.shape
    if multi_label:
        sets = [predict_label_set(row) for row in p]
        votes = tuple(label_set_code(s) for s in sets)
        answers = sorted(set(votes))
        # Summed probability of each voted set under every neighbour's independent labels.
        support = {code: float(np.sum(_set_probability(p, label_set_from_code(code)))) for code in answers}
        n_answers_possible = 2**n_labels
    else:
        votes = tuple(int(v) for v in np.argmax(p, axis=1))
        answers = sorted(set(votes))
        summed = p.sum(axis=0)  # (L,)
        support = {label: float(summed[label]) for label in answers}
        n_answers_possible = n_labels
    counts = {a: votes.count(a) for a in answers}
    # Most votes, then largest summed probability, then smallest index/code.
    majority = min(answers, key=lambda a: (-counts[a], -support[a], a))
    shares = np.array([counts[a] / k for a in answers])
    max_entropy = np.log(min(k, n_answers_possible))
    entropy = float(-(shares * np.log(shares)).sum() / max_entropy) if max_entropy > 0 else 0.0
    return ConsistencyStats(
        consistent=len(answers) == 1,
        agreement=counts[majority] / k,
        vote_entropy=max(0.0, min(1.0, entropy)),  # clip float round-off only
        n_distinct=len(answers),
        votes=votes,
        majority_label=majority,
    )


def answer_support(
    distributions: np.ndarray,
    answer: int | Sequence[int],
    retrieval_scores: np.ndarray | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    multi_label: bool = False,
) -> tuple[float, float]:
    """How many neighbours, on their own, lead the reader to ``answer`` (the answer shown).

    Unlike :attr:`ConsistencyStats.agreement` (the share behind the *majority* answer), this is the
    support of the answer the system gives, which can differ from the majority under weighted
    aggregation: one confident top neighbour may outweigh three others. Abstaining on low support
    therefore abstains on the answer a clinician sees.

    Args:
        distributions: ``(k, L)`` per-neighbour distributions (or per-label probabilities).
        answer: The final answer: a label index, or (multi-label) a collection of label indices.
        retrieval_scores: ``(k,)`` retrieval scores for the weighted share; ``None`` = uniform.
        temperature: Softmax temperature of the retrieval weights (divides the scores).
        multi_label: Rows are per-label yes-probabilities; a neighbour supports the answer when its
            predicted label set equals it.

    Returns:
        ``(support, weighted_support)``: the unweighted share of neighbours whose own prediction is
        ``answer``, and the same share weighted by ``retrieval_weights(retrieval_scores, T)``.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
        >>> support, weighted = answer_support(p, 0, np.array([1.0, 0.8, 0.8, 0.8]), temperature=0.05)
        >>> (support, round(weighted, 3))  # 1 of 4 neighbours; but the top one weighs 0.948
        (0.25, 0.948)
    """
    _check_temperature(temperature)
    p = _check_distributions(distributions, multi_label)
    if p.ndim != 2:
        raise ValueError(f"answer_support takes one case, shape (k, n_labels), got shape {p.shape}")
    k = p.shape[0]
    if multi_label:
        target = label_set_code(answer if not isinstance(answer, (int, np.integer)) else [int(answer)])
        agrees = np.array([label_set_code(predict_label_set(row)) == target for row in p])  # (k,)
    else:
        if not isinstance(answer, (int, np.integer)):
            raise ValueError(f"answer {answer!r} is a label set, but the task is single-label; pass one label index")
        agrees = np.argmax(p, axis=1) == int(answer)  # (k,)
    scores = _check_scores(retrieval_scores, (k,))
    weights = np.full(k, 1.0 / k) if scores is None else retrieval_weights(scores, temperature)
    return float(agrees.mean()), float(weights[agrees].sum())


def rerank_scores(
    distributions: np.ndarray,
    retrieval_scores: np.ndarray | None,
    answer: int | Sequence[int],
    method: RerankMethod = "posterior",
    temperature: float = DEFAULT_TEMPERATURE,
    multi_label: bool = False,
) -> np.ndarray:
    """Score each neighbour for reranking, given the answer the system settled on.

    * ``"posterior"``: ``P(node i | answer) = w_i * r_i / sum_j w_j * r_j`` with
      ``w = retrieval_weights(retrieval_scores, T)`` (uniform if ``None``) and ``r_i`` the reader's
      probability of ``answer`` given neighbour ``i``; falls back to ``w`` if every ``r_i`` is 0.
    * ``"reader"``: ``r_i``.
    * ``"retrieval"``: ``w_i``.

    ``r_i`` is ``p_i[answer]`` for an int answer (multi-label: that label's yes-probability) and, for
    a multi-label answer given as a set of label indices, the probability of exactly that set,
    ``prod_l p_il^[l in set] (1 - p_il)^[l not in set]``.

    Args:
        distributions: ``(k, L)`` per-neighbour distributions.
        retrieval_scores: ``(k,)`` retrieval scores, or ``None``.
        answer: Label index, or (multi-label only) a collection of label indices.
        method: One of ``"posterior"``, ``"reader"``, ``"retrieval"``.
        temperature: Softmax temperature for the retrieval weights (divides the scores).
        multi_label: Rows are per-label yes-probabilities.

    Returns:
        ``(k,)`` scores; higher is better.

    Raises:
        ValueError: Bad shapes or values, an answer index out of range, a label set for a
            single-label task, or an unknown method.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.3, 0.7]])
        >>> rerank_scores(p, None, answer=1).round(3).tolist()  # (0.5*0.1, 0.5*0.7) / 0.4
        [0.125, 0.875]
    """
    _check_method(method, get_args(RerankMethod), "rerank method")
    _check_temperature(temperature)
    p = _check_distributions(distributions, multi_label)
    if p.ndim != 2:
        raise ValueError(f"rerank_scores takes one case, shape (k, n_labels), got shape {p.shape}")
    k, n_labels = p.shape
    scores = _check_scores(retrieval_scores, (k,))
    weights = np.full(k, 1.0 / k) if scores is None else retrieval_weights(scores, temperature)
    if method == "retrieval":
        return weights
    reader = _answer_probability(p, answer, multi_label)  # (k,)
    if method == "reader":
        return reader
    joint = weights * reader
    total = joint.sum()
    return joint / total if total > 0 else weights


def label_set_probability(p: np.ndarray, chosen: Sequence[int]) -> float:
    """Probability of exactly the label set ``chosen`` under independent per-label ``P(yes)`` ``p`` ``(L,)``."""
    return float(_set_probability(np.asarray(p, dtype=np.float64)[None, :], chosen)[0])  # (1, L) -> (1,)


def neighbour_prediction(p: np.ndarray, labels: Sequence[str], multi_label: bool = False) -> tuple[str | list[str], float]:
    """One neighbour's answer from its ``(L,)`` distribution and the reader's probability of it.

    Single-label: the argmax label's name and its probability. Multi-label: the names of the labels
    with ``P(yes) >= MULTI_LABEL_THRESHOLD`` and the probability of exactly that set.

    Example:
        >>> neighbour_prediction(np.array([0.3, 0.7]), ("no", "yes"))
        ('yes', 0.7)
    """
    if multi_label:
        chosen = predict_label_set(p)
        return [labels[i] for i in chosen], label_set_probability(p, chosen)
    index = predict_label(p)
    return labels[index], float(np.asarray(p)[index])


def _aggregate_one(
    p: np.ndarray,
    scores: np.ndarray | None,
    method: str,
    temperature: float,
    multi_label: bool,
) -> np.ndarray:
    """Aggregate one ``(k, L)`` stack (already validated)."""
    k = p.shape[0]
    if method == "weighted":
        w = np.full(k, 1.0 / k) if scores is None else retrieval_weights(scores, temperature)
        return w @ p  # (k,) @ (k, L) -> (L,)
    if method == "majority":
        return _majority(p, multi_label)
    # most_confident
    confidence = np.maximum(p, 1.0 - p).mean(axis=1) if multi_label else p.max(axis=1)  # (k,)
    tie = np.zeros(k) if scores is None else scores
    # lexsort sorts by the last key first: confidence, then retrieval score, then position.
    best = np.lexsort((np.arange(k), -tie, -confidence))[0]
    return p[best].copy()


def _majority(p: np.ndarray, multi_label: bool) -> np.ndarray:
    k, n_labels = p.shape
    if multi_label:
        yes = (p >= MULTI_LABEL_THRESHOLD).sum(axis=0)  # (L,) neighbours predicting each label
        shares = yes / k
        tied = 2 * yes == k
        mean = p.mean(axis=0)
        nudge = np.where(mean >= MULTI_LABEL_THRESHOLD, _TIE_BREAK, -_TIE_BREAK)
        return np.where(tied, shares + nudge, shares)
    votes = np.argmax(p, axis=1)  # (k,)
    counts = np.bincount(votes, minlength=n_labels).astype(np.float64)  # (L,)
    top = np.flatnonzero(counts == counts.max())
    if len(top) == 1:
        return counts / k
    summed = p.sum(axis=0)  # (L,)
    winner = top[np.argmax(summed[top])]  # argmax takes the smallest index among equal sums
    counts[winner] += _TIE_BREAK
    return counts / (k + _TIE_BREAK)


def _set_probability(p: np.ndarray, label_set: Sequence[int]) -> np.ndarray:
    """``(k,)`` probability of exactly ``label_set`` under each row's independent labels."""
    mask = np.zeros(p.shape[1], dtype=bool)
    mask[list(label_set)] = True
    return np.where(mask, p, 1.0 - p).prod(axis=1)


def _answer_probability(p: np.ndarray, answer: int | Sequence[int], multi_label: bool) -> np.ndarray:
    n_labels = p.shape[1]
    if isinstance(answer, (int, np.integer)):
        if not 0 <= int(answer) < n_labels:
            raise ValueError(f"answer index {int(answer)} is out of range for {n_labels} labels")
        return p[:, int(answer)].copy()
    if not multi_label:
        raise ValueError(
            f"answer {list(answer)!r} is a label set, but the task is single-label; pass one label index"
        )
    indices = [int(i) for i in answer]
    bad = [i for i in indices if not 0 <= i < n_labels]
    if bad:
        raise ValueError(f"answer label indices {bad} are out of range for {n_labels} labels")
    return _set_probability(p, indices)


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_method(method: str, allowed: tuple[str, ...], what: str) -> None:
    if method not in allowed:
        raise ValueError(f"unknown {what} {method!r}; choose one of {list(allowed)}")


def _check_distributions(distributions: np.ndarray, multi_label: bool) -> np.ndarray:
    p = np.asarray(distributions, dtype=np.float64)
    if p.ndim not in (2, 3) or 0 in p.shape:
        raise ValueError(
            "distributions must have shape (k, n_labels) or (n, k, n_labels) with no empty axis, "
            f"got shape {p.shape}"
        )
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(
            "distributions must hold probabilities in [0, 1] (exponentiate log-probabilities first); "
            f"got values in [{np.nanmin(p)}, {np.nanmax(p)}]"
        )
    if not multi_label:
        sums = p.sum(axis=-1)
        bad = np.argwhere(np.abs(sums - 1.0) > _SUM_TOLERANCE)
        if len(bad):
            where = tuple(int(i) for i in bad[0])
            raise ValueError(
                f"single-label distribution at index {where} sums to {float(sums[where]):.6f}, not 1; "
                "softmax over the labels, or pass multi_label=True for per-label probabilities"
            )
    return p


def _check_scores(scores: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if scores is None:
        return None
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != tuple(shape):
        raise ValueError(
            f"retrieval scores have shape {s.shape} but the distributions need {tuple(shape)} "
            "(one score per neighbour)"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError(f"retrieval scores contain NaN or inf: {s.tolist()}; pass finite scores")
    return s
