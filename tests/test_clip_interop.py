"""Interop with ``llama_index.embeddings.clip.ClipEmbedding`` (the ``clip`` extra): build, persist,
reload, query, trained heads.

The real class loads OpenAI's CLIP through ``import clip`` (the ``openai-clip`` package), which
imports torchvision; torchvision cannot sit beside this machine's CPU torch, so a stand-in ``clip``
module is injected into ``sys.modules``: ``clip.load(name, device)`` returns a tiny torch model with
``encode_image``/``encode_text`` and a preprocess callable, ``clip.tokenize`` returns token ids, the
same contract openai-clip fulfils. Everything above it (ClipEmbedding itself, our KB, retriever and
heads) is the real code.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from llama_index.core.schema import QueryBundle
from PIL import Image

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.heads import QueryHead
from llama_index_lvlm_retriever.heads.query_head import QueryHeadConfig
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.retriever import META_HEADS, META_KB_ID, LVLMAwareRetriever

clip_embeddings = pytest.importorskip(
    "llama_index.embeddings.clip", reason="llama-index-embeddings-clip is not installed (pip install '.[clip]')"
)

DIM = 16
_SIDE = 8


class _TinyClip(torch.nn.Module):
    """Two linear towers with OpenAI CLIP's ``encode_image``/``encode_text`` interface."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.image_proj = torch.nn.Parameter(torch.randn(3 * _SIDE * _SIDE, DIM, generator=generator))
        self.token_table = torch.nn.Parameter(torch.randn(256, DIM, generator=generator))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) @ self.image_proj  # (batch, 3*8*8) @ (3*8*8, dim) -> (batch, dim)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_table[tokens].mean(dim=1)  # (batch, context, dim) -> (batch, dim)


def _fake_clip_module(seed: int = 0) -> types.ModuleType:
    module = types.ModuleType("clip")
    loads: list[tuple[str, str]] = []

    def load(name: str, device: str = "cpu", jit: bool = False) -> tuple[torch.nn.Module, object]:
        loads.append((name, str(device)))

        def preprocess(image: Image.Image) -> torch.Tensor:
            pixels = np.asarray(image.convert("RGB").resize((_SIDE, _SIDE)), dtype=np.float32) / 255.0  # (8, 8, 3)
            return torch.from_numpy(pixels).permute(2, 0, 1) - 0.5  # (3, 8, 8), centred

        return _TinyClip(seed).to(device).eval(), preprocess

    def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        ids = torch.zeros(len(texts), context_length, dtype=torch.long)  # (batch, context)
        for row, text in enumerate(texts):
            codes = list(text.encode("utf-8"))[:context_length]
            ids[row, : len(codes)] = torch.tensor(codes, dtype=torch.long)
        return ids

    module.load, module.tokenize, module.loads = load, tokenize, loads  # type: ignore[attr-defined]
    return module


@pytest.fixture
def fake_clip(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = _fake_clip_module()
    monkeypatch.setitem(sys.modules, "clip", module)
    return module


@pytest.fixture
def items(tmp_path: Path) -> list[KBItem]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(6):
        pixels = (rng.random((_SIDE * 4, _SIDE * 4, 3)) * 255).astype(np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        out.append(KBItem(id=f"k{i}", image_path=str(path), text=f"caption number {i}"))
    return out


def test_clip_embedding_builds_persists_reloads_and_queries(fake_clip: types.ModuleType, items: list[KBItem], tmp_path: Path) -> None:
    embed = clip_embeddings.ClipEmbedding(model_name="ViT-B/32")
    assert fake_clip.loads == [("ViT-B/32", "cpu")]
    kb = KnowledgeBase.build(items, embed, show_progress=False)
    assert kb.dim == DIM and len(kb) == 6
    kb.persist(tmp_path / "kb")

    # A fresh ClipEmbedding (same weights) is accepted by the persisted KB and finds each image itself.
    reloaded = clip_embeddings.ClipEmbedding(model_name="ViT-B/32")
    retriever = LVLMAwareRetriever.from_persist_dir(tmp_path / "kb", reloaded, k_image=1, k_text=1, head_fusion="none")
    for item in items:
        nodes = retriever.retrieve(QueryBundle(query_str="", image_path=item.image_path))
        image_hits = [n for n in nodes if "image" in n.node.metadata[META_HEADS]]
        assert image_hits and image_hits[0].node.metadata[META_KB_ID] == item.id
        assert image_hits[0].score == pytest.approx(1.0, abs=1e-4)  # image->image: the query is in the KB


def test_clip_embedding_with_trained_heads(fake_clip: types.ModuleType, items: list[KBItem], tmp_path: Path) -> None:
    embed = clip_embeddings.ClipEmbedding(model_name="ViT-B/32")
    KnowledgeBase.build(items, embed, show_progress=False).persist(tmp_path / "kb")
    torch.manual_seed(1)
    head = QueryHead(QueryHeadConfig(dim=DIM, kind="linear", alpha=0.5))
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 1.0)  # far from identity, so the head visibly moves the query
    head.save_pretrained(tmp_path / "heads" / "image_head")
    QueryHead.identity(DIM).save_pretrained(tmp_path / "heads" / "text_head")

    query = QueryBundle(query_str="", image_path=items[0].image_path)
    plain = LVLMAwareRetriever.from_persist_dir(tmp_path / "kb", embed, k_image=6, k_text=0, head_fusion="none")
    trained = LVLMAwareRetriever.from_persist_dir(
        tmp_path / "kb", embed, image_head_dir=tmp_path / "heads" / "image_head",
        text_head_dir=tmp_path / "heads" / "text_head", k_image=6, k_text=0, head_fusion="none",
    )
    plain_scores = [n.score for n in plain.retrieve(query)]
    trained_scores = [n.score for n in trained.retrieve(query)]
    assert len(trained_scores) == 6
    assert not np.allclose(sorted(plain_scores), sorted(trained_scores))  # the loaded head is applied


def test_a_different_clip_model_is_refused(fake_clip: types.ModuleType, items: list[KBItem], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    KnowledgeBase.build(items, clip_embeddings.ClipEmbedding(model_name="ViT-B/32"), show_progress=False).persist(tmp_path / "kb")
    monkeypatch.setitem(sys.modules, "clip", _fake_clip_module(seed=7))  # other weights behind the same name
    with pytest.raises(ValueError, match="encoder"):
        KnowledgeBase.from_persist_dir(tmp_path / "kb", clip_embeddings.ClipEmbedding(model_name="ViT-B/32"))


def test_cli_reopens_a_kb_built_with_clip_embedding(
    fake_clip: types.ModuleType, items: list[KBItem], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from llama_index_lvlm_retriever.cli import main

    KnowledgeBase.build(items, clip_embeddings.ClipEmbedding(model_name="ViT-B/32"), show_progress=False).persist(
        tmp_path / "kb"
    )
    capsys.readouterr()
    code = main(["query", "--kb", str(tmp_path / "kb"), "--image", items[3].image_path, "--k-image", "1",
                 "--k-text", "0", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["kb_id"] == "k3" and rows[0]["retrieval_score"] == pytest.approx(1.0, abs=1e-4)
    assert fake_clip.loads[-1] == ("ViT-B/32", "cpu")  # reopened through ClipEmbedding, not CLIPEmbedding
