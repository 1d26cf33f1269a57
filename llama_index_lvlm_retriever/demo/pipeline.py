"""The whole method end to end, one seed at a time, through the public API.

Per seed: data split -> frozen retriever encoder (small CLIP trained here, or a checkpoint) ->
knowledge base (built and persisted) -> reader (small LLaVA trained with stage-1 SFT, or a
checkpoint) -> feedback from the frozen reader -> LVLM-aware retriever training (encoder mode,
blended tower copy) -> placebo matched in top-k overlap -> evaluation of closed-book, standard
RAG, LVLM-aware RAG and placebo on the test split. Every stage's output is cached under
``<output_dir>/cache/seed<N>/`` with a fingerprint of its settings, so a second run goes straight
to the table; ``fresh=True`` deletes the cache first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llama_index_lvlm_retriever._io import atomic_write_json
from llama_index_lvlm_retriever.data.records import Case
from llama_index_lvlm_retriever.demo.config import DemoConfig
from llama_index_lvlm_retriever.demo.data import (
    DemoData,
    check_disjoint,
    kb_items_as_cases,
    load_demo_data,
)
from llama_index_lvlm_retriever.demo.miniature import train_small_clip, train_small_reader
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.evaluation.dataset import evaluate_dataset
from llama_index_lvlm_retriever.evaluation.placebo import (
    PlaceboCalibration,
    PlaceboQueryHead,
    calibrate_placebo,
    top_k_overlap,
)
from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport
from llama_index_lvlm_retriever.heads import QueryHead
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.readers.cached import CachedReader
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.training.config import FeedbackConfig, TrainerConfig
from llama_index_lvlm_retriever.training.feedback import collect_feedback
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache
from llama_index_lvlm_retriever.training.losses import LSRLoss, PosteriorKLLoss
from llama_index_lvlm_retriever.training.trainer import RetrieverFinetuneEngine
from llama_index_lvlm_retriever.version import __version__

logger = logging.getLogger(__name__)

__all__ = ["SYSTEMS", "SeedRun", "run_seed", "StageCache"]

CLOSED_BOOK_ROW = "closed-book"
STANDARD_ROW = "standard RAG"
AWARE_ROW = "LVLM-aware RAG"
PLACEBO_ROW = "placebo"
SYSTEMS = (CLOSED_BOOK_ROW, STANDARD_ROW, AWARE_ROW, PLACEBO_ROW)
_STAGE_FILE = ".stage.json"

Echo = Callable[[str], None]


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able settings (stage cache keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageCache:
    """Folders of finished stages, each marked with the fingerprint of what produced it.

    A stage folder is built under a temp name and renamed into place only when the stage
    finished, so an interrupted run never leaves a half-written model or index behind.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str, key: str) -> bool:
        marker = self.path(name) / _STAGE_FILE
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text()).get("fingerprint") == key
        except (OSError, json.JSONDecodeError):
            return False

    @contextlib.contextmanager
    def build(self, name: str, key: str) -> Iterator[Path]:
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
        try:
            yield tmp
            atomic_write_json(tmp / _STAGE_FILE, {"fingerprint": key, "version": __version__})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)


@dataclass
class SeedRun:
    """What one seed produced."""

    seed: int
    report: ConsistencyReport
    placebo: PlaceboCalibration
    overlap: float
    sizes: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    retriever: LVLMAwareRetriever | None = None
    reader: HFLVLMReader | None = None
    data: DemoData | None = None


