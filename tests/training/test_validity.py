"""Training that knows when it helps: real-retrieval validation, the no-regression rule, feedback rounds.

The designed-effect world of ``test_trainer.py`` (see its docstring): KB keys carry a one-hot "grade
tag" that the frozen query cannot see, the query carries a faint grade mark, the heads are
``linear`` ``D -> D + L`` initialised ``[I; 0]``, and the reader answers the candidate's label with
probability 0.7. Training can route the mark to the tag, so a head trained on true feedback gains;
one trained on shuffled gold labels cannot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.heads import QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.tasks import TaskSpec
from llama_index_lvlm_retriever.testing.stubs import TableEmbedding, write_table_image
from llama_index_lvlm_retriever.training.config import TrainerConfig
from llama_index_lvlm_retriever.training.feedback import FeedbackConfig, collect_feedback
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache
from llama_index_lvlm_retriever.training.losses import (
    ENTROPY_RETRIEVER_KEY,
    ENTROPY_TARGET_KEY,
    PosteriorKLLoss,
)
from llama_index_lvlm_retriever.training.temperature import auto_gamma, retrieval_entropy
from llama_index_lvlm_retriever.training.trainer import RetrieverFinetuneEngine
from llama_index_lvlm_retriever.training.validation import ValidationResult, no_regression_decision

N_LABELS, DIM, N_KB, N_TRAIN, N_VAL = 4, 16, 240, 360, 120
LABELS = tuple(f"g{i}" for i in range(N_LABELS))
TASK = TaskSpec(name="grade", labels=LABELS, question="Which grade? Answer {options}.")


class CountingReader(Reader):
    """P(candidate's label) = 0.7; records every scored (case, item) pair; may fail after some calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.task = TASK
        self.model_name = "label-reader"
        self.fail_after = fail_after
        self.calls = 0
        self.scored: list[tuple[str, str]] = []

    def score(
        self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem | None]], *, show_progress: bool = False
    ) -> ReaderScores:
        k = check_inputs(cases, candidates)
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash of the reader")
        self.calls += 1
        out = np.empty((len(cases), k, N_LABELS))
        for i, row in enumerate(candidates):
            for j, item in enumerate(row):
                assert item is not None and item.label is not None
                probs = np.full(N_LABELS, 0.1)
                probs[TASK.label_index(item.label)] = 0.7
                out[i, j] = np.log(probs)
                self.scored.append((cases[i].id, item.id))
        return ReaderScores(log_probs=out, labels=LABELS)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _linear_head() -> QueryHead:
    return QueryHead(QueryHeadConfig(dim=DIM, kind="linear", out_dim=DIM + N_LABELS, alpha=0.5))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("validity")
    rng = np.random.default_rng(0)
    n_cases = N_TRAIN + N_VAL
    # Balanced labels (within training and within validation): a head cannot gain from the label prior alone.
    case_labels = np.r_[rng.permutation(np.arange(N_TRAIN) % N_LABELS), rng.permutation(np.arange(N_VAL) % N_LABELS)]
    mark = np.zeros((n_cases, DIM))
    mark[np.arange(n_cases), DIM - N_LABELS + case_labels] = 0.8  # the faint grade mark
    table = _unit(_unit(rng.normal(size=(n_cases, DIM))) + mark)  # (cases, D) frozen query embeddings
    kb_labels = np.arange(N_KB) % N_LABELS
    tags = np.eye(N_LABELS)[kb_labels]  # (KB, L) the grade tag the frozen query cannot see
    image_keys = _unit(np.concatenate([_unit(rng.normal(size=(N_KB, DIM))), tags], axis=1))  # (KB, D + L)
    text_keys = _unit(np.concatenate([_unit(rng.normal(size=(N_KB, DIM))), tags], axis=1))
    items = [KBItem(id=f"kb{j}", image_path=f"kb{j}.png", text=f"grade {kb_labels[j]}", label=LABELS[kb_labels[j]])
             for j in range(N_KB)]
    kb = KnowledgeBase(TableEmbedding(table), items, image_vectors=image_keys, text_vectors=text_keys,
                       image_hashes=[f"kb-hash-{j}" for j in range(N_KB)])
    cases = []
    for i in range(n_cases):
        path = folder / f"case{i}.png"
        write_table_image(path, i)
        cases.append(Case(id=f"case{i}", image_path=str(path), labels=(LABELS[case_labels[i]],)))
    retriever = LVLMAwareRetriever(kb, image_head=_linear_head(), text_head=_linear_head(), k_image=2, k_text=2)
    return {"folder": folder, "kb": kb, "retriever": retriever, "train": cases[:N_TRAIN], "val": cases[N_TRAIN:]}


def _collect(world: dict[str, Any], name: str, cases: list[Case], reader: Reader, n: int = 30) -> FeedbackCache:
    config = FeedbackConfig(n_candidates=n, shard_size=200, reader_batch_size=512)
    return collect_feedback(cases, world["retriever"], reader, world["folder"] / name, config, show_progress=False)


FAST = TrainerConfig(learning_rate=1e-2, max_steps=120, batch_size=64, eval_every=20, show_progress=False)


