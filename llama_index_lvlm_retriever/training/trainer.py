"""RetrieverFinetuneEngine: train the retriever's query heads from cached reader feedback.

Stage 2 of arXiv 2508.17394 with the reader frozen. In ``"adapter"`` mode a residual
:class:`~llama_index_lvlm_retriever.heads.QueryHead` sits on the *frozen* query embedding and scores
a cached candidate by ``cos(head(e), key_c)``, ``key_c`` its stored KB vector (the KB is never
re-embedded); in ``"encoder"`` mode each head is an
:class:`~llama_index_lvlm_retriever.heads.EncoderQueryHead` (a trainable copy of the image tower,
blended with the frozen embedding; needs ``cases=`` for the query images).

Each step samples a batch of cases, scores their candidates and minimises the loss
``TrainerConfig.loss`` names (:func:`config_loss`), with ``gamma`` resolved per head
(:mod:`~llama_index_lvlm_retriever.training.temperature`). Before training,
:func:`~llama_index_lvlm_retriever.training.target_diagnostics.diagnose_target` measures whether each
head's target can change the frozen top-k at all, and warns when it cannot.

**Candidate refresh.** With ``n_train_candidates = n`` below the pool size, the softmax runs over the
pool's top ``n`` under the *current* head, re-drawn every ``refresh_every`` steps; **feedback
rounds** (``rounds > 1``, needs the reader) add what the trained heads retrieve to the pool.

**Model selection.** Every ``eval_every`` steps (and at step 0) the engine validates: on *real
retrieval* with the reader
(:class:`~llama_index_lvlm_retriever.training.validation.RetrievalValidator`), else on the cached
pools. The best checkpoint on one part of the validation cases is kept; the **no-regression rule**
then adopts it only when it beats the initial heads on the other part (``adoption_holdout``;
paired bootstrap lower bound > 0 on the log-likelihood, accuracy not lower), else the initial heads
are kept and the log, the history and ``trainer_config.json`` say so.

**L2-SP.** The loss gains ``weight_decay * ||w - w0||^2`` toward the initial weights (the frozen
tower copy, the identity adapter), never toward zero; AdamW's own decay is 0.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    get_cosine_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
)

from llama_index_lvlm_retriever.data.records import Case
from llama_index_lvlm_retriever.heads import EncoderQueryHead, QueryHead
from llama_index_lvlm_retriever.heads.kb_match import KB_RECORD_KEY, knowledge_base_record
from llama_index_lvlm_retriever.kb.encoding import describe_encoder
from llama_index_lvlm_retriever.outputs.model_card import write_model_card
from llama_index_lvlm_retriever.retriever import HEAD_IMAGE, HEAD_TEXT, LVLMAwareRetriever
from llama_index_lvlm_retriever.storage.dirswap import swapped_directory
from llama_index_lvlm_retriever.storage.files import atomic_write_bytes as atomic_write
from llama_index_lvlm_retriever.storage.files import json_bytes
from llama_index_lvlm_retriever.training.config import TrainerConfig, TrainHead
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache
from llama_index_lvlm_retriever.training.head_data import (
    HeadData,
    build_head_data,
    candidate_scores,
    pool_scores,
    query_pixels,
)
from llama_index_lvlm_retriever.training.head_init import initial_head
from llama_index_lvlm_retriever.training.loss_config import config_loss
from llama_index_lvlm_retriever.training.losses import LOSS_KEY
from llama_index_lvlm_retriever.training.reporting import TrainingReporter
from llama_index_lvlm_retriever.training.rounds import expand_pools
from llama_index_lvlm_retriever.training.target_diagnostics import (
    TargetDiagnostics,
    diagnose_target,
)
from llama_index_lvlm_retriever.training.temperature import resolve_gamma
from llama_index_lvlm_retriever.training.validation import (
    OUTSIDE_POOL_WARNING,
    AdoptionDecision,
    ValidationResult,
    build_validator,
    no_regression_decision,
    pool_rag_loglik,
    split_for_adoption,
)
from llama_index_lvlm_retriever.version import package_versions

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.readers.base import Reader

logger = logging.getLogger(__name__)

TRAINER_CONFIG_FILE = "trainer_config.json"
HISTORY_FILE = "training_history.json"
IMAGE_HEAD_DIR = "image_head"
TEXT_HEAD_DIR = "text_head"
L2SP_KEY = "l2sp"
_HEAD_DIRS = {HEAD_IMAGE: IMAGE_HEAD_DIR, HEAD_TEXT: TEXT_HEAD_DIR}
_TRAIN_HEADS: dict[str, tuple[str, ...]] = {
    "text": (HEAD_TEXT,),
    "image": (HEAD_IMAGE,),
    # The paper's order: the text head first, then the image head.
    "both": (HEAD_TEXT, HEAD_IMAGE),
}


class RetrieverFinetuneEngine:
    """Fine-tune an :class:`LVLMAwareRetriever`'s query heads on cached reader feedback.

    Shaped like LlamaIndex's fine-tuning engines: build, :meth:`finetune`, then
    :meth:`get_finetuned_model` (a retriever over the same knowledge base with the new heads) or
    :meth:`save`. A head the retriever already has (trained) is trained further; otherwise a fresh
    residual head (``config.head_kind``) starts as the identity, i.e. standard RAG.

    Args:
        retriever: The retriever that collected ``feedback`` (checked; the cache names it).
        feedback: Training feedback from ``collect_feedback``.
        loss: A loss module ``forward(scores, reader_log_probs, *, frozen_scores, mask, disagree)``
            returning a dict with a scalar ``"loss"``, used for every head as it is; or a factory
            ``gamma -> loss module`` called per head with ``config.gamma`` resolved for that head
            (e.g. ``functools.partial(LSRLoss, beta=0.5)``); ``None`` = ``PosteriorKLLoss``.
        head: Which heads to train: ``"text"``, ``"image"`` or ``"both"``.
        config: Optimisation settings; ``None`` = defaults.
        validation: Validation feedback (same retriever); ``None`` holds out
            ``config.validation_fraction`` of ``feedback`` by case (unless ``validation_cases`` is
            given; 0 = no validation, no selection).
        cases: The Case records of ``feedback`` (and of ``validation``): needed in ``"encoder"``
            mode (query images), for feedback rounds and for real-retrieval validation of a held-out
            split. Matched to the cache's rows by case id.
        reader: The frozen reader that scored ``feedback``. With it, validation runs on real
            retrieval (new pairs scored through the cache) and feedback rounds are possible; without
            it, validation re-ranks the cached pools (logged as a warning).
        validation_cases: Validation cases (with ``reader``); ``None`` = the Case records of
            ``validation`` (or of the held-out split) found in ``cases``.

    Raises:
        ValueError: A bad ``head`` or ``mode``, a cache from another retriever or reader, a head the
            cache has no candidates for, dimensions that do not fit, no case with a candidate,
            missing ``cases`` (encoder mode, rounds, real validation) or ``reader`` (rounds).
        TypeError: Encoder mode with an embedding model that has no CLIP image tower.

    Example:
        .. code-block:: python

            from llama_index_lvlm_retriever.training import RetrieverFinetuneEngine, TrainerConfig, collect_feedback

            feedback = collect_feedback(train_cases, retriever, reader, "runs/feedback")
            engine = RetrieverFinetuneEngine(retriever, feedback, head="both", cases=train_cases, reader=reader,
                                             validation_cases=val_cases,
                                             config=TrainerConfig(schedule="sequential", rounds=2))
            engine.finetune()  # logs "adopted the trained heads: ..." or "kept the initial heads ..."
            engine.save("runs/heads")  # image_head/, text_head/, trainer_config.json, training_history.json
    """

    def __init__(
        self,
        retriever: LVLMAwareRetriever,
        feedback: FeedbackCache,
        loss: nn.Module | Callable[[float], nn.Module] | None = None,
        head: TrainHead = "both",
        config: TrainerConfig | None = None,
        validation: FeedbackCache | None = None,
        cases: Sequence[Case] | None = None,
        reader: Reader | None = None,
        validation_cases: Sequence[Case] | None = None,
    ) -> None:
        cfg = self._config = config or TrainerConfig()
        self._encoder = cfg.mode == "encoder"
        if self._encoder and cases is None:
            raise ValueError(
                "TrainerConfig(mode='encoder') trains a copy of the image tower on the query images: pass "
                "cases= (the Case records of the feedback cache's case ids), or use mode='adapter'"
            )
        if cfg.rounds > 1 and (reader is None or cases is None):
            raise ValueError(
                f"TrainerConfig(rounds={cfg.rounds}) scores the trained heads' new candidates with the reader: pass "
                "reader= and cases= (the training cases), or set rounds=1"
            )
        if head not in _TRAIN_HEADS:
            raise ValueError(f"head must be one of {list(_TRAIN_HEADS)}, got {head!r}")
        self._cases = {case.id: case for case in (*(cases or ()), *(validation_cases or ()))}
        self._case_images = {cid: case.image_path for cid, case in self._cases.items()}
        self._retriever, self._reader = retriever, reader
        self._head_choice: TrainHead = head
        self._trained: tuple[str, ...] = _TRAIN_HEADS[head]
        for cache in (feedback, validation):
            if cache is not None:
                cache.check_retriever(retriever)
                if reader is not None:
                    cache.check_reader(reader)
        for name in self._trained:
            if name not in feedback.heads:
                raise ValueError(
                    f"cannot train the {name} head: the feedback cache has candidates for {list(feedback.heads)} "
                    f"only; collect feedback with FeedbackConfig(heads=...) including {name!r} or choose head="
                    f"{feedback.heads[0]!r}"
                )
        self._device = torch.device(cfg.device)
        self._seed_everything()
        self._heads: dict[str, QueryHead | EncoderQueryHead] = {n: initial_head(retriever, n, feedback.dim, cfg, self._device) for n in self._trained}
        # Initial weights: the L2-SP anchor and what the no-regression rule falls back to.
        self._initial = {n: copy.deepcopy(h.state_dict()) for n, h in self._heads.items()}
        self._anchors = {n: {k: p.detach().clone() for k, p in h.named_parameters() if p.requires_grad}
                         for n, h in self._heads.items()}
        if validation is None and validation_cases is None and cfg.validation_fraction > 0:
            n_val = int(round(len(feedback) * cfg.validation_fraction))
            if 1 <= n_val < len(feedback):
                feedback, validation = feedback.split(cfg.validation_fraction, seed=cfg.seed)
            else:
                logger.warning("validation_fraction=%s of %d cases holds out %d; training without validation "
                               "(the final heads are kept)", cfg.validation_fraction, len(feedback), n_val)
        self._feedback = feedback
        self._train = {name: self._head_data(feedback, name) for name in self._trained}
        for name, data in self._train.items():
            if data.rows.numel() == 0:
                raise ValueError(
                    f"no training case has a {name}-head candidate in the feedback cache; "
                    "collect feedback on a knowledge base with items to retrieve"
                )
        self._val = {name: self._head_data(validation, name) for name in self._trained} if validation else None
        if self._val is not None and any(data.rows.numel() == 0 for data in self._val.values()):
            logger.warning("no validation case has candidates for every trained head; pool validation is off")
            self._val = None
        self._validator = build_validator(retriever, reader, feedback, validation, validation_cases, self._cases)
        if cfg.selection_metric == "val_loss" and self._val is None and self._validator is not None:
            raise ValueError("selection_metric='val_loss' needs validation feedback (validation= or a held-out split) "
                             "for the cached pools; use selection_metric='val_rag_loglik' with validation_cases=")
        self._history: list[dict[str, Any]] = []
        self._reporter = TrainingReporter(("none",), None)  # finetune() opens the configured one
        fixed = loss if isinstance(loss, nn.Module) else None
        factory = (lambda gamma: config_loss(cfg, gamma)) if loss is None else loss
        self._gammas: dict[str, float] = {}
        self._losses: dict[str, nn.Module] = {}
        self._target_diagnostics: dict[str, TargetDiagnostics] = {}
        for name in self._trained:
            data, n_keep = self._train[name], cfg.n_train_candidates
            # Pools are sorted by the collecting retriever: the first columns are the frozen training candidates.
            width = data.mask.shape[1] if n_keep is None else min(n_keep, data.mask.shape[1])
            self._gammas[name], record = resolve_gamma(name, data.frozen_scores[:, :width], data.mask[:, :width],
                                                       cfg.gamma, fixed)
            self._history.append(record)
            self._losses[name] = fixed if fixed is not None else factory(self._gammas[name])
            if hasattr(self._losses[name], "optimum_order"):  # a user's own loss may not say where its optimum is
                found = diagnose_target(self._losses[name], data.frozen_scores[:, :width], data.gold[:, :width],
                                        data.mask[:, :width], k=self._val_k(name), head=name)
                self._target_diagnostics[name] = found
                self._history.append({"event": "target_diagnostics", **found.to_dict()})
        self._holdout: tuple[int, np.ndarray, np.ndarray] | None = None  # (n, selection rows, adoption rows)
        self._cols: dict[str, torch.Tensor] = {}
        self._baseline: ValidationResult | None = None
        self._last_best: ValidationResult | None = None
        self._decision: AdoptionDecision | None = None
        self._finetuned = False

    # ------------------------------------------------------------------ setup
    def _seed_everything(self) -> None:
        torch.manual_seed(self._config.seed)
        np.random.seed(self._config.seed)

    def _head_data(self, cache: FeedbackCache, name: str, pixels: torch.Tensor | None = None) -> HeadData:
        if self._encoder and pixels is None:
            pixels = query_pixels(self._retriever.knowledge_base, cache, self._case_images)
        return build_head_data(cache, name, self._retriever.knowledge_base, self._device, pixels=pixels)

    # ------------------------------------------------------------------ public API
    @classmethod
    def class_name(cls) -> str:
        """Stable name of the component."""
        return "RetrieverFinetuneEngine"

    @property
    def config(self) -> TrainerConfig:
        """The settings."""
        return self._config

    @property
    def history(self) -> list[dict[str, Any]]:
        """Logged temperatures, training steps, validations, rounds and the adoption decision, in order (a copy)."""
        return copy.deepcopy(self._history)

    @property
    def gammas(self) -> dict[str, float]:
        """The resolved softmax temperature per trained head."""
        return dict(self._gammas)

    @property
    def target_diagnostics(self) -> dict[str, TargetDiagnostics]:
        """Per trained head: whether the loss's optimum can change the frozen top-k (measured before training)."""
        return dict(self._target_diagnostics)

    @property
    def feedback(self) -> FeedbackCache:
        """The training feedback (after rounds: with the merged pools)."""
        return self._feedback

    @property
    def decision(self) -> AdoptionDecision | None:
        """The no-regression decision of the last :meth:`finetune` (``None`` before, or without validation)."""
        return self._decision

    def finetune(self) -> None:
        """Train the chosen heads for ``config.rounds`` rounds, keep the best, and apply the adoption rule."""
        self._seed_everything()
        cfg = self._config
        self._reporter = TrainingReporter(cfg.report_to, cfg.report_dir, run_name="train-retriever")
        try:
            for round_ in range(1, cfg.rounds + 1):
                if round_ > 1:
                    self._next_round(round_)
                phases = [(n,) for n in self._trained] if cfg.schedule == "sequential" else [self._trained]
                for names in phases:
                    self._train_phase(names, round_)
        finally:
            self._reporter.close()
        self._adopt()
        self._finetuned = True

    def get_finetuned_model(self) -> LVLMAwareRetriever:
        """A retriever over the same knowledge base with the trained heads (and the others unchanged)."""
        if not self._finetuned:
            logger.warning("get_finetuned_model() before finetune(): returning the initial heads")
        heads = {HEAD_IMAGE: self._retriever.image_head, HEAD_TEXT: self._retriever.text_head}
        kb = self._retriever.knowledge_base
        record = {"encoder": describe_encoder(kb.embed_model, with_probe=False), KB_RECORD_KEY: knowledge_base_record(kb)}
        for name, head in self._heads.items():
            heads[name] = copy.deepcopy(head).to("cpu").eval()
            heads[name].trained_on = {**record, "gamma": self._gammas[name]}
        base = self._retriever.config
        return LVLMAwareRetriever(kb, heads[HEAD_IMAGE], heads[HEAD_TEXT], k_image=base.k_image, k_text=base.k_text,
                                  question_weight=base.question_weight, head_fusion=base.head_fusion,
                                  exclude_self=base.exclude_self, show_progress=base.show_progress,
                                  allow_other_kb=base.allow_other_kb)

    def save(self, output_dir: str | Path, *, notes: dict[str, Any] | None = None) -> Path:
        """Write ``image_head/``, ``text_head/``, ``trainer_config.json`` and ``training_history.json``.

        A head that was not trained is saved as the retriever has it (the identity when it has none);
        trained heads record the encoder and KB they were trained for (``trained_on`` in their
        config). ``trainer_config.json`` holds the resolved ``gamma`` per head, the target
        diagnostics, the adoption decision and ``notes`` (e.g. how the settings were chosen).

        Returns:
            The folder.
        """
        out, model = Path(output_dir), self.get_finetuned_model()
        # The heads and the record are written whole and swapped in together: a killed save
        # leaves the previous folder, never a new image head beside an old text head.
        with swapped_directory(out) as tmp:
            self._write(tmp, model, notes or {})
        logger.info("saved fine-tuned heads and training record to %s", out)
        return out

    def _write(self, out: Path, model: LVLMAwareRetriever, notes: dict[str, Any]) -> None:
        for name, head in ((HEAD_IMAGE, model.image_head), (HEAD_TEXT, model.text_head)):
            (head or QueryHead.identity(int(model.knowledge_base.dim))).save_pretrained(out / _HEAD_DIRS[name])
        record = {
            "class_name": self.class_name(), "config": self._config.model_dump(mode="json"), "head": self._head_choice,
            "loss": {"class_name": type(self._losses[self._trained[0]]).__name__,
                     "repr": {name: repr(loss) for name, loss in self._losses.items()}},
            "gamma": self._gammas,
            "target_diagnostics": {name: found.to_dict() for name, found in self._target_diagnostics.items()},
            "adoption": self._decision.to_dict() if self._decision is not None else None,
            "versions": package_versions(),
            **notes,
        }
        atomic_write(out / TRAINER_CONFIG_FILE, json_bytes(record))
        self._write_cards(out, model)
        atomic_write(out / HISTORY_FILE, json_bytes(self._history))

    def _write_cards(self, out: Path, model: LVLMAwareRetriever) -> None:
        """A model card (README.md with the Hugging Face header) next to each trained head."""
        encoder = getattr(model.knowledge_base.embed_model, "model_name", None)
        validation = self._decision.card_metrics() if self._decision is not None else None
        task = self._reader.task if self._reader is not None else None
        for name in self._trained:
            write_model_card(
                out / _HEAD_DIRS[name], kind="query-head", base_model=encoder, task=task,
                training={**self._config.model_dump(mode="json"), "head": name, "gamma": self._gammas.get(name)},
                validation=validation, validation_dataset="validation cases (paired vs the initial heads)",
                notes=self._decision.message if self._decision is not None else "",
            )

    # ------------------------------------------------------------------ rounds and adoption
    def _next_round(self, round_: int) -> None:
        assert self._reader is not None  # checked in __init__
        merged, stats = expand_pools(self._feedback, self._retriever, self._with_heads(), self._trained, self._reader, self._cases)
        self._feedback = merged
        self._train = {n: self._head_data(merged, n, pixels=self._train[n].pixels) for n in self._trained}
        self._history.append({"event": "round", "round": round_, **stats, "n_candidates": merged.n_candidates})
        logger.info("round %d: %s new candidates, %d new pairs scored by the reader; pool width %d",
                    round_, stats["new_candidates"], stats["pairs_scored"], merged.n_candidates)

    def _with_heads(self) -> LVLMAwareRetriever:
        base = self._retriever
        heads = {HEAD_IMAGE: base.image_head, HEAD_TEXT: base.text_head, **self._heads}
        for head in self._heads.values():
            head.eval()
        return LVLMAwareRetriever(base.knowledge_base, heads[HEAD_IMAGE], heads[HEAD_TEXT], k_image=base.k_image,
                                  k_text=base.k_text, question_weight=base.question_weight,
                                  head_fusion=base.config.head_fusion, allow_other_kb=base.config.allow_other_kb)

    def _adopt(self) -> None:
        cfg = self._config
        final = self._last_best
        if self._baseline is None or final is None:
            self._decision = None
            return
        holdout = self._split(len(final.loglik))[1]
        self._decision = no_regression_decision(self._baseline.subset(holdout), final.subset(holdout),
                                                confidence=cfg.adoption_confidence,
                                                n_resamples=cfg.bootstrap_resamples, seed=cfg.seed)
        adopted = self._decision.adopted or cfg.adoption == "best"
        if not adopted:
            for name, state in self._initial.items():
                self._heads[name].load_state_dict(state)
        self._history.append({"event": "adoption", "rule": cfg.adoption, "kept": "trained" if adopted else "initial",
                              **self._decision.to_dict()})
        (logger.info if adopted else logger.warning)("%s", self._decision.message)

    # ------------------------------------------------------------------ training
    def _train_phase(self, names: tuple[str, ...], round_: int) -> None:
        cfg = self._config
        phase = "+".join(names)
        params = [p for name in names for p in self._heads[name].parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"the {phase} head has no trainable parameters (an identity head); use head_kind='linear' or 'mlp'")
        # Decay is L2-SP in the loss (toward the initial weights), so AdamW's own (toward 0) is off.
        optimizer = torch.optim.AdamW(params, lr=cfg.resolved_learning_rate, weight_decay=0.0)
        warmup = int(round(cfg.warmup_ratio * cfg.max_steps))
        scheduler = (
            get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, cfg.max_steps, min_lr_rate=cfg.min_lr_ratio)
            if cfg.min_lr_ratio > 0 else get_cosine_schedule_with_warmup(optimizer, warmup, cfg.max_steps)
        )
        for name in names:
            self._refresh(name)
        best_metric, best_result = self._validate(names, step=0, phase=phase, round_=round_)
        best_state = self._snapshot(names, step=0)
        stale = 0
        batches = self._batches(names)
        bar = tqdm(range(1, cfg.max_steps + 1), desc=f"train {phase} head", disable=not cfg.show_progress)
        for step in bar:
            if cfg.refresh_every and step > 1 and (step - 1) % cfg.refresh_every == 0:
                for name in names:
                    self._refresh(name)
            for name in names:
                self._heads[name].train()
            rows = next(batches)
            parts = {name: self._loss_on(name, self._train[name], rows[name], self._cols[name]) for name in names}
            for name in names:
                parts[name][L2SP_KEY] = self._l2sp(name)
            total = torch.stack([parts[n][LOSS_KEY] + parts[n][L2SP_KEY] for n in names]).sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            # Clip after backward, on the gradients just computed (the reference code clipped before).
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if cfg.max_grad_norm is not None
                else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            )
            optimizer.step()
            scheduler.step()
            if step % cfg.log_every == 0 or step == 1:
                self._log_step(step, phase, parts, float(grad_norm), scheduler.get_last_lr()[0])
            bar.set_postfix(loss=f"{total.item():.4f}")
            if self._has_validation and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                metric, result = self._validate(names, step=step, phase=phase, round_=round_)
                if self._better(metric, best_metric):
                    best_metric, best_result, best_state, stale = metric, result, self._snapshot(names, step=step), 0
                else:
                    stale += 1
                    if cfg.patience is not None and stale >= cfg.patience:
                        logger.info("early stop of the %s phase at step %d (no improvement in %d validations)",
                                    phase, step, stale)
                        break
        bar.close()
        self._last_best = best_result
        if self._has_validation:
            self._restore(best_state)
            self._history.append({"phase": phase, "round": round_, "event": "restored_best",
                                  cfg.selection_metric: best_metric, "best_step": best_state["step"]})
            logger.info("%s phase: kept the heads of step %s (%s %.5f)", phase, best_state["step"],
                        cfg.selection_metric, best_metric)
        for name in names:
            self._heads[name].eval()

    def _l2sp(self, name: str) -> torch.Tensor:
        """``weight_decay * sum ||w - w0||^2`` over the head's trainable weights (L2-SP, not toward 0)."""
        if self._config.weight_decay == 0.0:
            return torch.zeros((), device=self._device)
        anchors = self._anchors[name]
        drift = [(p - anchors[k]).pow(2).sum() for k, p in self._heads[name].named_parameters() if k in anchors]
        return self._config.weight_decay * torch.stack(drift).sum()

    def _batches(self, names: tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
        """Endless per-epoch shuffles of the cases that have candidates for every trained head."""
        rows = self._train[names[0]].rows
        for name in names[1:]:
            rows = rows[torch.isin(rows, self._train[name].rows)]
        generator = torch.Generator().manual_seed(self._config.seed)
        size = min(self._config.batch_size, rows.numel())
        while True:
            perm = rows[torch.randperm(rows.numel(), generator=generator).to(rows.device)]
            for start in range(0, perm.numel() - size + 1, size):
                batch = perm[start : start + size]
                yield {name: batch for name in names}

    def _loss_on(self, name: str, data: HeadData, rows: torch.Tensor, cols_all: torch.Tensor) -> dict[str, torch.Tensor]:
        cols = cols_all[rows]  # (B, n) columns of the cached pool used in the softmax
        return self._losses[name](
            candidate_scores(self._heads[name], data, rows, cols),  # (B, n)
            data.gold[rows].gather(1, cols),
            frozen_scores=data.frozen_scores[rows].gather(1, cols),
            mask=data.mask[rows].gather(1, cols),
            disagree=data.disagree[rows],
        )

    def _refresh(self, name: str) -> None:
        """Columns of the training softmax per case: the top ``n_train_candidates`` under the current head."""
        data, n_keep = self._train[name], self._config.n_train_candidates
        big_n = data.mask.shape[1]
        if n_keep is None or n_keep >= big_n:
            self._cols[name] = torch.arange(big_n, device=data.mask.device).expand(data.mask.shape[0], big_n)
        else:  # masked slots score -inf, so they sort last and only fill lists shorter than n_keep
            self._cols[name] = pool_scores(self._heads[name], data).topk(n_keep, dim=1).indices  # (n, n_keep)

    # ------------------------------------------------------------------ validation
    @property
    def _has_validation(self) -> bool:
        return self._validator is not None or self._val is not None

    def _val_k(self, name: str) -> int:
        if self._config.val_top_k is not None:
            return self._config.val_top_k
        return max(1, self._retriever.k_image if name == HEAD_IMAGE else self._retriever.k_text)

    @torch.no_grad()
    def _validate(self, names: tuple[str, ...], *, step: int, phase: str, round_: int) -> tuple[float, ValidationResult | None]:
        if not self._has_validation:
            return float("nan"), None
        cfg = self._config
        record: dict[str, Any] = {"phase": phase, "round": round_, "step": step, "event": "validation"}
        if self._val is not None:  # the pool loss (and, without a reader, the pool RAG log-likelihood)
            pool_loglik = np.zeros(len(next(iter(self._val.values())).mask))
            for name in names:
                data = self._val[name]
                pool = pool_scores(self._heads[name], data)  # (n, N)
                pool_loglik += pool_rag_loglik(pool, data, self._val_k(name), cfg.val_gamma or self._gammas[name])
                cols = pool.topk(min(cfg.n_train_candidates or pool.shape[1], pool.shape[1]), dim=1).indices
                record[f"val_loss/{name}"] = float(self._loss_on(name, data, data.rows, cols)[LOSS_KEY])
            record["val_loss"] = sum(record[f"val_loss/{n}"] for n in names)
            result = ValidationResult(loglik=pool_loglik[self._val[names[0]].rows.cpu().numpy()])
        if self._validator is not None:
            result = self._validator(self._heads)
            for head, share in result.outside_pool.items():
                if share is not None and share > OUTSIDE_POOL_WARNING:
                    logger.warning("step %d (%s): %.1f%% of the %s head's validation top-k lie outside the feedback "
                                   "pool; consider rounds > 1 or more candidates", step, phase, 100 * share, head)
        record.update(result.summary())
        selection = self._split(len(result.loglik))[0]
        record["val_rag_loglik_selection"] = float(np.mean(result.loglik[selection]))
        if self._baseline is None:
            self._baseline = result  # the initial heads: what the no-regression rule compares against
        self._history.append(record)
        self._reporter.log({f"{phase}/{k}": v for k, v in record.items()}, step=step)
        logger.info("step %d (%s): %s", step, phase, {k: v for k, v in record.items() if k.startswith("val_")})
        # Checkpoints are chosen on the selection part only; the adoption rule reads the held-out part.
        metric = (record["val_rag_loglik_selection"] if cfg.selection_metric == "val_rag_loglik"
                  else record.get("val_loss", np.nan))
        return float(metric), result

    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Validation rows for checkpoint selection and for the adoption rule (``adoption_holdout``)."""
        if self._holdout is None or self._holdout[0] != n:
            self._holdout = (n, *split_for_adoption(n, self._config.adoption_holdout, self._config.seed))
        return self._holdout[1], self._holdout[2]

    def _better(self, metric: float, best: float) -> bool:
        return metric > best if self._config.selection_metric == "val_rag_loglik" else metric < best

    def _snapshot(self, names: tuple[str, ...], *, step: int) -> dict[str, Any]:
        """The heads' weights (copied) and the step they belong to: the in-memory best checkpoint."""
        return {"step": step, "heads": {n: copy.deepcopy(self._heads[n].state_dict()) for n in names}}

    def _restore(self, state: dict[str, Any]) -> None:
        for name, weights in state["heads"].items():
            self._heads[name].load_state_dict(weights)

    def _log_step(self, step: int, phase: str, parts: dict[str, dict[str, torch.Tensor]], grad_norm: float,
                  lr: float) -> None:
        record: dict[str, Any] = {"phase": phase, "step": step, "event": "train", "lr": lr, "grad_norm": grad_norm}
        for name, out in parts.items():
            for key, value in out.items():
                record[f"{key}/{name}"] = float(torch.as_tensor(value).detach().float().mean())
        self._history.append(record)
        self._reporter.log({f"{phase}/{k}": v for k, v in record.items()}, step=step)  # phase: steps restart per phase
        logger.debug("step %d (%s): %s", step, phase, record)


__all__ = ["RetrieverFinetuneEngine", "TrainerConfig", "config_loss"]
