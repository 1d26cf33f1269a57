"""PlaceboQueryHead, top_k_overlap and calibrate_placebo.

World for calibration: a knowledge base of 300 random 16-d unit vectors (seed 0) behind a stub
embedding that returns a stored vector per image path, and 100 random unit query vectors. With
k = 5 an overlap is a multiple of 1 / 500, so the targets 0.9 / 0.7 / 0.5 are reachable to well
within the 0.02 asked of them (the search's own tolerance is 0.005). Measured with seed 0: scales
0.0875 / 0.2875 / 0.5375 give overlaps 0.896 / 0.696 / 0.498; the target 0.0 cannot be reached
(random lists still share ~k/300) and the search stops at scale 102.4, overlap 0.01.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from llama_index.core.embeddings import MultiModalEmbedding

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.evaluation.placebo import (
    PlaceboCalibration,
    calibrate_placebo,
    top_k_overlap,
)
from llama_index_lvlm_retriever.heads import PlaceboQueryHead, QueryHead, load_head
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever

N_KB, N_QUERIES, DIM, K = 300, 100, 16, 5


class StoredEmbedding(MultiModalEmbedding):
    """Image path -> a stored vector (the files need not exist)."""

    model_name: str = "stored-stub"
    vectors: dict[str, list[float]] = {}

    @classmethod
    def class_name(cls) -> str:
        return "StoredEmbedding"

    def embed_images(self, images: list[Any]) -> np.ndarray:
        return np.array([self.vectors[str(image)] for image in images], dtype=np.float32)

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        return self.vectors[str(img_file_path)]

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._get_image_embedding(img_file_path)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.vectors[text]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    kb_vectors, query_vectors = _unit_rows(rng, N_KB, DIM), _unit_rows(rng, N_QUERIES, DIM)
    images = [f"query{i}.png" for i in range(N_QUERIES)]
    stored = {f"kb{j}.png": kb_vectors[j].tolist() for j in range(N_KB)}
    stored.update({path: query_vectors[i].tolist() for i, path in enumerate(images)})
    items = [KBItem(id=f"kb{j}", image_path=f"kb{j}.png", text=f"caption {j}") for j in range(N_KB)]
    kb = KnowledgeBase(StoredEmbedding(vectors=stored), items, kb_vectors, kb_vectors,
                       image_hashes=[f"hash{j}" for j in range(N_KB)])
    retriever = LVLMAwareRetriever(kb, k_image=K, k_text=0)
    return {"kb": kb, "retriever": retriever, "images": images, "queries": retriever.embed_queries(images)}


def _ids(kb: KnowledgeBase, head: QueryHead | None, queries: np.ndarray, k: int = K) -> list[list[str]]:
    hits = LVLMAwareRetriever(kb, image_head=head, k_image=k, k_text=0).search_heads(queries, k_image=k, k_text=0)
    return [[hit.item.id for hit in row] for row in hits["image"]]


# ---------------------------------------------------------------------------- PlaceboQueryHead


def test_zero_scale_is_the_normalised_input() -> None:
    e = np.random.default_rng(1).standard_normal((5, 8)) * 3.0
    head = PlaceboQueryHead(dim=8, noise_scale=0.0, seed=7)
    expected = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_array_equal(head.encode(e), expected)
    np.testing.assert_array_equal(head.encode(e[2]), expected[2])  # (dim,) in, (dim,) out
    assert head.is_identity and not PlaceboQueryHead(dim=8, noise_scale=0.1).is_identity


def test_noise_is_per_query_and_batch_independent() -> None:
    e = _unit_rows(np.random.default_rng(2), 12, 16)
    head = PlaceboQueryHead(dim=16, noise_scale=0.8, seed=3)
    batch = head.encode(e)
    assert batch.dtype == np.float32 and batch.shape == (12, 16)
    np.testing.assert_array_equal(batch, np.stack([head.encode(row) for row in e]))
    np.testing.assert_array_equal(batch, np.stack([head.encode(e[i : i + 1])[0] for i in range(12)]))
    order = np.random.default_rng(4).permutation(12)
    permuted = head.encode(e[order])
    np.testing.assert_array_equal(permuted[np.argsort(order)], batch)
    # The noise depends on the query's direction only: a rescaled query gets the same vector.
    np.testing.assert_allclose(head.encode(5.0 * e), batch, atol=1e-6)
    # The tensor path is the same map.
    np.testing.assert_allclose(head(torch.from_numpy(e).float()).numpy(), batch, atol=1e-6)
    # And the noise really moved the queries: cosine with the input ~ 1/sqrt(1.64) = 0.78, far from 1.
    assert float(np.max(np.sum(batch * e, axis=1))) < 0.99


def test_seed_changes_the_noise_and_norm_is_one() -> None:
    e = _unit_rows(np.random.default_rng(5), 20, 16)
    a = PlaceboQueryHead(16, 1.0, seed=0).encode(e)
    again = PlaceboQueryHead(16, 1.0, seed=0).encode(e)
    b = PlaceboQueryHead(16, 1.0, seed=1).encode(e)
    np.testing.assert_array_equal(a, again)
    # Two independent noises at scale 1: rows differ by ~sqrt(2) * |z| / |e + z| ~ 1 in norm.
    assert float(np.min(np.linalg.norm(a - b, axis=1))) > 0.1
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("scale", [0.25, 0.5, 1.0, 2.0])
def test_cosine_with_the_input_is_one_over_sqrt_one_plus_s_squared(scale: float) -> None:
    # q = (u + s z) / |u + s z| with |u| = 1, z ~ N(0, I/d): u.z ~ N(0, 1/d) and |z|^2 = 1 +- sqrt(2/d),
    # so cos(q, u) = (1 + s u.z) / sqrt(1 + 2 s u.z + s^2 |z|^2) -> 1 / sqrt(1 + s^2) as d grows.
    # At d = 256 the per-query spread is O(s / sqrt(d)) (measured sd 0.003 / 0.009 / 0.025 / 0.044 for
    # s = 0.25 / 0.5 / 1 / 2), so the mean of 200 queries has a standard error <= 0.0032, and the
    # second-order bias is O(s^2 / d) <= 0.004 (measured -0.0002 / -0.0005 / -0.0011 / -0.0010).
    # Tolerance 0.015 = 3 standard errors + the bias bound + slack.
    e = _unit_rows(np.random.default_rng(6), 200, 256)
    out = PlaceboQueryHead(256, scale, seed=0).encode(e).astype(np.float64)
    cosine = np.sum(out * e, axis=1)
    assert float(np.mean(cosine)) == pytest.approx(1.0 / np.sqrt(1.0 + scale**2), abs=0.015)


@pytest.mark.parametrize("scale", [-0.1, float("nan"), float("inf"), -float("inf")])
def test_bad_scale_raises(scale: float) -> None:
    with pytest.raises(ValueError, match="noise_scale must be a finite number >= 0"):
        PlaceboQueryHead(dim=4, noise_scale=scale)


def test_wrong_dimension_raises() -> None:
    with pytest.raises(ValueError, match=r"expects embeddings of shape \(n, 4\), got \(2, 3\)"):
        PlaceboQueryHead(dim=4, noise_scale=0.5).encode(np.ones((2, 3)))


def test_save_and_load_round_trip_through_the_one_loader(tmp_path) -> None:
    head = PlaceboQueryHead(dim=16, noise_scale=0.25, seed=9)
    head.save_pretrained(tmp_path / "placebo")
    loaded = load_head(tmp_path / "placebo")
    assert isinstance(loaded, PlaceboQueryHead)
    assert (loaded.dim, loaded.noise_scale, loaded.seed) == (16, 0.25, 9)
    e = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.encode(e), head.encode(e))
    # QueryHead.from_pretrained dispatches on the saved class name too.
    assert isinstance(QueryHead.from_pretrained(tmp_path / "placebo"), PlaceboQueryHead)


# ---------------------------------------------------------------------------- top_k_overlap


def test_top_k_overlap_by_hand() -> None:
    first = [["a", "b", "c", "d"], ["e", "f", "g", "h"], ["i", "j", "k", "l"]]
    second = [["d", "c", "b", "a"], ["f", "x", "y", "e"], ["m", "n", "o", "p"]]
    # 4/4 (order does not matter), 2/4, 0/4 -> mean 0.5
    assert top_k_overlap(first, second) == pytest.approx(0.5)
    # Lists of unequal length: shares are of the first list's length: |{a, b}| / 3 and |{e}| / 1.
    assert top_k_overlap([["a", "b", "z"], ["e"]], [["a", "b"], ["e", "f", "g"]]) == pytest.approx((2 / 3 + 1) / 2)
    assert top_k_overlap([["a"], ["b"]], [["a"], ["c"]]) == 0.5
    # Not symmetric with unequal lengths: 2/2 and 1/3 the other way round.
    assert top_k_overlap([["a", "b"], ["e", "f", "g"]], [["a", "b", "z"], ["e"]]) == pytest.approx((1 + 1 / 3) / 2)


def test_top_k_overlap_errors() -> None:
    with pytest.raises(ValueError, match="got 2 and 1 ranked lists"):
        top_k_overlap([["a"], ["b"]], [["a"]])
    with pytest.raises(ValueError, match="needs at least one query"):
        top_k_overlap([], [])


# ---------------------------------------------------------------------------- calibrate_placebo


@pytest.mark.parametrize("target", [0.9, 0.7, 0.5])
def test_calibration_hits_the_target(world: dict[str, Any], target: float) -> None:
    kb, queries = world["kb"], world["queries"]
    head, info = calibrate_placebo(world["retriever"], queries, target, k=K, seed=0)
    assert isinstance(info, PlaceboCalibration)
    assert (head.noise_scale, head.seed, head.dim) == (info.noise_scale, 0, DIM)
    measured = top_k_overlap(_ids(kb, None, queries), _ids(kb, head, queries))
    assert measured == pytest.approx(target, abs=0.02)
    assert measured == pytest.approx(info.achieved_overlap, abs=1e-12)  # the record is what the head does
    assert info.to_dict() == {"noise_scale": info.noise_scale, "target_overlap": target,
                              "achieved_overlap": info.achieved_overlap, "seed": 0, "k": K, "n_queries": N_QUERIES}


def test_less_overlap_needs_more_noise(world: dict[str, Any]) -> None:
    scales = [calibrate_placebo(world["retriever"], world["queries"], t, k=K)[1].noise_scale for t in (0.9, 0.7, 0.5)]
    assert 0.0 < scales[0] < scales[1] < scales[2]


def test_target_one_is_standard_rag(world: dict[str, Any]) -> None:
    kb, queries = world["kb"], world["queries"]
    head, info = calibrate_placebo(world["retriever"], queries, 1.0, k=K)
    assert (info.noise_scale, info.achieved_overlap) == (0.0, 1.0)
    assert _ids(kb, head, queries) == _ids(kb, None, queries)


@pytest.mark.parametrize("target", [-0.01, 1.01])
def test_target_out_of_range_raises(world: dict[str, Any], target: float) -> None:
    with pytest.raises(ValueError, match=r"target_overlap must be in \[0, 1\]"):
        calibrate_placebo(world["retriever"], world["queries"], target, k=K)


def test_no_queries_raises(world: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"needs query embeddings of shape \(n>0, dim\)"):
        calibrate_placebo(world["retriever"], np.zeros((0, DIM)), 0.5, k=K)


def test_placebo_plugs_into_the_retriever(world: dict[str, Any]) -> None:
    kb, images, queries = world["kb"], world["images"], world["queries"]
    head, _ = calibrate_placebo(world["retriever"], queries, 0.7, k=K, seed=0)
    placebo = LVLMAwareRetriever(kb, image_head=head, k_image=K, k_text=0)
    nodes = placebo.retrieve_batch(images[:10])
    assert [[n.node.node_id for n in row] for row in nodes] == _ids(kb, head, queries[:10])
    # Batching does not change a query's neighbours: query 3 alone and inside a reversed batch.
    alone = placebo.retrieve_batch([images[3]])[0]
    reversed_batch = placebo.retrieve_batch(images[:10][::-1])
    assert [n.node.node_id for n in alone] == [n.node.node_id for n in nodes[3]]
    assert [n.node.node_id for n in reversed_batch[6]] == [n.node.node_id for n in nodes[3]]
    # And the placebo does move lists: some query's top-5 differs from standard RAG's.
    standard = LVLMAwareRetriever(kb, k_image=K, k_text=0).retrieve_batch(images[:10])
    assert any(
        [n.node.node_id for n in a] != [n.node.node_id for n in b] for a, b in zip(nodes, standard)
    )


def test_exclusions_are_applied_while_calibrating(world: dict[str, Any]) -> None:
    kb, queries = world["kb"], world["queries"]
    # Exclude each query's own nearest item (as evaluation excludes a case's own pair): the overlap
    # the calibration reports is the one measured on the lists without it.
    nearest = [{row[0]} for row in _ids(kb, None, queries)]

    def ids(head: QueryHead | None) -> list[list[str]]:
        hits = LVLMAwareRetriever(kb, image_head=head, k_image=K, k_text=0).search_heads(
            queries, k_image=K, k_text=0, exclude_ids=nearest
        )["image"]
        return [[h.item.id for h in row] for row in hits]

    head, info = calibrate_placebo(world["retriever"], queries, 0.7, k=K, exclude_ids=nearest)
    assert info.achieved_overlap == pytest.approx(0.7, abs=0.02)
    assert top_k_overlap(ids(None), ids(head)) == pytest.approx(info.achieved_overlap, abs=1e-12)
    assert all(next(iter(skip)) not in row for skip, row in zip(nearest, ids(head)))