def _pairs(cache: FeedbackCache) -> set[tuple[str, str]]:
    return {(cid, kb) for h in cache.heads for cid, row in zip(cache.case_ids, cache.candidate_ids(h)) for kb in row}


# ---------------------------------------------------------------------------- temperature
def test_auto_gamma_makes_the_demo_clip_scale_informative() -> None:
    # The demo CLIP: top cosine ~0.987, top-16 span ~0.022 (sorted, with small per-query jitter).
    rng = np.random.default_rng(0)
    gaps = np.sort(rng.uniform(0.0, 0.022, size=(200, 16)), axis=1)
    gaps[:, 0] = 0.0
    scores = torch.tensor(0.987 - gaps, dtype=torch.float32)  # (200, 16)
    mask = torch.ones_like(scores, dtype=torch.bool)
    gamma = auto_gamma(scores, mask)
    h_auto, log_n = retrieval_entropy(scores, mask, gamma)
    h_fixed, _ = retrieval_entropy(scores, mask, 0.05)
    assert h_fixed > 0.98 * log_n  # the paper's 0.05: ~uniform, no signal
    assert h_auto < 0.6 * log_n and gamma < 0.01  # auto: half of log n by construction
    # The loss sees the same: its P_retr (and with an indifferent reader, its target) is far from uniform.
    out = PosteriorKLLoss(gamma=gamma)(scores, torch.zeros_like(scores), frozen_scores=scores)
    assert float(out[ENTROPY_RETRIEVER_KEY].mean()) < 0.6 * log_n
    assert float(out[ENTROPY_TARGET_KEY].mean()) < 0.6 * log_n
    out = PosteriorKLLoss(gamma=0.05)(scores, torch.zeros_like(scores), frozen_scores=scores)
    assert float(out[ENTROPY_TARGET_KEY].mean()) > 0.98 * log_n