class _Clock:
    """Prints one line per stage with its wall time."""

    def __init__(self, echo: Echo, prefix: str) -> None:
        self.echo, self.prefix = echo, prefix
        self.timings: dict[str, float] = {}
        self.cached: dict[str, bool] = {}

    @contextlib.contextmanager
    def stage(self, name: str, cached: bool = False) -> Iterator[None]:
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.timings[name], self.cached[name] = seconds, cached
        self.echo(f"{self.prefix} {name:<44} {seconds:7.1f} s{'  (cached)' if cached else ''}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_seed(config: DemoConfig, seed: int, echo: Echo = print) -> SeedRun:
    """Run every stage for one seed (reusing cached stages) and evaluate on the test split."""
    _seed_everything(seed)
    cache = StageCache(config.cache_dir / f"seed{seed}")
    clock = _Clock(echo, f"[seed {seed}]")
    progress = config.show_progress

    with clock.stage("data: stratified split, no image in two splits"):
        data = load_demo_data(config, seed)
        if config.dataset == "elpv":
            check_disjoint(data)
    sizes = {"kb": len(data.kb), "train": len(data.train), "val": len(data.val), "test": len(data.test)}
    echo(f"[seed {seed}]   knowledge base {sizes['kb']}, train {sizes['train']}, val {sizes['val']}, "
         f"test {sizes['test']} images")

    # Frozen retriever encoder.
    clip_key = fingerprint("clip", config.clip, config.image_size, config.limit, config.fractions, seed)
    if config.retriever_model is not None:
        with clock.stage(f"retriever encoder: load {config.retriever_model}"):
            embed = CLIPEmbedding.from_pretrained(config.retriever_model, device=config.device)
        clip_key = fingerprint("checkpoint", config.retriever_model)
    else:
        done = cache.done("clip", clip_key)
        with clock.stage("retriever encoder: train a small CLIP (contrastive)", cached=done):
            if not done:
                with cache.build("clip", clip_key) as tmp:
                    train_small_clip(data.kb, tmp, image_size=config.image_size, settings=config.clip, seed=seed,
                                     show_progress=progress)
            embed = CLIPEmbedding.from_pretrained(str(cache.path("clip")))

    # Knowledge base.
    kb_key = fingerprint("kb", clip_key, sorted(item.id for item in data.kb))
    done = cache.done("kb", kb_key)
    with clock.stage("knowledge base: embed, index, persist", cached=done):
        if not done:
            with cache.build("kb", kb_key) as tmp:
                KnowledgeBase.build(data.kb, embed, show_progress=progress).persist(tmp / "index")
        kb = KnowledgeBase.from_persist_dir(cache.path("kb") / "index", embed_model=embed)
    k = config.k
    standard = LVLMAwareRetriever(kb, k_image=k, k_text=0)

    # Reader.
    train_queries = list(data.train)
    if config.reader_model is not None:
        with clock.stage(f"reader: load {config.reader_model}"):
            reader = HFLVLMReader.from_pretrained(config.reader_model, data.task, device=config.device,
                                                  batch_size=config.reader_batch_size)
        reader_key = fingerprint("checkpoint", config.reader_model)
    else:
        reader_key = fingerprint("reader", kb_key, config.reader, sorted(c.id for c in train_queries))
        done = cache.done("reader", reader_key)
        with clock.stage("reader: small LLaVA, stage-1 retrieval-augmented SFT", cached=done):
            if not done:
                with cache.build("reader", reader_key) as tmp:
                    train_small_reader(cache.path("clip"), standard, train_queries, tmp / "model", task=data.task,
                                       settings=config.reader, seed=seed, reader_batch_size=config.reader_batch_size,
                                       show_progress=progress)
            reader = HFLVLMReader.from_pretrained(cache.path("reader") / "model", data.task,
                                                  batch_size=config.reader_batch_size)
    cached_reader = CachedReader(reader)

    # Feedback: training cases plus KB items as leave-one-out queries; validation cases apart.
    settings = config.retriever_training
    kb_cases = kb_items_as_cases(data.kb)
    if settings.kb_queries is not None and settings.kb_queries < len(kb_cases):
        rng = np.random.default_rng(seed)
        kb_cases = [kb_cases[i] for i in sorted(rng.choice(len(kb_cases), settings.kb_queries, replace=False))]
    queries: list[Case] = [*train_queries, *kb_cases]
    feedback_config = FeedbackConfig(n_candidates=settings.n_candidates, heads=("image",),
                                     reader_batch_size=config.reader_batch_size)
    feedback_key = fingerprint("feedback", reader_key, kb_key, settings.n_candidates,
                               sorted(c.id for c in queries), sorted(c.id for c in data.val))
    done = cache.done("feedback", feedback_key)
    n_read = len(queries) + len(data.val)
    with clock.stage(f"feedback: {n_read} queries x top-{settings.n_candidates} read", cached=done):
        if not done:
            with cache.build("feedback", feedback_key) as tmp:
                collect_feedback(queries, standard, reader, tmp / "train", feedback_config, show_progress=progress)
                if data.val:
                    collect_feedback(data.val, standard, reader, tmp / "val", feedback_config, show_progress=progress)
        feedback = FeedbackCache.from_persist_dir(cache.path("feedback") / "train")
        validation = (FeedbackCache.from_persist_dir(cache.path("feedback") / "val") if data.val else None)

    # LVLM-aware retriever training (encoder mode: a blended, trainable copy of the image tower);
    # the checkpoint kept is the best on the validation cases (never the test cases).
    trainer_config = TrainerConfig(
        mode="encoder", alpha=settings.alpha, encoder_last_n_blocks=settings.last_n_blocks,
        max_steps=settings.max_steps, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        n_train_candidates=settings.n_train_candidates, refresh_every=settings.refresh_every,
        eval_every=settings.eval_every, validation_fraction=0.0 if data.val else 0.1, seed=seed,
        device=config.device, show_progress=progress,
    )
    head_key = fingerprint("heads", feedback_key, trainer_config.model_dump(mode="json", exclude={"show_progress"}),
                           settings.loss, settings.gamma)
    done = cache.done("heads", head_key)
    with clock.stage(f"retriever training: {settings.loss} loss, encoder mode", cached=done):
        if not done:
            loss = (PosteriorKLLoss(gamma=settings.gamma) if settings.loss == "posterior"
                    else LSRLoss(gamma=settings.gamma))
            engine = RetrieverFinetuneEngine(standard, feedback, loss=loss, head="image", config=trainer_config,
                                             validation=validation, cases=[*queries, *data.val])
            engine.finetune()
            with cache.build("heads", head_key) as tmp:
                engine.save(tmp / "retriever")
        image_head = QueryHead.from_pretrained(cache.path("heads") / "retriever" / "image_head")
        aware = LVLMAwareRetriever(kb, image_head=image_head, k_image=k, k_text=0)
        history = json.loads((cache.path("heads") / "retriever" / "training_history.json").read_text())

    # Placebo (random perturbation with the trained retriever's top-k overlap) and evaluation;
    # cached together, since the evaluation of a seed depends on nothing else.
    eval_key = fingerprint("evaluation", head_key, k, config.n_bootstrap, sorted(c.id for c in data.test))
    done = cache.done("evaluation", eval_key)
    with clock.stage("placebo: match the top-k overlap", cached=done):
        if done:
            record = json.loads((cache.path("evaluation") / "placebo.json").read_text())
            overlap, calibration = float(record["overlap"]), PlaceboCalibration(**record["calibration"])
        else:
            test_images = [case.image_path for case in data.test]
            frozen = standard.embed_queries(test_images)
            overlap = top_k_overlap(_top_ids(standard, frozen, test_images, k), _top_ids(aware, frozen, test_images, k))
            _, calibration = calibrate_placebo(standard, frozen, overlap, k=k, seed=seed)
        placebo_head = PlaceboQueryHead(kb.dim, calibration.noise_scale, seed)
        placebo = LVLMAwareRetriever(kb, image_head=placebo_head, k_image=k, k_text=0)
    echo(f"[seed {seed}]   top-{k} overlap with standard RAG: LVLM-aware {overlap:.3f}, "
         f"placebo {calibration.achieved_overlap:.3f} (noise scale {calibration.noise_scale:.3f})")

    with clock.stage(f"evaluation: 4 systems on {len(data.test)} test cases", cached=done):
        if done:
            report = ConsistencyReport.from_json(cache.path("evaluation") / "report.json")
        else:
            report = evaluate_dataset(
                data.test,
                {STANDARD_ROW: standard, AWARE_ROW: aware, PLACEBO_ROW: placebo},
                cached_reader,
                data.task,
                k=k,
                closed_book_name=CLOSED_BOOK_ROW,
                baseline=STANDARD_ROW,
                n_bootstrap=config.n_bootstrap,
                seed=seed,
                batch_size=64,
                show_progress=progress,
            )
            with cache.build("evaluation", eval_key) as tmp:
                report.to_json(tmp / "report.json")
                atomic_write_json(tmp / "placebo.json", {"overlap": overlap, "calibration": calibration.to_dict()})
    return SeedRun(
        seed=seed, report=report, placebo=calibration, overlap=overlap, sizes=sizes,
        timings=clock.timings, cached=clock.cached, training=_training_summary(history),
        retriever=aware, reader=reader, data=data,
    )


def _top_ids(retriever: LVLMAwareRetriever, frozen: np.ndarray, images: list[str], k: int) -> list[list[str]]:
    hits = retriever.search_heads(frozen, k_image=k, k_text=0, images=images)["image"]
    return [[hit.item.id for hit in row] for row in hits]


def _training_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Validation RAG log-likelihood at step 0 and at the kept step, and which step was kept."""
    validations = [row for row in history if row.get("event") == "validation" and "val_rag_loglik" in row]
    restored = [row for row in history if row.get("event") == "restored_best"]
    summary: dict[str, Any] = {"n_validations": len(validations)}
    if validations:
        summary["val_rag_loglik_step0"] = validations[0]["val_rag_loglik"]
        summary["val_rag_loglik_best"] = max(row["val_rag_loglik"] for row in validations)
    if restored:
        summary["best_step"] = restored[0].get("best_step")
    return summary
