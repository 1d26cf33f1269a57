from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from llama_index_lvlm_retriever.heads import (
    CONFIG_NAME,
    QueryHead,
    QueryHeadConfig,
)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def embeddings() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


@pytest.mark.parametrize("kind", ["identity", "linear", "mlp"])
def test_fresh_head_is_the_identity(kind: str, embeddings: np.ndarray) -> None:
    head = QueryHead(QueryHeadConfig(dim=4, kind=kind, alpha=0.4))
    np.testing.assert_allclose(head.encode(embeddings), _unit_rows(embeddings), atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_fresh_head_with_extra_outputs_zero_pads(kind: str, embeddings: np.ndarray) -> None:
    head = QueryHead(QueryHeadConfig(dim=4, kind=kind, out_dim=6))
    out = head.encode(embeddings)
    assert out.shape == (5, 6)
    np.testing.assert_allclose(out[:, :4], _unit_rows(embeddings), atol=1e-6)
    np.testing.assert_allclose(out[:, 4:], 0.0, atol=1e-7)


def test_identity_classmethod_has_no_parameters() -> None:
    head = QueryHead.identity(3)
    assert head.is_identity and head.dim == head.out_dim == 3
    assert sum(p.numel() for p in head.parameters()) == 0


def test_blend_matches_hand_computation() -> None:
    # A linear head that swaps the two coordinates: e = (1, 0) -> h(e) = (0, 1).
    # q = normalize(0.85 * (1, 0) + 0.15 * (0, 1)) = (0.85, 0.15) / sqrt(0.745)
    #   = (0.984784, 0.173785)
    head = QueryHead(QueryHeadConfig(dim=2, kind="linear", alpha=0.15))
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    # The frozen input is normalised first: (5, 0) acts like (1, 0).
    out = head.encode(np.array([5.0, 0.0]))
    norm = math.sqrt(0.85**2 + 0.15**2)
    np.testing.assert_allclose(out, [0.85 / norm, 0.15 / norm], atol=1e-6)
    # alpha = 0.5 gives the bisector (1/sqrt 2, 1/sqrt 2).
    half = QueryHead(QueryHeadConfig(dim=2, kind="linear", alpha=0.5))
    half.load_state_dict(head.state_dict())
    np.testing.assert_allclose(half.encode(np.array([1.0, 0.0])), [2**-0.5, 2**-0.5], atol=1e-6)


def test_encode_shapes_dtype_and_training_flag(embeddings: np.ndarray) -> None:
    head = QueryHead(QueryHeadConfig(dim=4, kind="mlp", dropout=0.5))
    head.train()
    single = head.encode(embeddings[0].astype(np.float64))
    batch = head.encode(embeddings)
    assert single.shape == (4,) and single.dtype == np.float32
    assert batch.shape == (5, 4) and batch.dtype == np.float32
    assert head.training, "encode must restore the training flag"
    # Dropout is off in encode, so the output is deterministic.
    np.testing.assert_array_equal(head.encode(embeddings), batch)


def test_gradients_reach_the_trainable_layer(embeddings: np.ndarray) -> None:
    head = QueryHead(QueryHeadConfig(dim=4, kind="mlp"))
    target = torch.tensor([1.0, 0.0, 0.0, 0.0])
    loss = -(head(torch.from_numpy(embeddings)) @ target).sum()
    loss.backward()
    assert head.fc2.weight.grad is not None and head.fc2.weight.grad.abs().sum() > 0


def test_forward_rejects_wrong_dimension() -> None:
    head = QueryHead(QueryHeadConfig(dim=4, kind="linear"))
    with pytest.raises(ValueError, match=r"shape \(batch, 4\), got \(2, 3\)"):
        head(torch.zeros(2, 3))


def _perturb(head: QueryHead, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in head.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=gen))


@pytest.mark.parametrize(
    "config",
    [
        QueryHeadConfig(dim=4, kind="mlp", hidden_dim=7, out_dim=6, alpha=0.3, dropout=0.1),
        QueryHeadConfig(dim=4, kind="linear", out_dim=5, alpha=0.25),
        QueryHeadConfig(dim=4, kind="identity"),
    ],
    ids=["mlp", "linear", "identity"],
)
def test_save_load_round_trip(config: QueryHeadConfig, embeddings: np.ndarray, tmp_path: Path) -> None:
    head = QueryHead(config)
    _perturb(head, seed=1)
    before = head.encode(embeddings)
    if config.kind != "identity":
        # Trained weights really moved the output away from the identity.
        assert np.abs(before[:, :4] - _unit_rows(embeddings)).max() > 1e-3
    head.save_pretrained(tmp_path / "head")
    weights = json.loads((tmp_path / "head" / CONFIG_NAME).read_text())["files"]["weights"]["name"]
    assert re.fullmatch(r"model\.[0-9a-f]{12}\.safetensors", weights)  # WEIGHTS_NAME tagged per write
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == [CONFIG_NAME, weights]

    loaded = QueryHead.from_pretrained(tmp_path / "head")
    assert loaded.config == config
    np.testing.assert_array_equal(loaded.encode(embeddings), before)
    saved = json.loads((tmp_path / "head" / CONFIG_NAME).read_text())
    assert set(saved["versions"]) == {"llama-index-lvlm-retriever", "torch", "transformers"}


