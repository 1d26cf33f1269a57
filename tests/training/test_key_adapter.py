"""``training/key_adapter.py``: the KB-side option measured in issue 18 (query + key adapters, then a re-index).

Construction (``L = 4`` labels, vectors in ``D + L = 20`` dims, both the queries and the keys):

* KB item ``j`` has label ``j mod 4``; its image and text keys are ``normalize([b_j, TAG * onehot(label)])``
  with ``b_j`` a random unit vector in the first ``D`` dims.
* Case ``i`` with label ``y_i`` has the frozen query ``normalize([n_i + SIGNAL * mark(y_i), 0])``: random
  noise plus a faint label mark in the first ``D`` dims and nothing in the tag dims, so standard RAG
  (no heads) ranks the KB label-blind.
* The reader answers the candidate's label with probability .7, so its feedback prefers same-label
  candidates; a trained query head can route the mark to the tag dims, a trained key adapter can
  strengthen the tag.

Metric: mean reciprocal rank, over the whole KB, of the first same-label item for held-out cases
(label-blind: about ``ln(4)/3 = .462``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.tasks import TaskSpec
from llama_index_lvlm_retriever.testing.stubs import LabelReader, TableEmbedding, write_table_image
from llama_index_lvlm_retriever.training.config import TrainerConfig
from llama_index_lvlm_retriever.training.feedback import FeedbackConfig, collect_feedback

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training"))
from key_adapter import _Pair, reindexed_retriever, train_key_adapter  # noqa: E402

N_LABELS, DIM, N_KB, N_TRAIN, N_VAL, N_TEST = 4, 16, 160, 240, 120, 120
TAG, SIGNAL = 1.0, 0.8
LABELS = tuple(f"g{i}" for i in range(N_LABELS))
TASK = TaskSpec(name="grade", labels=LABELS, question="Which grade? Answer {options}.")
CHANCE_MRR = math.log(4) / 3


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _mrr(retriever: LVLMAwareRetriever, embeddings: np.ndarray, labels: list[str], head: str) -> float:
    hits = retriever.search_heads(embeddings, k_image=N_KB, k_text=N_KB)[head]
    ranks = [next(r for r, h in enumerate(row, start=1) if h.item.label == y) for row, y in zip(hits, labels)]
    return float(np.mean([1.0 / r for r in ranks]))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("key-adapter")
    rng = np.random.default_rng(0)
    n_cases = N_TRAIN + N_VAL + N_TEST
    case_labels = rng.integers(0, N_LABELS, size=n_cases)
    mark = np.zeros((n_cases, DIM))
    mark[np.arange(n_cases), DIM - N_LABELS + case_labels] = SIGNAL
    queries = np.concatenate([_unit(_unit(rng.normal(size=(n_cases, DIM))) + mark), np.zeros((n_cases, N_LABELS))], 1)
    kb_labels = np.arange(N_KB) % N_LABELS
    tags = TAG * np.eye(N_LABELS)[kb_labels]
    image_keys = _unit(np.concatenate([_unit(rng.normal(size=(N_KB, DIM))), tags], axis=1))
    text_keys = _unit(np.concatenate([_unit(rng.normal(size=(N_KB, DIM))), tags], axis=1))
    items = [KBItem(id=f"kb{j}", image_path=f"kb{j}.png", text=f"grade {kb_labels[j]}", label=LABELS[kb_labels[j]])
             for j in range(N_KB)]
    kb = KnowledgeBase(TableEmbedding(_unit(queries)), items, image_vectors=image_keys, text_vectors=text_keys,
                       image_hashes=[f"kb-hash-{j}" for j in range(N_KB)])
    cases = []
    for i in range(n_cases):
        path = folder / f"case{i}.png"
        write_table_image(path, i)
        cases.append(Case(id=f"case{i}", image_path=str(path), labels=(LABELS[case_labels[i]],)))
    standard = LVLMAwareRetriever(kb, k_image=2, k_text=2)
    feedback = collect_feedback(cases[:N_TRAIN], standard, LabelReader(TASK), folder / "fb",
                                FeedbackConfig(n_candidates=20, reader_batch_size=512), show_progress=False)
    return {"standard": standard, "feedback": feedback, "cases": cases, "test_embeddings": _unit(queries)[-N_TEST:],
            "test_labels": [c.labels[0] for c in cases[-N_TEST:]]}


CONFIG = TrainerConfig(max_steps=120, batch_size=64, eval_every=40, n_train_candidates=10, refresh_every=10,
                       show_progress=False)


def test_fresh_adapters_reindex_to_standard_rag(world: dict[str, Any]) -> None:
    standard = world["standard"]
    kb = standard.knowledge_base
    fresh = reindexed_retriever(standard, {name: _Pair(kb.dim, kb.dim, CONFIG) for name in ("image", "text")})
    emb = world["test_embeddings"]
    want, got = standard.search_heads(emb, k_image=8, k_text=8), fresh.search_heads(emb, k_image=8, k_text=8)
    for head in ("image", "text"):
        assert [[h.item.id for h in row] for row in got[head]] == [[h.item.id for h in row] for row in want[head]]
        np.testing.assert_allclose([[h.score for h in row] for row in got[head]],
                                   [[h.score for h in row] for row in want[head]], atol=1e-5)
    assert fresh.knowledge_base is not kb and len(fresh.knowledge_base) == len(kb)
    np.testing.assert_allclose(fresh.knowledge_base.image_vectors, kb.image_vectors, atol=1e-6)


def test_training_moves_the_keys_and_ranks_the_readers_preferred_items_higher(world: dict[str, Any]) -> None:
    standard, emb, labels = world["standard"], world["test_embeddings"], world["test_labels"]
    val = world["cases"][N_TRAIN : N_TRAIN + N_VAL]
    run = train_key_adapter(standard, world["feedback"], CONFIG, reader=LabelReader(TASK), validation_cases=val)
    for head in ("image", "text"):
        before, after = _mrr(standard, emb, labels, head), _mrr(run.trained, emb, labels, head)
        assert before < CHANCE_MRR + 0.05
        assert after > before + 0.15, (head, before, after)
    # The knowledge base was re-indexed with moved keys; the encoder and the items are the same.
    adapted = run.trained.knowledge_base
    assert [i.id for i in adapted.items] == [i.id for i in standard.knowledge_base.items]
    assert np.abs(adapted.image_vectors - standard.knowledge_base.image_vectors).max() > 1e-3
    # Selection on validation and the no-regression rule on its held-out half, as the engine does.
    assert run.decision is not None and run.decision.adopted and run.decision.delta_loglik > 0
    steps = [(r["phase"], r["step"]) for r in run.history if r["event"] == "validation"]
    assert steps == [(p, s) for p in ("text", "image") for s in (0, 40, 80, 120)]


def test_without_validation_the_last_checkpoint_is_kept(world: dict[str, Any]) -> None:
    run = train_key_adapter(world["standard"], world["feedback"], CONFIG.model_copy(update={"max_steps": 20}))
    assert run.decision is None and run.initial is None
    assert not any(r["event"] == "validation" for r in run.history)
    with pytest.raises(ValueError, match="numeric gamma"):
        train_key_adapter(world["standard"], world["feedback"], CONFIG.model_copy(update={"gamma": "auto"}))
