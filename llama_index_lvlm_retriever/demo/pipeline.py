"""The whole method end to end, one seed at a time, through the public API.

Per seed: data split -> frozen retriever encoder (small CLIP trained here, or a checkpoint) ->
knowledge base (built and persisted) -> reader (small LLaVA trained with stage-1 SFT, or a
checkpoint) -> feedback from the frozen reader -> LVLM-aware retriever training (adapter heads,
or the paper's blended tower copy in encoder mode; feedback rounds) -> placebo matched in top-k
overlap -> the oracle-fit head (the same loop on the test cases' own feedback) -> evaluation of
closed-book, standard RAG, LVLM-aware RAG, placebo and the ceilings on the test split. Every
stage's output is cached under ``<output_dir>/cache/seed<N>/`` with a fingerprint of its settings,
so a second run goes straight to the table; ``fresh=True`` deletes the cache first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llama_index_lvlm_retriever.demo.ceilings import OracleRerankRetriever
from llama_index_lvlm_retriever.demo.config import MINIATURE_DATASETS, DemoConfig
from llama_index_lvlm_retriever.demo.data import (
    DemoData,
    check_disjoint,
    kb_items_as_cases,
    load_demo_data,
)
from llama_index_lvlm_retriever.demo.miniature import (
    train_small_clip,
    train_small_reader,
)
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.evaluation.dataset import evaluate_dataset
from llama_index_lvlm_retriever.evaluation.kb_diagnostics import diagnose_kb
from llama_index_lvlm_retriever.evaluation.placebo import (
    PlaceboCalibration,
    calibrate_placebo,
    top_k_overlap,
)
from llama_index_lvlm_retriever.evaluation.report import ConsistencyReport
from llama_index_lvlm_retriever.heads import PlaceboQueryHead, load_head
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.readers.cached import CachedReader
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.storage.dirswap import (
    remove_leftovers,
    replace_directory,
    restore_previous,
)
from llama_index_lvlm_retriever.storage.files import atomic_write_json, make_temp_dir
from llama_index_lvlm_retriever.storage.locking import folder_lock
from llama_index_lvlm_retriever.training.config import FeedbackConfig, TrainerConfig
from llama_index_lvlm_retriever.training.feedback import collect_feedback
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache
from llama_index_lvlm_retriever.training.trainer import RetrieverFinetuneEngine
from llama_index_lvlm_retriever.version import __version__

logger = logging.getLogger(__name__)

__all__ = ["CEILING_ROWS", "SYSTEMS", "SeedRun", "SeedSetup", "StageCache", "finish_seed", "pool_neighbour_use", "prepare_seed", "run_seed"]

CLOSED_BOOK_ROW = "closed-book"
STANDARD_ROW = "standard RAG"
AWARE_ROW = "LVLM-aware RAG"
PLACEBO_ROW = "placebo"
SYSTEMS = (CLOSED_BOOK_ROW, STANDARD_ROW, AWARE_ROW, PLACEBO_ROW)
ORACLE_LABEL_ROW = "ceiling: same-label first in frozen top-N"
ORACLE_READER_ROW = "ceiling: reader's best of frozen top-N"
ORACLE_FIT_ROW = "ceiling: oracle-fit head (test feedback)"
CEILING_ROWS = (ORACLE_LABEL_ROW, ORACLE_READER_ROW, ORACLE_FIT_ROW)
"""Rows computed with the test cases' labels or feedback: bounds, not legal systems."""
ORACLE_FIT_LOOP = "legal-loop-rounds"
"""Version of how the oracle-fit head is trained (part of the evaluation stage's key): with the legal
loop's feedback rounds; it used to run one round whatever the legal heads ran."""
_STAGE_FILE = ".stage.json"
RETRIEVAL_ORDER = "ties-by-other-modality-1"
"""Version of how retrieval orders tied candidates: the reader's SFT neighbours and the feedback pools
depend on it, so it is part of those stages' keys (a change re-runs them instead of reusing stale ones)."""

