"""diagnose_kb: linear-probe accuracy vs frozen top-k label precision, on hand-built vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.embeddings import MultiModalEmbedding
from PIL import Image

from llama_index_lvlm_retriever.cli import main
from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.evaluation.kb_diagnostics import (
    diagnose_kb,
    linear_probe_accuracy,
    topk_label_precision,
)
from llama_index_lvlm_retriever.kb import KnowledgeBase


class FixedEmbedding(MultiModalEmbedding):
    """A stub encoder: the KB's vectors are given, nothing is embedded."""

    model_name: str = "fixed"

    @classmethod
    def class_name(cls) -> str:
        return "FixedEmbedding"

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        return [1.0] * 8

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._get_image_embedding(img_file_path)

    def _get_text_embedding(self, text: str) -> list[float]:
        return [1.0] * 8

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


def test_topk_precision_by_hand() -> None:
    # Labels a a b b; item 1 sits on b's axis. k = 3 covers every other item, so each item's
    # precision is the share of same-label others: 1/3 for all four.
    v = np.eye(2, dtype=np.float32)[[0, 1, 1, 1]]
    labels = np.array([0, 0, 1, 1])
    assert topk_label_precision(v, v, labels, k=3) == pytest.approx(1 / 3)
    # k = 1: item 0 -> any other at cosine 0 (ties); items 2, 3 find each other or item 1 at cosine 1.
    # Item 1 (label a) finds item 2 or 3 (label b): a miss. So at most 3 of 4 hits.
    assert topk_label_precision(v, v, labels, k=1) <= 0.75


def test_probe_sees_what_similarity_ignores() -> None:
    # A strong nuisance (one of 4 axes, weight 3) dominates similarity; the label is a weak
    # direction (+-0.6 on axis 15): linearly present, but nearest neighbours follow the nuisance.
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    nuisance = rng.integers(0, 4, n)
    x = np.eye(16)[nuisance] * 3 + 0.6 * (2 * y[:, None] - 1) * np.eye(16)[15] + 0.8 * rng.normal(size=(n, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    probe = linear_probe_accuracy(x, y, folds=5)
    precision = topk_label_precision(x, x, y, k=4)
    assert probe > 0.75 and precision < 0.70 and probe - precision > 0.1
    # Without the label direction the probe falls to chance.
    blind = x.copy()
    blind[:, 15] = rng.normal(size=n) * 0.1
    assert linear_probe_accuracy(blind, y, folds=5) < 0.62


def _kb(tmp_path: Path, labels: list[str | None], vectors: np.ndarray) -> KnowledgeBase:
    items = []
    for i, label in enumerate(labels):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (4, 4), (i % 256, 0, 0)).save(path)
        items.append(KBItem(id=f"kb{i}", image_path=str(path), text=f"caption {i}", label=label))
    return KnowledgeBase(FixedEmbedding(), items, vectors, vectors, image_hashes=[f"h{i}" for i in range(len(items))])


def test_diagnose_kb_reads_item_labels_and_skips_unlabelled(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels: list[str | None] = ["a" if i % 2 else "b" for i in range(40)]
    labels[0] = None  # unlabelled: left out
    x = np.zeros((40, 8), dtype=np.float32)
    x[:, 0] = [1.0 if label == "a" else -1.0 for label in labels]  # the label is the whole vector
    x += 0.05 * rng.normal(size=x.shape).astype(np.float32)
    report = diagnose_kb(_kb(tmp_path, labels, x), k=2, folds=4)
    assert (report.n_items, report.n_labels, report.k) == (39, 2, 2)
    assert report.linear_probe_accuracy == pytest.approx(1.0)
    assert report.topk_precision_image == pytest.approx(1.0)  # similarity already uses the label
    assert report.expected_precision_at_random == pytest.approx((20 / 39) ** 2 + (19 / 39) ** 2)
    assert "little room for stage 2" in report.summary()
    assert report.to_dict()["headroom"] == pytest.approx(0.0)


def test_diagnose_kb_bad_inputs(tmp_path: Path) -> None:
    x = np.eye(8, dtype=np.float32)[[0, 1, 2, 3]]
    kb = _kb(tmp_path, ["a", "a", "a", "a"], x)
    with pytest.raises(ValueError, match=r"needs >= 10 labelled items and >= 2 labels, got 4 items with 1 label"):
        diagnose_kb(kb)
    with pytest.raises(ValueError, match="got 3 labels for 4 KB items"):
        diagnose_kb(kb, labels=["a", "b", "a"])


def test_cli_diagnose_kb_prints_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
    from llama_index_lvlm_retriever.testing import build_tiny_clip

    embed = CLIPEmbedding.from_pretrained(build_tiny_clip(tmp_path / "clip"))
    rng = np.random.default_rng(0)
    items = []
    for i in range(24):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        items.append(KBItem(id=f"k{i}", image_path=str(path), text=f"grade {i % 2}", label=str(i % 2)))
    KnowledgeBase.build(items, embed, show_progress=False).persist(tmp_path / "kb")
    assert main(["diagnose-kb", "--kb", str(tmp_path / "kb"), "--k", "2", "--folds", "3", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["n_items"] == 24 and out["k"] == 2 and 0.0 <= out["linear_probe_accuracy"] <= 1.0