def test_engine_resolves_gamma_per_head_and_warns_when_uniform(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    feedback = _collect(world, "fb-small", world["train"][:80], CountingReader())
    config = FAST.model_copy(update={"max_steps": 2, "validation_fraction": 0.0, "gamma": "auto"})
    engine = RetrieverFinetuneEngine(world["retriever"], feedback, config=config)
    temps = {r["head"]: r for r in engine.history if r["event"] == "temperature"}
    assert set(temps) == {"image", "text"} and engine.gammas == {h: temps[h]["gamma"] for h in temps}
    for record in temps.values():
        assert record["rule"] == "auto" and record["mean_entropy"] == pytest.approx(0.5 * record["mean_log_n"], rel=1e-3)
    with caplog.at_level(logging.INFO):
        fixed = RetrieverFinetuneEngine(world["retriever"], feedback, config=config.model_copy(update={"gamma": 10.0}))
    assert fixed.gammas == {"text": 10.0, "image": 10.0}
    assert "retrieval softmax is nearly uniform" in caplog.text


# ---------------------------------------------------------------------------- real validation and adoption
def test_designed_effect_is_adopted_under_real_retrieval_validation(world: dict[str, Any], tmp_path: Path) -> None:
    reader = CountingReader()
    feedback = _collect(world, "fb-true", world["train"], reader)
    reader.scored.clear()
    engine = RetrieverFinetuneEngine(world["retriever"], feedback, head="both", config=FAST, reader=reader,
                                     validation_cases=world["val"])
    engine.finetune()
    vals = [r for r in engine.history if r["event"] == "validation"]
    assert vals[-1]["val_rag_loglik"] > vals[0]["val_rag_loglik"] and "val_outside_pool/image" in vals[0]
    assert vals[0]["val_outside_pool/image"] is None  # the validation cases have no cached pool
    # Each (case, neighbour) pair was scored by the reader once, however many validations saw it.
    assert len(reader.scored) == len(set(reader.scored)) == sum(r["val_pairs_scored"] for r in vals)
    decision = engine.decision
    assert decision is not None and decision.adopted and decision.loglik_lower_bound > 0
    assert decision.delta_accuracy is not None and decision.delta_accuracy >= 0.05
    out = engine.save(tmp_path / "heads")
    record = json.loads((out / "trainer_config.json").read_text())
    assert record["adoption"]["adopted"] and record["adoption"]["message"].startswith("adopted the trained heads")
    saved = QueryHead.from_pretrained(out / "image_head")
    assert saved.trained_on is not None and saved.trained_on["gamma"] == engine.gammas["image"]
    assert saved.trained_on["encoder"]["model_name"] == "table-stub"


def test_head_trained_on_shuffled_labels_is_rejected_and_the_initial_head_saved(
    world: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(1)
    shuffled_labels = rng.permutation([c.labels for c in world["train"]])
    wrong = [dataclasses.replace(c, labels=tuple(y)) for c, y in zip(world["train"], shuffled_labels)]
    reader = CountingReader()
    feedback = _collect(world, "fb-shuffled", wrong, reader)
    # adoption="no_regression" (the default) with the same validation as the designed-effect test.
    engine = RetrieverFinetuneEngine(world["retriever"], feedback, head="both", config=FAST, reader=reader,
                                     validation_cases=world["val"])
    with caplog.at_level(logging.WARNING):
        engine.finetune()
    decision = engine.decision
    assert decision is not None and not decision.adopted
    assert "kept the initial heads (no-regression rule" in caplog.text and "lower bound" in caplog.text
    out = engine.save(tmp_path / "heads")
    record = json.loads((out / "trainer_config.json").read_text())
    assert record["adoption"]["adopted"] is False and record["adoption"]["message"] == decision.message
    history = json.loads((out / "training_history.json").read_text())
    assert [r["kept"] for r in history if r["event"] == "adoption"] == ["initial"]
    for name in ("image_head", "text_head"):
        initial = getattr(world["retriever"], name).state_dict()
        saved = QueryHead.from_pretrained(out / name).state_dict()
        assert all(torch.equal(saved[k], initial[k]) for k in initial), name


def test_no_regression_rule_needs_a_significant_gain_and_no_accuracy_drop() -> None:
    base = ValidationResult(loglik=np.log(np.full(40, 0.5)), correct=np.r_[np.ones(30), np.zeros(10)])
    better = ValidationResult(loglik=np.log(np.full(40, 0.6)), correct=base.correct)
    worse_acc = ValidationResult(loglik=better.loglik, correct=np.r_[np.ones(29), np.zeros(11)])
    noisy = ValidationResult(loglik=base.loglik + np.r_[0.3, -0.29 * np.ones(1), np.zeros(38)], correct=base.correct)
    assert no_regression_decision(base, better).adopted
    assert "accuracy drops" in no_regression_decision(base, worse_acc).message
    assert not no_regression_decision(base, noisy).adopted  # a tiny mean gain whose lower bound is <= 0


# ---------------------------------------------------------------------------- feedback rounds
ROUNDS = TrainerConfig(learning_rate=1e-2, max_steps=60, batch_size=32, validation_fraction=0.0, rounds=2,
                       show_progress=False)


def test_round_two_scores_only_the_new_pairs(world: dict[str, Any]) -> None:
    feedback = _collect(world, "fb-rounds", world["train"][:120], CountingReader(), n=10)
    original = _pairs(feedback)
    reader = CountingReader()
    engine = RetrieverFinetuneEngine(world["retriever"], feedback, head="image", config=ROUNDS, reader=reader,
                                     cases=world["train"][:120])
    engine.finetune()
    (round2,) = [r for r in engine.history if r["event"] == "round"]
    new_pairs = _pairs(engine.feedback) - original
    assert round2["pairs_scored"] == len(reader.scored) == len(set(reader.scored)) == len(new_pairs) > 0
    assert set(reader.scored) == new_pairs and not set(reader.scored) & original
    assert round2["new_candidates"]["image"] >= len(new_pairs)


def test_rounds_resume_after_a_crash_without_rescoring(world: dict[str, Any]) -> None:
    cases = world["train"][120:240]
    _collect(world, "fb-crash", cases, CountingReader(), n=10)
    crashing = CountingReader(fail_after=1)  # the second reader.score call of round 2 raises
    engine = RetrieverFinetuneEngine(world["retriever"], FeedbackCache.from_persist_dir(world["folder"] / "fb-crash"),
                                     head="image", config=ROUNDS, reader=crashing, cases=cases)
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.finetune()
    first = set(crashing.scored)
    assert 0 < len(first)
    # A new process: reload the cache from disk and run again; the finished batch is not scored again.
    again = CountingReader()
    feedback = FeedbackCache.from_persist_dir(world["folder"] / "fb-crash")
    assert len(feedback.pair_store) == len(first)
    engine = RetrieverFinetuneEngine(world["retriever"], feedback, head="image", config=ROUNDS, reader=again,
                                     cases=cases)
    engine.finetune()
    second = set(again.scored)
    assert not first & second and len(again.scored) == len(second)
    assert first | second == _pairs(engine.feedback) - _pairs(feedback)


# ---------------------------------------------------------------------------- L2-SP
class ZeroLoss(torch.nn.Module):
    """A loss with zero gradient everywhere: only the decay can move the weights."""

    def forward(self, scores: torch.Tensor, reader_log_probs: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        return {"loss": scores.sum() * 0.0}


def test_decay_pulls_toward_the_initial_weights_not_toward_zero(world: dict[str, Any]) -> None:
    feedback = _collect(world, "fb-small", world["train"][:80], CountingReader())
    config = FAST.model_copy(update={"max_steps": 20, "learning_rate": 0.1, "weight_decay": 0.5,
                                     "validation_fraction": 0.0})
    engine = RetrieverFinetuneEngine(world["retriever"], feedback, loss=ZeroLoss(), head="both", config=config)
    engine.finetune()
    trained = engine.get_finetuned_model()
    for name in ("image_head", "text_head"):
        initial, after = getattr(world["retriever"], name).state_dict(), getattr(trained, name).state_dict()
        # [I; 0] stays [I; 0]: decoupled decay toward 0 would have shrunk the identity block by ~(1 - 0.1 * 0.5)^20.
        assert all(torch.equal(after[k], initial[k]) for k in initial), name