Echo = Callable[[str], None]


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able settings (stage cache keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageCache:
    """Folders of finished stages, each marked with the fingerprint of what produced it.

    A stage folder is built under a temp name (``.<name>.tmp-*``) and renamed into place only when
    the stage finished, so an interrupted run never leaves a half-written model or index behind.
    The previous folder is first renamed aside (``.<name>.old-*``) and deleted after; if a kill
    lands between the two renames, :meth:`path` puts the previous folder back, and the next
    :meth:`build` deletes every leftover. Builds hold the cache folder's write lock, so two demo
    runs on one output folder fail clearly instead of racing.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        target = self.root / name
        if not target.exists():
            restore_previous(target)
        return target

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
        with folder_lock(self.root):
            target = self.path(name)
            remove_leftovers(target)
            tmp = make_temp_dir(target.parent, f".{name}.tmp-")
            try:
                yield tmp
                atomic_write_json(tmp / _STAGE_FILE, {"fingerprint": key, "version": __version__})
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            replace_directory(tmp, target)


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


@dataclass
class SeedSetup:
    """Everything of one seed before stage 2: data, frozen encoder, KB, reader and the training feedback."""

    seed: int
    data: DemoData
    sizes: dict[str, int]
    kb: KnowledgeBase
    standard: LVLMAwareRetriever
    reader: HFLVLMReader
    cached_reader: CachedReader
    train_queries: list[Any]
    feedback: FeedbackCache
    feedback_config: FeedbackConfig
    feedback_key: str
    diagnostics: Any
    neighbour_use: dict[str, float]
    cache: StageCache
    clock: _Clock


def run_seed(config: DemoConfig, seed: int, echo: Echo = print) -> SeedRun:
    """Run every stage for one seed (reusing cached stages) and evaluate on the test split."""
    setup = prepare_seed(config, seed, echo)
    return finish_seed(config, setup, echo)


def prepare_seed(config: DemoConfig, seed: int, echo: Echo = print) -> SeedSetup:
    """The stages before retriever training: data, encoder, KB, reader, training feedback (cached)."""
    _seed_everything(seed)
    cache = StageCache(config.cache_dir / f"seed{seed}")
    clock = _Clock(echo, f"[seed {seed}]")
    progress = config.show_progress
    miniature = config.dataset in MINIATURE_DATASETS

    with clock.stage("data: roles, disjoint by content hash"):
        data = load_demo_data(config, seed)
        if miniature:
            check_disjoint(data)
    sizes = {"encoder": len(data.encoder_stage_a), "kb": len(data.kb), "reader_sft": len(data.reader_sft),
             "train": len(data.train), "val": len(data.val), "test": len(data.test)}
    echo(f"[seed {seed}]   encoder {sizes['encoder']}, knowledge base {sizes['kb']}, reader SFT {sizes['reader_sft']}, "
         f"retriever training {sizes['train']}, val {sizes['val']}, test {sizes['test']} images")
    ids = lambda records: sorted(r.id for r in records)  # noqa: E731

    # Frozen retriever encoder: pre-trained on its own role (two stages), or a checkpoint.
    clip_key = fingerprint("clip", config.dataset, config.clip, config.image_size, ids(data.encoder_stage_b),
                           sorted(i.text for i in data.encoder_stage_b), seed,
                           *([config.nuisance_strength] if config.nuisance_strength != 1.0 else []))
    if config.retriever_model is not None:
        with clock.stage(f"retriever encoder: load {config.retriever_model}"):
            embed = CLIPEmbedding.from_pretrained(config.retriever_model, device=config.device)
        clip_key = fingerprint("checkpoint", config.retriever_model)
    else:
        done = cache.done("clip", clip_key)
        with clock.stage("retriever encoder: small CLIP, 2-stage pre-training", cached=done):
            if not done:
                with cache.build("clip", clip_key) as tmp:
                    train_small_clip(data.encoder_stage_b, tmp, image_size=config.image_size, settings=config.clip,
                                     seed=seed, show_progress=progress, stage_a_items=data.encoder_stage_a,
                                     device=config.device)
            embed = CLIPEmbedding.from_pretrained(str(cache.path("clip")), device=config.device)

    # Knowledge base, and what its frozen vectors hold.
    kb_key = fingerprint("kb", clip_key, ids(data.kb), sorted(i.text for i in data.kb))
    done = cache.done("kb", kb_key)
    with clock.stage("knowledge base: embed, index, persist", cached=done):
        if not done:
            with cache.build("kb", kb_key) as tmp:
                KnowledgeBase.build(data.kb, embed, show_progress=progress).persist(tmp / "index")
        kb = KnowledgeBase.from_persist_dir(cache.path("kb") / "index", embed_model=embed)
    diagnostics = diagnose_kb(kb, k=config.k)
    echo(f"[seed {seed}]   frozen KB vectors: linear probe {diagnostics.linear_probe_accuracy:.3f} vs top-{config.k} "
         f"label precision {diagnostics.topk_precision_image:.3f} (image) / {diagnostics.topk_precision_text:.3f} "
         f"(caption); majority {diagnostics.majority_baseline:.3f}")
    standard = LVLMAwareRetriever(kb, k_image=config.k_image, k_text=config.k_text)

    # Real mode has no retriever-training role: the KB's labelled items serve, leave-one-out.
    train_queries = list(data.train) or kb_items_as_cases(data.kb)
    # Reader: stage-1 SFT on its own queries (retrieved + sampled same-/other-label neighbours).
    sft_queries = list(data.reader_sft or train_queries)
    if config.reader_model is not None:
        with clock.stage(f"reader: load {config.reader_model}"):
            reader = HFLVLMReader.from_pretrained(config.reader_model, data.task, device=config.device,
                                                  batch_size=config.reader_batch_size)
        reader_key = fingerprint("checkpoint", config.reader_model)
    else:
        reader_key = fingerprint("reader", kb_key, config.reader, ids(sft_queries), config.k_image, config.k_text,
                                 RETRIEVAL_ORDER)
        done = cache.done("reader", reader_key)
        with clock.stage("reader: small LLaVA, stage-1 SFT", cached=done):
            if not done:
                with cache.build("reader", reader_key) as tmp:
                    train_small_reader(cache.path("clip"), standard, sft_queries, tmp / "model", task=data.task,
                                       settings=config.reader, seed=seed, reader_batch_size=config.reader_batch_size,
                                       show_progress=progress, device=config.device)
            reader = HFLVLMReader.from_pretrained(cache.path("reader") / "model", data.task, device=config.device,
                                                  batch_size=config.reader_batch_size)
    cached_reader = CachedReader(reader)

    # Feedback on the retriever-training queries (both heads), then LVLM-aware training: text head,
    # then image head (the paper's order), gamma from the encoder, selection on real retrieval of
    # the validation cases, the no-regression rule, feedback rounds.
    settings = config.retriever_training
    feedback_config = FeedbackConfig(n_candidates=settings.n_candidates, heads=_heads(config),
                                     reader_batch_size=config.reader_batch_size)
    feedback_key = fingerprint("feedback", reader_key, kb_key, settings.n_candidates, ids(train_queries),
                               config.k_image, config.k_text, RETRIEVAL_ORDER)
    done = cache.done("feedback", feedback_key)
    with clock.stage(f"feedback: {len(train_queries)} queries x top-{settings.n_candidates} per head", cached=done):
        if not done:
            with cache.build("feedback", feedback_key) as tmp:
                collect_feedback(train_queries, standard, reader, tmp / "train", feedback_config, show_progress=progress)
        feedback = FeedbackCache.from_persist_dir(cache.path("feedback") / "train")
    neighbour_use = pool_neighbour_use(feedback, kb, {case.id: case.labels[0] for case in train_queries})
    echo(f"[seed {seed}]   reader in the training pools: P(gold) {neighbour_use['same_label']:.3f} with a same-label "
         f"candidate vs {neighbour_use['other_label']:.3f} with an other-label one")
    return SeedSetup(seed=seed, data=data, sizes=sizes, kb=kb, standard=standard, reader=reader,
                     cached_reader=cached_reader, train_queries=train_queries, feedback=feedback,
                     feedback_config=feedback_config, feedback_key=feedback_key, diagnostics=diagnostics,
                     neighbour_use=neighbour_use, cache=cache, clock=clock)


def finish_seed(config: DemoConfig, setup: SeedSetup, echo: Echo = print) -> SeedRun:
    """Stage 2 (legal and oracle-fit heads), the placebo and the evaluation of one prepared seed."""
    seed, data, kb, standard, reader = setup.seed, setup.data, setup.kb, setup.standard, setup.reader
    cached_reader, train_queries, feedback = setup.cached_reader, setup.train_queries, setup.feedback
    feedback_config, feedback_key, cache, clock = setup.feedback_config, setup.feedback_key, setup.cache, setup.clock
    settings, progress = config.retriever_training, config.show_progress
    ids = lambda records: sorted(r.id for r in records)  # noqa: E731
    trainer_config = _trainer_config(config, seed, adoption="no_regression")
    head_key = fingerprint("heads", feedback_key, trainer_config.model_dump(mode="json", exclude={"show_progress"}),
                           ids(data.val))
    done = cache.done("heads", head_key)
    with clock.stage(f"retriever training: {settings.mode} mode, {settings.rounds} round(s)", cached=done):
        if not done:
            engine = RetrieverFinetuneEngine(standard, feedback, head=_train_head(config),
                                             config=trainer_config, reader=reader, cases=train_queries,
                                             validation_cases=data.val)
            engine.finetune()
            with cache.build("heads", head_key) as tmp:
                engine.save(tmp / "retriever", notes={"target_choice": target_choice()})
        aware = _load_retriever(kb, cache.path("heads") / "retriever", config)
        record = json.loads((cache.path("heads") / "retriever" / "trainer_config.json").read_text())
    adoption = record.get("adoption") or {}
    echo(f"[seed {seed}]   {adoption.get('message', 'no adoption record')}")

    # Placebo, ceilings and evaluation, cached together (they depend on nothing else).
    eval_key = fingerprint("evaluation", head_key, config.k_image, config.k_text, config.ceiling_pool,
                           config.n_bootstrap, ids(data.test), ORACLE_FIT_LOOP)
    done = cache.done("evaluation", eval_key)
    test_images = [case.image_path for case in data.test]
    with clock.stage("placebo: match the top-k overlap", cached=done):
        if done:
            saved = json.loads((cache.path("evaluation") / "placebo.json").read_text())
            overlap, calibration = float(saved["overlap"]), PlaceboCalibration(**saved["calibration"])
        else:
            frozen = standard.embed_queries(test_images)
            overlap = top_k_overlap(_top_ids(standard, frozen, test_images, config),
                                    _top_ids(aware, frozen, test_images, config))
            _, calibration = calibrate_placebo(standard, frozen, overlap, k=config.k_image, k_text=config.k_text,
                                               seed=seed)
        placebo_head = PlaceboQueryHead(kb.dim, calibration.noise_scale, seed)
        placebo = LVLMAwareRetriever(kb, image_head=placebo_head, text_head=placebo_head if config.k_text else None,
                                     k_image=config.k_image, k_text=config.k_text)
    echo(f"[seed {seed}]   top-{config.k} overlap with standard RAG: LVLM-aware {overlap:.3f}, "
         f"placebo {calibration.achieved_overlap:.3f} (noise scale {calibration.noise_scale:.3f})")

    with clock.stage("ceiling: oracle-fit head on the test feedback", cached=done):
        if not done:
            with cache.build("oracle_fit", eval_key) as tmp:
                test_feedback = collect_feedback(data.test, standard, reader, tmp / "feedback", feedback_config,
                                                 show_progress=progress)
                # The same loop as the legal heads, feedback rounds included (the reader scores what the
                # trained heads newly retrieve), without validation: the last checkpoint is kept.
                engine = RetrieverFinetuneEngine(standard, test_feedback, head=_train_head(config),
                                                 config=_trainer_config(config, seed, adoption="best"),
                                                 cases=data.test, reader=reader)
                engine.finetune()
                engine.save(tmp / "retriever")
                # The evaluation reads mostly these pairs again: answer them from the feedback, not the reader.
                cached_reader.prefill(engine.feedback.pair_log_probs())
        oracle_fit = _load_retriever(kb, cache.path("oracle_fit") / "retriever", config)

    with clock.stage(f"evaluation: {len(SYSTEMS) - 1} systems + ceilings on {len(data.test)} test cases", cached=done):
        if done:
            report = ConsistencyReport.from_json(cache.path("evaluation") / "report.json")
        else:
            systems: dict[str, Any] = {STANDARD_ROW: standard, AWARE_ROW: aware, PLACEBO_ROW: placebo}
            systems[ORACLE_LABEL_ROW] = OracleRerankRetriever(standard, data.test, pool=config.ceiling_pool,
                                                              rule="same_label")
            systems[ORACLE_READER_ROW] = OracleRerankRetriever(standard, data.test, pool=config.ceiling_pool,
                                                               rule="reader", reader=cached_reader)
            systems[ORACLE_FIT_ROW] = oracle_fit
            report = evaluate_dataset(
                data.test, systems, cached_reader, data.task, k=None, closed_book_name=CLOSED_BOOK_ROW,
                baseline=STANDARD_ROW, n_bootstrap=config.n_bootstrap, seed=seed, batch_size=64,
                show_progress=progress,
            )
            with cache.build("evaluation", eval_key) as tmp:
                report.to_json(tmp / "report.json")
                atomic_write_json(tmp / "placebo.json", {"overlap": overlap, "calibration": calibration.to_dict()})
    training = {**_training_summary(record), "diagnostics": setup.diagnostics.to_dict(),
                "neighbour_use": setup.neighbour_use,
                # How close each system's neighbours come to the pairs the reader itself would pick.
                "overlap_with_reader_best": {row: overlap_with(report, row, ORACLE_READER_ROW)
                                             for row in (STANDARD_ROW, AWARE_ROW, PLACEBO_ROW, ORACLE_FIT_ROW)
                                             if row in report.rows}}
    return SeedRun(
        seed=seed, report=report, placebo=calibration, overlap=overlap, sizes=setup.sizes,
        timings=clock.timings, cached=clock.cached, training=training,
        retriever=aware, reader=reader, data=data,
    )


TARGET_CHOICE_FILE = Path(__file__).with_name("target_choice.json")


def target_choice() -> dict[str, Any]:
    """How the demo's stage-2 target was chosen: the grid with each point's validation numbers.

    Written by ``training/target_grid.py`` runs (validation columns only; no test number enters the
    choice) and shipped with the package, so every saved ``trainer_config.json`` carries it.
    """
    return json.loads(TARGET_CHOICE_FILE.read_text(encoding="utf-8"))


def _heads(config: DemoConfig) -> tuple[str, ...]:
    return tuple(h for h, k in (("image", config.k_image), ("text", config.k_text)) if k > 0)


def _train_head(config: DemoConfig) -> str:
    heads = _heads(config)
    return "both" if len(heads) == 2 else heads[0]


def _trainer_config(config: DemoConfig, seed: int, *, adoption: str) -> TrainerConfig:
    settings = config.retriever_training
    return TrainerConfig(
        mode=settings.mode, alpha=settings.alpha, encoder_last_n_blocks=settings.last_n_blocks,
        schedule="sequential", max_steps=settings.max_steps, batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        n_train_candidates=settings.n_train_candidates,
        refresh_every=settings.refresh_every, eval_every=settings.eval_every, gamma=settings.gamma,
        loss=settings.loss, prior_gamma=settings.prior_gamma, beta=settings.beta,
        inconsistent_weight=settings.inconsistent_weight,
        rounds=settings.rounds, adoption=adoption, validation_fraction=0.0, seed=seed,
        device=config.device, show_progress=config.show_progress,
    )


def _load_retriever(kb: KnowledgeBase, folder: Path, config: DemoConfig) -> LVLMAwareRetriever:
    return LVLMAwareRetriever(
        kb, load_head(folder / "image_head") if config.k_image else None,
        load_head(folder / "text_head") if config.k_text else None,
        k_image=config.k_image, k_text=config.k_text,
    )


def pool_neighbour_use(feedback: FeedbackCache, kb: KnowledgeBase, gold: dict[str, str]) -> dict[str, float]:
    """Mean P_reader(gold) over the training pools' candidates whose KB label is / is not the case's label.

    Measured on the pairs stage 2 actually trains on (every head's candidates), so it says how much
    the reader's feedback can tell a helpful candidate from another within what the retriever finds.
    Items without a label are left out.
    """
    labels = {item.id: item.label for item in kb.items}
    same: list[float] = []
    other: list[float] = []
    for head in feedback.heads:
        p_gold = feedback.gold_log_probs(head).exp().numpy()  # (n, N)
        for row, (case_id, candidates) in enumerate(zip(feedback.case_ids, feedback.candidate_ids(head))):
            for col, item_id in enumerate(candidates):
                label = labels.get(item_id)
                if label is not None and case_id in gold:
                    (same if label == gold[case_id] else other).append(float(p_gold[row, col]))
    mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
    return {"same_label": mean(same), "other_label": mean(other), "n_same": len(same), "n_other": len(other)}


def _top_ids(retriever: LVLMAwareRetriever, frozen: np.ndarray, images: list[str], config: DemoConfig) -> list[list[str]]:
    """Each query's image-head ids, then its text-head ids not already among them (as the placebo compares)."""
    hits = retriever.search_heads(frozen, k_image=config.k_image, k_text=config.k_text, images=images)
    return [list(dict.fromkeys(h.item.id for h in [*hits["image"][i], *hits["text"][i]])) for i in range(len(images))]


def _training_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The resolved temperatures, the target diagnostics and the adoption decision of the retriever training."""
    diagnostics = record.get("target_diagnostics") or {}
    return {"gamma": record.get("gamma"), "adoption": record.get("adoption"), "target_diagnostics": diagnostics,
            "frozen_topk_share": {head: found.get("frozen_topk_share") for head, found in diagnostics.items()}}


def overlap_with(report: ConsistencyReport, system: str, reference: str) -> float:
    """Mean share of ``system``'s neighbours (per test case) that ``reference`` also returned."""
    wanted = {row.case_id: set(row.neighbour_ids) for row in report.rows[reference]}
    shares = [len(set(row.neighbour_ids) & wanted.get(row.case_id, set())) / len(row.neighbour_ids)
              for row in report.rows[system] if row.neighbour_ids]
    return float(np.mean(shares)) if shares else float("nan")
