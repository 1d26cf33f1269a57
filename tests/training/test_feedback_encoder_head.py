"""collect_feedback with an image-input head (``EncoderQueryHead``, ``needs_image=True``).

Such a head reads the query images, so feedback collection must pass them to ``search_heads``.
World: a tiny random CLIP (as in ``test_encoder_mode.py``), 12 KB items, 6 cases; the head's
trainable weights are perturbed and its blend weight is high, so its ranking differs from the
frozen one and the test can tell which retrieval the cache holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tqdm import tqdm

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.heads import EncoderQueryHead
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.tasks import TaskSpec
from llama_index_lvlm_retriever.testing import build_tiny_clip
from llama_index_lvlm_retriever.testing.stubs import LabelReader
from llama_index_lvlm_retriever.training._feedback_shards import RETRIEVAL_SCORES
from llama_index_lvlm_retriever.training.feedback import (
    FeedbackConfig,
    _collect_shard,
    _gold_targets,
    collect_feedback,
)

N_KB, N_CASES, N_CANDIDATES = 12, 6, 5
LABELS = ("a", "b")
TASK = TaskSpec(name="ab", labels=LABELS, question="Which? Answer {options}.")


def _image(path: Path, rng: np.random.Generator) -> str:
    Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("feedback_encoder")
    rng = np.random.default_rng(0)
    embed = CLIPEmbedding.from_pretrained(str(build_tiny_clip(folder / "clip")))
    items = [
        KBItem(id=f"kb{j}", image_path=_image(folder / f"kb{j}.png", rng), text=f"item {j}", label=LABELS[j % 2])
        for j in range(N_KB)
    ]
    kb = KnowledgeBase.build(items, embed, show_progress=False)
    cases = [
        Case(id=f"case{i}", image_path=_image(folder / f"case{i}.png", rng), labels=(LABELS[i % 2],))
        for i in range(N_CASES)
    ]
    head = EncoderQueryHead.from_embedding(embed, alpha=0.9, train_last_n_blocks=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in head.parameters():
            if param.requires_grad:
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
    head.eval()
    return {"folder": folder, "kb": kb, "cases": cases, "head": head}


def _expected(retriever: LVLMAwareRetriever, cases: list[Case]) -> tuple[list[list[str]], list[list[float]]]:
    """The head's own top candidates (ids, scores) per case, and a check that they differ from the frozen ones."""
    images = [case.image_path for case in cases]
    embeddings = retriever.embed_queries(images)  # (n, dim)
    hits = retriever.search_heads(
        embeddings, k_image=N_CANDIDATES, k_text=0, exclude_ids=[{case.id} for case in cases], images=images
    )["image"]
    frozen = LVLMAwareRetriever(retriever.knowledge_base, k_image=2, k_text=2).search_heads(
        embeddings, k_image=N_CANDIDATES, k_text=0, exclude_ids=[{case.id} for case in cases]
    )["image"]
    ids = [[hit.item.id for hit in row] for row in hits]
    # The perturbed head ranks differently from the frozen tower, so the tests see which one was used.
    assert ids != [[hit.item.id for hit in row] for row in frozen]
    return ids, [[hit.score for hit in row] for row in hits]


def test_collect_shard_passes_the_query_images(world: dict[str, Any]) -> None:
    retriever = LVLMAwareRetriever(world["kb"], image_head=world["head"], k_image=2, k_text=2)
    cases: list[Case] = world["cases"]
    reader = LabelReader(TASK)
    tensors, candidate_ids = _collect_shard(
        cases, _gold_targets(cases, reader), retriever, reader,
        FeedbackConfig(n_candidates=N_CANDIDATES, heads=("image",)), tqdm(disable=True),
    )
    ids, scores = _expected(retriever, cases)
    assert candidate_ids["image"] == ids
    np.testing.assert_allclose(tensors[f"image.{RETRIEVAL_SCORES}"].numpy(), scores, atol=1e-5)


def test_feedback_with_encoder_head_end_to_end(world: dict[str, Any]) -> None:
    retriever = LVLMAwareRetriever(world["kb"], image_head=world["head"], k_image=2, k_text=2)
    cases: list[Case] = world["cases"]
    cache = collect_feedback(
        cases, retriever, LabelReader(TASK), world["folder"] / "fb",
        FeedbackConfig(n_candidates=N_CANDIDATES, heads=("image",)), show_progress=False,
    )
    assert len(cache) == N_CASES
    ids, scores = _expected(retriever, cases)
    assert cache.candidate_ids("image") == ids
    np.testing.assert_allclose(cache.retrieval_scores("image").numpy(), scores, atol=1e-5)
