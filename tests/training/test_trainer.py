"""RetrieverFinetuneEngine (adapter mode) on a constructed case where the reader prefers one kind of candidate.

Construction (``L = 4`` labels, query dim ``D = 16``, KB dim ``D + L = 20``):

* KB item ``j`` has label ``j mod 4``; its image and text keys are ``normalize([b_j, TAG * onehot(label)])``
  with ``b_j`` a random unit vector in ``D`` dims and a "grade tag" in the last ``L`` dims.
* Case ``i`` has label ``y_i``; its frozen query embedding (``D`` dims) is
  ``normalize(n_i + SIGNAL * onehot_D(y_i))`` where the label mark sits in the last ``L`` of the
  ``D`` dims and ``n_i`` is random noise. The frozen query has nothing in the tag dims, so standard
  RAG ranks candidates by ``b_j . e_i`` alone: label-blind (the mark meets random ``b_j`` entries).
* Both retriever heads are ``linear`` ``D -> D + L`` initialised to ``[I; 0]`` (so the untrained
  retriever is standard RAG); training can route the query's mark to the keys' tag.
* The fake reader answers the candidate's label with probability .7, so the feedback prefers
  candidates whose label is the case's label.

Metric: mean reciprocal rank (over the whole KB, per head) of the first candidate whose label is the
case's, on held-out cases. Label-blind ranking gives about ``sum_r (1/r) (3/4)^(r-1) (1/4) =
ln(4)/3 = .462``; a perfect one gives 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from llama_index.core.bridge.pydantic import ValidationError

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.heads import QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.tasks import TaskSpec
from llama_index_lvlm_retriever.testing.stubs import LabelReader, TableEmbedding, write_table_image
from llama_index_lvlm_retriever.training.config import TrainerConfig
from llama_index_lvlm_retriever.training.feedback import FeedbackConfig, collect_feedback
from llama_index_lvlm_retriever.training.losses import EMDRLoss, LSRLoss, PosteriorKLLoss
from llama_index_lvlm_retriever.training.trainer import RetrieverFinetuneEngine

N_LABELS, DIM, N_KB, N_TRAIN, N_TEST = 4, 16, 240, 360, 120
TAG, SIGNAL = 1.0, 0.8
LABELS = tuple(f"g{i}" for i in range(N_LABELS))
TASK = TaskSpec(name="grade", labels=LABELS, question="Which grade? Answer {options}.")
CHANCE_MRR = math.log(4) / 3  # label-blind ranking, 1/4 of the KB matches


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _linear_head(alpha: float = 0.5) -> QueryHead:
    return QueryHead(QueryHeadConfig(dim=DIM, kind="linear", out_dim=DIM + N_LABELS, alpha=alpha))


def _mrr(retriever: LVLMAwareRetriever, embeddings: np.ndarray, labels: list[str], head: str) -> float:
    """Mean reciprocal rank of the first same-label item in the head's full ranking of the KB."""
    hits = retriever.search_heads(embeddings, k_image=N_KB, k_text=N_KB)[head]
    ranks = [next(r for r, h in enumerate(row, start=1) if h.item.label == y) for row, y in zip(hits, labels)]
    return float(np.mean([1.0 / r for r in ranks]))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    # Tiny tensors: intra-op threads only add contention (10x slower on a busy 2-core machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("graded")
    rng = np.random.default_rng(0)
    n_cases = N_TRAIN + N_TEST
    case_labels = rng.integers(0, N_LABELS, size=n_cases)
    mark = np.zeros((n_cases, DIM))
    mark[np.arange(n_cases), DIM - N_LABELS + case_labels] = SIGNAL  # the faint label mark
    table = _unit(_unit(rng.normal(size=(n_cases, DIM))) + mark)  # (cases, D) frozen query embeddings
    kb_labels = np.arange(N_KB) % N_LABELS
    tags = TAG * np.eye(N_LABELS)[kb_labels]  # (KB, L)
    image_keys = _unit(np.concatenate([_unit(rng.normal(size=(N_KB, DIM))), tags], axis=1))  # (KB, D + L)
    text_keys = _unit(np.concatenate([_unit(rng.normal(size=(N_KB, DIM))), tags], axis=1))
    items = [
        KBItem(id=f"kb{j}", image_path=f"kb{j}.png", text=f"grade {kb_labels[j]}", label=LABELS[kb_labels[j]])
        for j in range(N_KB)
    ]
    embed = TableEmbedding(table)
    kb = KnowledgeBase(embed, items, image_vectors=image_keys, text_vectors=text_keys,
                       image_hashes=[f"kb-hash-{j}" for j in range(N_KB)])
    cases = []
    for i in range(n_cases):
        path = folder / f"case{i}.png"
        write_table_image(path, i)
        cases.append(Case(id=f"case{i}", image_path=str(path), labels=(LABELS[case_labels[i]],)))
    retriever = LVLMAwareRetriever(kb, image_head=_linear_head(), text_head=_linear_head(), k_image=2, k_text=2)
    config = FeedbackConfig(n_candidates=30, shard_size=200, reader_batch_size=512)
    feedback = collect_feedback(cases[:N_TRAIN], retriever, LabelReader(TASK), folder / "fb", config, show_progress=False)
    test_labels = [c.labels[0] for c in cases[N_TRAIN:]]
    return {
        "folder": folder, "kb": kb, "cases": cases, "retriever": retriever, "feedback": feedback,
        "test_embeddings": table[N_TRAIN:], "test_labels": test_labels,
    }


