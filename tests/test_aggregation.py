"""Aggregation, consistency and rerank arithmetic, checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llama_index_lvlm_retriever.aggregation import (
    DEFAULT_TEMPERATURE,
    ConsistencyStats,
    aggregate,
    consistency,
    label_set_code,
    label_set_from_code,
    predict_label,
    predict_label_set,
    rerank_scores,
    retrieval_weights,
)

E2 = math.exp(2.0)


# --------------------------------------------------------------------------- retrieval_weights


def test_retrieval_weights_softmax_over_scaled_scores() -> None:
    # exp(0) : exp(ln 3) = 1 : 3 -> (0.25, 0.75)
    np.testing.assert_allclose(retrieval_weights(np.array([0.0, math.log(3.0)]), 1.0), [0.25, 0.75])
    # cosines 0.8 and 0.7 at T = 0.05: gap 0.1 / 0.05 = 2 -> (e^2, 1) / (e^2 + 1)
    np.testing.assert_allclose(
        retrieval_weights(np.array([0.8, 0.7]), 0.05), [E2 / (E2 + 1), 1 / (E2 + 1)]
    )
    # the reference code's T = 1 gives near-uniform weights on the same cosines: e^0.1 / (e^0.1 + 1)
    assert retrieval_weights(np.array([0.8, 0.7]), 1.0)[0] == pytest.approx(0.52498, abs=1e-5)


def test_retrieval_weights_equal_scores_and_batches() -> None:
    np.testing.assert_allclose(retrieval_weights(np.full(4, 0.3)), [0.25] * 4)
    # huge scores / tiny T would overflow a naive exp
    np.testing.assert_allclose(retrieval_weights(np.array([1000.0, 1000.0]), 1e-3), [0.5, 0.5])
    batch = retrieval_weights(np.array([[0.0, math.log(3.0)], [1.0, 1.0]]), 1.0)
    np.testing.assert_allclose(batch, [[0.25, 0.75], [0.5, 0.5]])
    assert DEFAULT_TEMPERATURE == 0.05


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_retrieval_weights_rejects_bad_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        retrieval_weights(np.array([0.1, 0.2]), temperature)


def test_retrieval_weights_rejects_bad_scores() -> None:
    with pytest.raises(ValueError, match=r"shape \(k,\) or \(n, k\)"):
        retrieval_weights(np.zeros(0))
    with pytest.raises(ValueError, match="NaN or inf"):
        retrieval_weights(np.array([0.1, float("nan")]))


# --------------------------------------------------------------------------- aggregate


P2 = np.array([[0.9, 0.1], [0.3, 0.7]])


def test_weighted_uniform_and_scored() -> None:
    # no scores: plain mean ((0.9 + 0.3) / 2, (0.1 + 0.7) / 2)
    np.testing.assert_allclose(aggregate(P2, None), [0.6, 0.4])
    # w = (e^2, 1) / (e^2 + 1): first label = (0.9 e^2 + 0.3) / (e^2 + 1)
    expected0 = (0.9 * E2 + 0.3) / (E2 + 1)
    np.testing.assert_allclose(aggregate(P2, np.array([0.8, 0.7])), [expected0, 1 - expected0])
    # all-equal scores reduce to the mean
    np.testing.assert_allclose(aggregate(P2, np.array([0.5, 0.5])), [0.6, 0.4])


def test_majority_vote_shares_without_tie() -> None:
    p = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
    # votes 0, 0, 2 -> shares (2/3, 0, 1/3)
    np.testing.assert_allclose(aggregate(p, None, "majority"), [2 / 3, 0.0, 1 / 3])


def test_majority_tie_broken_by_summed_probability() -> None:
    p = np.array([[0.6, 0.4], [0.1, 0.9]])
    # votes 0 and 1 tie 1:1; summed probabilities (0.7, 1.3) -> label 1 wins
    out = aggregate(p, np.array([0.9, 0.1]), "majority")  # retrieval scores do not matter
    assert predict_label(out) == 1
    np.testing.assert_allclose(out, [0.5, 0.5], atol=1e-5)
    assert out.sum() == pytest.approx(1.0)
    # the mirror image: summed (1.3, 0.7) -> label 0
    assert predict_label(aggregate(p[:, ::-1], None, "majority")) == 0


def test_most_confident_picks_the_surest_neighbour() -> None:
    p = np.array([[0.6, 0.4], [0.1, 0.9]])  # max-probs 0.6, 0.9 -> neighbour 1
    np.testing.assert_allclose(aggregate(p, None, "most_confident"), [0.1, 0.9])
    tied = np.array([[0.8, 0.2], [0.2, 0.8]])  # both 0.8 sure
    np.testing.assert_allclose(aggregate(tied, None, "most_confident"), [0.8, 0.2])  # earlier one
    # the better retrieval score breaks the tie
    np.testing.assert_allclose(aggregate(tied, np.array([0.5, 0.9]), "most_confident"), [0.2, 0.8])


@pytest.mark.parametrize("method", ["weighted", "majority", "most_confident"])
def test_one_neighbour_returns_its_distribution_or_vote(method: str) -> None:
    p = np.array([[0.3, 0.7]])
    expected = [0.0, 1.0] if method == "majority" else [0.3, 0.7]
    np.testing.assert_allclose(aggregate(p, np.array([0.42]), method), expected)


@pytest.mark.parametrize("method", ["weighted", "majority", "most_confident"])
def test_batched_shape_matches_per_case(method: str) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3, 4))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # (n, k, L)
    scores = rng.uniform(0.2, 0.9, size=(5, 3))
    out = aggregate(p, scores, method)
    assert out.shape == (5, 4)
    for i in range(5):
        np.testing.assert_allclose(out[i], aggregate(p[i], scores[i], method))


def test_multi_label_aggregation() -> None:
    p = np.array([[0.9, 0.2, 0.6], [0.8, 0.1, 0.4], [0.7, 0.3, 0.55]])
    # weighted, uniform: per-label means (2.4/3, 0.6/3, 1.55/3)
    np.testing.assert_allclose(aggregate(p, None, multi_label=True), [0.8, 0.2, 1.55 / 3])
    # majority: yes-votes per label (3, 0, 2) of 3
    np.testing.assert_allclose(aggregate(p, None, "majority", multi_label=True), [1.0, 0.0, 2 / 3])
    # most confident: mean max(p, 1-p) = (0.9+0.8+0.6)/3=0.767, (0.8+0.9+0.6)/3=0.767, (0.7+0.7+0.55)/3
    # rows 0 and 1 tie -> the earlier row
    np.testing.assert_allclose(aggregate(p, None, "most_confident", multi_label=True), p[0])
    # multi-label rows need not sum to 1, single-label rows must
    with pytest.raises(ValueError, match=r"sums to 1\.7"):
        aggregate(p, None)


def test_multi_label_majority_tie_uses_mean_probability() -> None:
    # label 0: votes yes (0.9), no (0.3) -> tie; mean 0.6 >= 0.5 -> predicted
    # label 1: votes yes (0.5), no (0.1) -> tie; mean 0.3 < 0.5 -> not predicted
    p = np.array([[0.9, 0.5], [0.3, 0.1]])
    out = aggregate(p, None, "majority", multi_label=True)
    np.testing.assert_allclose(out, [0.5, 0.5], atol=1e-5)
    assert predict_label_set(out) == (0,)


def test_aggregate_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown aggregation method 'mean'"):
        aggregate(P2, None, "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be"):
        aggregate(P2, None, temperature=0.0)
    with pytest.raises(ValueError, match=r"got shape \(2,\)"):
        aggregate(np.array([0.5, 0.5]), None)
    with pytest.raises(ValueError, match=r"no empty axis, got shape \(0, 2\)"):
        aggregate(np.zeros((0, 2)), None)
    with pytest.raises(ValueError, match="exponentiate log-probabilities"):
        aggregate(np.log(P2), None)
    with pytest.raises(ValueError, match=r"index \(1,\) sums to 0\.900000"):
        aggregate(np.array([[0.5, 0.5], [0.5, 0.4]]), None)
    with pytest.raises(ValueError, match=r"scores have shape \(3,\) but the distributions need \(2,\)"):
        aggregate(P2, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"need \(1, 2\)"):
        aggregate(P2[None], np.array([0.1, 0.2]))


# --------------------------------------------------------------------------- consistency


def test_consistency_all_agree() -> None:
    s = consistency(np.array([[0.9, 0.1], [0.6, 0.4], [0.51, 0.49]]))
    assert s == ConsistencyStats(
        consistent=True, agreement=1.0, vote_entropy=0.0, n_distinct=1, votes=(0, 0, 0), majority_label=0
    )


def test_consistency_split_vote() -> None:
    p = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
    s = consistency(p)
    # votes (0, 0, 2): shares (2/3, 1/3); H = -(2/3 ln 2/3 + 1/3 ln 1/3) = 0.636514;
    # normalised by ln(min(k=3, L=3)) = ln 3 = 1.098612 -> 0.579380
    assert s.votes == (0, 0, 2)
    assert (s.consistent, s.n_distinct, s.majority_label) == (False, 2, 0)
    assert s.agreement == pytest.approx(2 / 3)
    assert s.vote_entropy == pytest.approx(0.636514 / 1.098612, abs=1e-6)
    # with two labels the maximum is ln(min(3, 2)) = ln 2 -> 0.636514 / 0.693147 = 0.918296
    s2 = consistency(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]))
    assert s2.vote_entropy == pytest.approx(0.918296, abs=1e-6)


def test_consistency_tie_and_one_neighbour() -> None:
    s = consistency(np.array([[0.6, 0.4], [0.1, 0.9]]))
    # 1:1 tie, summed (0.7, 1.3) -> majority 1; shares (1/2, 1/2) -> entropy ln 2 / ln 2 = 1
    assert (s.majority_label, s.agreement, s.n_distinct, s.consistent) == (1, 0.5, 2, False)
    assert s.vote_entropy == pytest.approx(1.0)
    # a full tie (equal sums too) goes to the smaller index
    assert consistency(np.array([[0.6, 0.4], [0.4, 0.6]])).majority_label == 0
    one = consistency(np.array([[0.2, 0.8]]))
    assert (one.consistent, one.agreement, one.vote_entropy, one.n_distinct, one.votes) == (
        True, 1.0, 0.0, 1, (1,)
    )


def test_consistency_multi_label_compares_sets() -> None:
    p = np.array([[0.9, 0.2, 0.6], [0.8, 0.1, 0.4], [0.7, 0.3, 0.55]])
    s = consistency(p, multi_label=True)
    # sets {0, 2}, {0}, {0, 2} -> codes 1 + 4 = 5, 1, 5
    assert s.votes == (5, 1, 5)
    assert (s.majority_label, s.n_distinct, s.consistent) == (5, 2, False)
    assert s.agreement == pytest.approx(2 / 3)
    # normalised by ln(min(k=3, 2^3 sets)) = ln 3
    assert s.vote_entropy == pytest.approx(0.636514 / 1.098612, abs=1e-6)
    assert label_set_from_code(s.majority_label) == (0, 2)


def test_consistency_multi_label_tie_uses_summed_set_probability() -> None:
    # row 0 -> {0}; row 1 -> {1}. P({0}) per row: 0.9*0.8 = 0.72, 0.4*0.4 = 0.16 -> 0.88
    # P({1}) per row: 0.1*0.2 = 0.02, 0.6*0.6 = 0.36 -> 0.38, so {0} (code 1) wins the 1:1 tie
    s = consistency(np.array([[0.9, 0.2], [0.4, 0.6]]), multi_label=True)
    assert s.votes == (1, 2)
    assert s.majority_label == 1
    # the empty set is an answer too (code 0)
    assert consistency(np.array([[0.1, 0.2]]), multi_label=True).votes == (0,)


def test_consistency_rejects_batches() -> None:
    with pytest.raises(ValueError, match="consistency takes one case"):
        consistency(np.full((2, 3, 2), 0.5))


def test_label_set_codes_round_trip() -> None:
    assert label_set_code([0, 2]) == 5
    assert label_set_from_code(5) == (0, 2)
    assert label_set_from_code(label_set_code([])) == ()
    with pytest.raises(ValueError, match="label indices must be >= 0"):
        label_set_code([-1])


# --------------------------------------------------------------------------- rerank_scores


def test_rerank_scores_methods() -> None:
    # posterior with uniform prior: (0.5 * 0.1, 0.5 * 0.7) / 0.4 = (0.125, 0.875)
    np.testing.assert_allclose(rerank_scores(P2, None, answer=1), [0.125, 0.875])
    np.testing.assert_allclose(rerank_scores(P2, None, answer=1, method="reader"), [0.1, 0.7])
    scores = np.array([0.8, 0.7])
    w = np.array([E2, 1.0]) / (E2 + 1)
    np.testing.assert_allclose(rerank_scores(P2, scores, 0, method="retrieval"), w)
    # posterior for answer 0: (w0 * 0.9, w1 * 0.3) normalised = (0.9 e^2, 0.3) / (0.9 e^2 + 0.3)
    np.testing.assert_allclose(
        rerank_scores(P2, scores, 0), np.array([0.9 * E2, 0.3]) / (0.9 * E2 + 0.3)
    )


def test_rerank_scores_zero_evidence_falls_back_to_prior() -> None:
    p = np.array([[1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(rerank_scores(p, np.array([0.8, 0.7]), answer=1), [E2 / (E2 + 1), 1 / (E2 + 1)])


def test_rerank_scores_multi_label_sets() -> None:
    p = np.array([[0.9, 0.2], [0.4, 0.6]])
    # P({0}) = (0.9*0.8, 0.4*0.4) = (0.72, 0.16) -> /0.88
    np.testing.assert_allclose(
        rerank_scores(p, None, answer=[0], multi_label=True), [0.72 / 0.88, 0.16 / 0.88]
    )
    # an int answer is that label's yes-probability
    np.testing.assert_allclose(rerank_scores(p, None, 1, "reader", multi_label=True), [0.2, 0.6])


def test_rerank_scores_rejects_bad_answers() -> None:
    with pytest.raises(ValueError, match="answer index 2 is out of range for 2 labels"):
        rerank_scores(P2, None, answer=2)
    with pytest.raises(ValueError, match="task is single-label"):
        rerank_scores(P2, None, answer=[0, 1])
    with pytest.raises(ValueError, match=r"indices \[5\] are out of range"):
        rerank_scores(P2, None, answer=[0, 5], multi_label=True)
    with pytest.raises(ValueError, match="unknown rerank method 'bm25'"):
        rerank_scores(P2, None, 0, method="bm25")  # type: ignore[arg-type]