def test_save_overwrites_an_existing_head(embeddings: np.ndarray, tmp_path: Path) -> None:
    first = QueryHead(QueryHeadConfig(dim=4, kind="linear"))
    first.save_pretrained(tmp_path)
    second = QueryHead(QueryHeadConfig(dim=4, kind="linear", alpha=0.5))
    _perturb(second, seed=2)
    second.save_pretrained(tmp_path)
    loaded = QueryHead.from_pretrained(tmp_path)
    assert loaded.config.alpha == 0.5
    np.testing.assert_array_equal(loaded.encode(embeddings), second.encode(embeddings))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(list(tmp_path.glob("model.*.safetensors"))) == 1  # the first save's weights are gone


def test_missing_directory_and_files_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="query head directory not found: .*nope"):
        QueryHead.from_pretrained(tmp_path / "nope")
    QueryHead(QueryHeadConfig(dim=3, kind="linear")).save_pretrained(tmp_path / "h")
    (weights,) = (tmp_path / "h").glob("model.*.safetensors")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=f"has no {re.escape(weights.name)}"):
        QueryHead.from_pretrained(tmp_path / "h")
    (tmp_path / "h" / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        QueryHead.from_pretrained(tmp_path / "h")


def test_weights_that_do_not_fit_the_config_raise(tmp_path: Path) -> None:
    QueryHead(QueryHeadConfig(dim=3, kind="linear")).save_pretrained(tmp_path)
    record = json.loads((tmp_path / CONFIG_NAME).read_text())
    record["kind"] = "mlp"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="do not fit the config"):
        QueryHead.from_pretrained(tmp_path)


def test_unknown_config_keys_are_warned_by_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    QueryHead(QueryHeadConfig(dim=3, kind="linear")).save_pretrained(tmp_path)
    record = json.loads((tmp_path / CONFIG_NAME).read_text())
    record["temperature"] = 0.05
    (tmp_path / CONFIG_NAME).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="llama_index_lvlm_retriever.heads.query_head"):
        head = QueryHead.from_pretrained(tmp_path)
    assert head.config.kind == "linear"
    assert "temperature" in caplog.text and "versions" not in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 4, "kind": "conv"}, r"kind must be one of .* got 'conv'"),
        ({"dim": 0}, "dim must be a positive int, got 0"),
        ({"dim": 4, "kind": "linear", "out_dim": 3}, r"out_dim must be an int >= dim \(4\), got 3"),
        ({"dim": 4, "kind": "identity", "out_dim": 6}, "identity head cannot change the dimension"),
        ({"dim": 4, "kind": "mlp", "hidden_dim": 0}, "hidden_dim must be a positive int, got 0"),
        ({"dim": 4, "alpha": 1.5}, r"alpha must be in \[0, 1\], got 1.5"),
        ({"dim": 4, "dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QueryHeadConfig(**kwargs)


def test_config_from_dict_needs_dim() -> None:
    with pytest.raises(ValueError, match="needs 'dim'"):
        QueryHeadConfig.from_dict({"kind": "mlp"})


def test_trained_on_round_trips_and_a_head_refuses_a_kb_of_another_encoder(tmp_path: Path) -> None:
    from llama_index_lvlm_retriever.data.records import KBItem
    from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
    from llama_index_lvlm_retriever.kb import EncoderMismatchError, KnowledgeBase
    from llama_index_lvlm_retriever.kb.encoding import describe_encoder
    from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
    from llama_index_lvlm_retriever.testing import build_tiny_clip

    # Two 16-d CLIPs that differ only in their weights (seed): same dimension, other encoder.
    encoders = [CLIPEmbedding.from_pretrained(str(build_tiny_clip(tmp_path / f"clip{s}", seed=s))) for s in (0, 1)]
    rng = np.random.default_rng(0)
    items = [KBItem(id=f"kb{j}", image_path=f"kb{j}.png", text=f"t{j}") for j in range(6)]
    kbs = [KnowledgeBase(e, items, image_vectors=rng.normal(size=(6, 16)), text_vectors=rng.normal(size=(6, 16)),
                         image_hashes=[f"h{j}" for j in range(6)]) for e in encoders]
    head = QueryHead(QueryHeadConfig(dim=16, kind="linear"))
    head.trained_on = {"encoder": describe_encoder(encoders[0], with_probe=False), "gamma": 0.01}
    head.save_pretrained(tmp_path / "head")
    loaded = QueryHead.from_pretrained(tmp_path / "head")
    assert loaded.trained_on == json.loads(json.dumps(head.trained_on))
    assert "trained_on" not in loaded.config.to_dict()  # provenance, not a constructor argument
    LVLMAwareRetriever(kbs[0], image_head=loaded)  # its own encoder: fine
    fp0, fp1 = encoders[0].fingerprint()[:12], encoders[1].fingerprint()[:12]
    with pytest.raises(EncoderMismatchError, match=f"image_head was trained for .*{fp0}.*built with .*{fp1}"):
        LVLMAwareRetriever(kbs[1], image_head=loaded)
    LVLMAwareRetriever(kbs[1], text_head=QueryHead(QueryHeadConfig(dim=16, kind="linear")))  # no record: passes