FAST = TrainerConfig(
    learning_rate=1e-2, max_steps=120, batch_size=64, eval_every=20, validation_fraction=0.2, show_progress=False,
    log_every=10,
)


@pytest.mark.parametrize("loss", [None, LSRLoss(gamma=0.05), EMDRLoss(gamma=0.05)], ids=["default", "lsr", "emdr"])
def test_training_ranks_the_readers_preferred_candidates_higher(world: dict[str, Any], loss: Any) -> None:
    retriever, feedback = world["retriever"], world["feedback"]
    emb, labels = world["test_embeddings"], world["test_labels"]
    before = {head: _mrr(retriever, emb, labels, head) for head in ("image", "text")}
    engine = RetrieverFinetuneEngine(retriever, feedback, loss=loss, head="both", config=FAST)
    engine.finetune()
    trained = engine.get_finetuned_model()
    after = {head: _mrr(trained, emb, labels, head) for head in ("image", "text")}
    for head in ("image", "text"):
        # The untrained retriever is label-blind: no better than chance (hub items of one label
        # can put a fixed KB somewhat below it).
        assert before[head] < CHANCE_MRR + 0.05
        assert after[head] > before[head] + 0.2
    assert trained.knowledge_base is retriever.knowledge_base
    # Validation picked a trained checkpoint (not step 0) and logged the loss parts.
    restored = [r for r in engine.history if r.get("event") == "restored_best"]
    assert len(restored) == 1 and restored[0]["best_step"] > 0
    train_rows = [r for r in engine.history if r.get("event") == "train"]
    assert {"loss/text", "loss/image", "lr", "grad_norm"} <= set(train_rows[0])
    vals = [r for r in engine.history if r.get("event") == "validation"]
    assert vals[0]["step"] == 0 and vals[-1]["val_rag_loglik"] > vals[0]["val_rag_loglik"]


def test_best_checkpoint_is_restored_even_when_it_is_the_untrained_head(world: dict[str, Any]) -> None:
    retriever, feedback = world["retriever"], world["feedback"]
    # Validation feedback from a reader with the opposite preference: every step makes it worse,
    # so the best checkpoint is step 0, the untrained ([I; 0]) head.
    validation = collect_feedback(
        world["cases"][N_TRAIN:], retriever, LabelReader(TASK, inverted=True, hit=0.97, model_name="inverted"),
        world["folder"] / "fb-inverted", FeedbackConfig(n_candidates=30), show_progress=False,
    )
    config = FAST.model_copy(update={"patience": 2})
    engine = RetrieverFinetuneEngine(retriever, feedback, head="text", config=config, validation=validation)
    engine.finetune()
    restored = [r for r in engine.history if r.get("event") == "restored_best"]
    assert restored[0]["best_step"] == 0
    vals = [r for r in engine.history if r.get("event") == "validation"]
    assert max(r["val_rag_loglik"] for r in vals[1:]) < vals[0]["val_rag_loglik"]
    # Early stopping: validations at steps 0, 20, 40 and no improvement twice -> stop at step 40 of 120.
    assert [r["step"] for r in vals] == [0, 20, 40]
    assert max(r["step"] for r in engine.history if r.get("event") == "train") <= 40
    trained = engine.get_finetuned_model()
    for name, param in trained.text_head.state_dict().items():
        assert torch.equal(param, retriever.text_head.state_dict()[name]), name
    # Untouched heads stay the retriever's own.
    assert trained.image_head is retriever.image_head


def test_save_load_gives_identical_retrieval(world: dict[str, Any], tmp_path: Path) -> None:
    retriever, feedback = world["retriever"], world["feedback"]
    engine = RetrieverFinetuneEngine(retriever, feedback, head="text", config=FAST.model_copy(update={"max_steps": 30}))
    engine.finetune()
    out = engine.save(tmp_path / "heads")
    assert sorted(p.name for p in out.iterdir()) == ["image_head", "text_head", "trainer_config.json",
                                                     "training_history.json"]
    record = json.loads((out / "trainer_config.json").read_text())
    assert record["head"] == "text" and record["config"]["max_steps"] == 30
    assert record["loss"]["class_name"] == "PosteriorKLLoss"  # TrainerConfig.loss default
    assert set(record["target_diagnostics"]) == {"text"}
    assert 0.0 <= record["target_diagnostics"]["text"]["frozen_topk_share"] <= 1.0
    assert record["gamma"] == engine.gammas and set(record["gamma"]) == {"text"}
    assert json.loads((out / "training_history.json").read_text()) == engine.history
    loaded = LVLMAwareRetriever(
        world["kb"], QueryHead.from_pretrained(out / "image_head"), QueryHead.from_pretrained(out / "text_head"),
        k_image=2, k_text=2,
    )
    trained = engine.get_finetuned_model()
    emb = world["test_embeddings"]
    want, got = trained.search_heads(emb, k_image=5, k_text=5), loaded.search_heads(emb, k_image=5, k_text=5)
    for head in ("image", "text"):
        assert [[h.item.id for h in row] for row in got[head]] == [[h.item.id for h in row] for row in want[head]]
        assert [[h.score for h in row] for row in got[head]] == [[h.score for h in row] for row in want[head]]


def test_fresh_heads_for_a_headless_retriever_are_seeded_and_reproducible(world: dict[str, Any]) -> None:
    # Standard RAG over the KB's first D dims (no tag): no heads, so the engine builds fresh ones.
    kb = world["kb"]
    plain_kb = KnowledgeBase(
        kb.embed_model, kb.items, image_vectors=kb.image_vectors[:, :DIM], text_vectors=kb.text_vectors[:, :DIM],
        image_hashes=kb.image_hashes,
    )
    plain = LVLMAwareRetriever(plain_kb)
    feedback = collect_feedback(
        world["cases"][:60], plain, LabelReader(TASK), world["folder"] / "fb-plain", FeedbackConfig(n_candidates=10),
        show_progress=False,
    )
    config = FAST.model_copy(update={"max_steps": 15, "head_kind": "mlp", "head_hidden_dim": 8, "alpha": 0.3,
                                     "adoption": "best"})
    states = []
    for _ in range(2):
        engine = RetrieverFinetuneEngine(plain, feedback, head="image", config=config)
        engine.finetune()
        model = engine.get_finetuned_model()
        assert model.text_head is None  # untouched: still standard RAG
        head = model.image_head
        assert head is not None and head.config == QueryHeadConfig(dim=DIM, kind="mlp", hidden_dim=8, alpha=0.3)
        states.append(head.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["fc2.weight"], torch.zeros_like(states[0]["fc2.weight"]))  # it trained


def test_sequential_schedule_trains_text_then_image_with_candidate_refresh(world: dict[str, Any]) -> None:
    retriever, feedback = world["retriever"], world["feedback"]
    config = FAST.model_copy(
        update={"schedule": "sequential", "max_steps": 80, "n_train_candidates": 10, "refresh_every": 10}
    )
    engine = RetrieverFinetuneEngine(retriever, feedback, loss=PosteriorKLLoss(gamma=0.05), head="both", config=config)
    engine.finetune()
    phases = [r["phase"] for r in engine.history if r.get("event") == "train"]
    n_text = phases.count("text")
    assert n_text > 0 and phases == ["text"] * n_text + ["image"] * (len(phases) - n_text)
    emb, labels = world["test_embeddings"], world["test_labels"]
    trained = engine.get_finetuned_model()
    for head in ("image", "text"):
        assert _mrr(trained, emb, labels, head) > _mrr(retriever, emb, labels, head) + 0.15


def test_optimizer_decays_toward_the_start_and_clips_after_backward(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    groups: list[list[dict[str, Any]]] = []
    seen: list[bool] = []

    class SpyAdamW(torch.optim.AdamW):
        def __init__(self, params: Any, **kwargs: Any) -> None:
            super().__init__(params, **kwargs)
            groups.append([{k: v for k, v in g.items() if k != "params"} | {"shapes": [tuple(p.shape) for p in g["params"]]}
                           for g in self.param_groups])

    real_clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(params: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        params = list(params)
        # Called after backward: every parameter already holds this step's gradient.
        seen.append(all(p.grad is not None for p in params))
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    config = FAST.model_copy(update={"max_steps": 5, "max_grad_norm": 0.5, "log_every": 1})
    engine = RetrieverFinetuneEngine(world["retriever"], world["feedback"], head="text", config=config)
    engine.finetune()
    assert len(seen) == 5 and all(seen)
    (group,) = groups[0]
    # L2-SP: AdamW's decoupled decay (toward 0) is off; the decay is a logged loss part toward w0.
    assert group["weight_decay"] == 0.0 and group["shapes"] == [(DIM + N_LABELS, DIM), (DIM + N_LABELS,)]
    assert group["lr"] == 1e-2
    train = [r for r in engine.history if r.get("event") == "train"]
    assert train[0]["l2sp/text"] == 0.0 and train[-1]["l2sp/text"] > 0.0  # zero at the start, then grows


def test_bad_settings_are_refused(world: dict[str, Any]) -> None:
    retriever, feedback = world["retriever"], world["feedback"]
    with pytest.raises(ValueError, match="mode='encoder'.*pass cases="):
        RetrieverFinetuneEngine(retriever, feedback, config=TrainerConfig(mode="encoder"))
    with pytest.raises(ValueError, match="head must be one of.*got 'caption'"):
        RetrieverFinetuneEngine(retriever, feedback, head="caption")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="refresh_every=5 needs n_train_candidates"):
        TrainerConfig(refresh_every=5)
    with pytest.raises(ValidationError, match="weight_decay"):
        TrainerConfig(weight_decay=-1.0)
    other = LVLMAwareRetriever(world["kb"], image_head=_linear_head(alpha=0.3), text_head=_linear_head())
    with pytest.raises(ValueError, match="collected with another retriever.*image_head"):
        RetrieverFinetuneEngine(other, feedback)
    text_only = collect_feedback(
        world["cases"][:8], retriever, LabelReader(TASK), world["folder"] / "fb-text",
        FeedbackConfig(n_candidates=5, heads=("text",)), show_progress=False,
    )
    with pytest.raises(ValueError, match="cannot train the image head.*candidates for \\['text'\\] only"):
        RetrieverFinetuneEngine(retriever, text_only, head="image")
