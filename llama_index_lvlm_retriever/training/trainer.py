"""RetrieverFinetuneEngine: train the retriever's query heads from cached reader feedback.

Stage 2 of arXiv 2508.17394 with the reader frozen. In ``"adapter"`` mode a residual
:class:`~llama_index_lvlm_retriever.heads.QueryHead` sits on the *frozen* query embedding; the
retrieval score of a cached candidate ``c`` is ``s(c) = cos(head(e), key_c)`` where ``key_c`` is the
candidate's stored knowledge-base vector (image vectors for the image head, caption vectors for the
text head). Training reads only the feedback cache and those KB vectors, so it takes seconds to
minutes, needs no reader and never re-embeds the knowledge base.

Each step samples a batch of cases, scores their candidates with the current head, and minimises a
loss module (default: ``PosteriorKLLoss(gamma=0.05)``, the paper's ``KL(Q || P_retr)`` with
``Q ∝ P_reader(gold | c) · P_retr_frozen(c)``; the frozen prior uses the cached retrieval scores).

**Candidate refresh.** With ``n_train_candidates = n`` smaller than the cached pool ``N``, the
training softmax runs over the top ``n`` of the pool under the *current* head, re-drawn every
``refresh_every`` steps (over-retrieve once, re-rank cheaply): the head sees the candidates it would
retrieve now without any new retrieval or reader call. Candidates outside the cached pool are never
seen, so keep ``N`` well above ``n`` (e.g. 50 vs 20).

**Model selection.** Every ``eval_every`` steps (and at step 0, the untrained head) the engine
computes on validation cases the RAG log-likelihood ``mean_i log sum_{c in top-k} P_retr(c) P_reader(gold_i | c)``
(``P_retr`` = softmax of the current head's top-k scores / gamma) and the validation loss, keeps the
best heads in memory and restores them at the end; the untrained head is a legal outcome.

**Encoder mode** (``TrainerConfig(mode="encoder")``, the paper's head): each trained head is an
:class:`~llama_index_lvlm_retriever.heads.EncoderQueryHead`, a trainable copy of the
knowledge base's image tower (last ``encoder_last_n_blocks`` blocks + projection trainable, or only
LoRA adapters with ``encoder_lora_r``, which needs the ``peft`` extra) whose
output is blended with the cached frozen embedding, ``q = normalize(0.85 e + 0.15 normalize(tower(x)))``;
scores are recomputed against the same frozen KB vectors. It reads the query *images*, so the engine
needs ``cases=`` (the ``Case`` records of the feedback's case ids); their images are processed once
by the embedding model and held in memory (``n x 3 x H x W`` floats: about 600 MB per 1,000 cases at
224 px). Each step and each candidate refresh runs the tower, so it costs far more than adapter mode.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from llama_index_lvlm_retriever._io import atomic_write_bytes as atomic_write
from llama_index_lvlm_retriever._io import json_bytes
from llama_index_lvlm_retriever.data.records import Case
from llama_index_lvlm_retriever.heads import EncoderQueryHead, QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.retriever import HEAD_IMAGE, HEAD_TEXT, LVLMAwareRetriever
from llama_index_lvlm_retriever.training.config import TrainerConfig, TrainHead
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache
from llama_index_lvlm_retriever.training.head_data import HeadData, build_head_data, query_pixels
from llama_index_lvlm_retriever.training.losses import LOSS_KEY, PosteriorKLLoss
from llama_index_lvlm_retriever.version import package_versions

logger = logging.getLogger(__name__)

TRAINER_CONFIG_FILE = "trainer_config.json"
HISTORY_FILE = "training_history.json"
IMAGE_HEAD_DIR = "image_head"
TEXT_HEAD_DIR = "text_head"
_HEAD_DIRS = {HEAD_IMAGE: IMAGE_HEAD_DIR, HEAD_TEXT: TEXT_HEAD_DIR}
_TRAIN_HEADS: dict[str, tuple[str, ...]] = {
    "text": (HEAD_TEXT,),
    "image": (HEAD_IMAGE,),
    # The paper's order: the text head first, then the image head.
    "both": (HEAD_TEXT, HEAD_IMAGE),
}
_DEFAULT_GAMMA = 0.05  # the paper's softmax temperature on cosines
_EVAL_CHUNK = 4096  # cases per no-grad scoring chunk (bounds memory on large caches)
_ENCODER_EVAL_CHUNK = 128  # images per no-grad tower pass in encoder mode (bounds activation memory)


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
            returning a dict with a scalar ``"loss"``; ``None`` = ``PosteriorKLLoss(gamma=0.05)``.
        head: Which heads to train: ``"text"``, ``"image"`` or ``"both"``.
        config: Optimisation settings; ``None`` = defaults.
        validation: Validation feedback (same retriever); ``None`` holds out
            ``config.validation_fraction`` of ``feedback`` by case (0 = no validation, no selection).
        cases: ``"encoder"`` mode only: the cases of ``feedback`` (and ``validation``), for their
            query images; matched to the cache's rows by case id.

    Raises:
        ValueError: A bad ``head`` or ``mode``, a cache from another retriever, a head the cache
            has no candidates for, dimensions that do not fit, no case with a candidate, or
            (encoder mode) missing ``cases`` or a cached case id without a case.
        TypeError: Encoder mode with an embedding model that has no CLIP image tower.

    Example:
        .. code-block:: python

            from llama_index_lvlm_retriever.training.config import TrainerConfig
            from llama_index_lvlm_retriever.training.feedback import collect_feedback
            from llama_index_lvlm_retriever.training.trainer import RetrieverFinetuneEngine

            feedback = collect_feedback(train_cases, retriever, reader, "runs/feedback")
            engine = RetrieverFinetuneEngine(retriever, feedback, head="both",
                                             config=TrainerConfig(schedule="sequential", max_steps=300))
            engine.finetune()
            trained = engine.get_finetuned_model()
            engine.save("runs/heads")  # image_head/, text_head/, trainer_config.json, training_history.json

            # The paper's head: a trainable copy of the image tower (needs the cases' images).
            engine = RetrieverFinetuneEngine(retriever, feedback, head="image", cases=train_cases,
                                             config=TrainerConfig(mode="encoder", learning_rate=3e-4,
                                                                  n_train_candidates=20, refresh_every=10))
    """

    def __init__(
        self,
        retriever: LVLMAwareRetriever,
        feedback: FeedbackCache,
        loss: nn.Module | None = None,
        head: TrainHead = "both",
        config: TrainerConfig | None = None,
        validation: FeedbackCache | None = None,
        cases: Sequence[Case] | None = None,
    ) -> None:
        self._config = config or TrainerConfig()
        self._encoder = self._config.mode == "encoder"
        if self._encoder and cases is None:
            raise ValueError(
                "TrainerConfig(mode='encoder') trains a copy of the image tower on the query images: pass "
                "cases= (the Case records of the feedback cache's case ids), or use mode='adapter'"
            )
        self._case_images = {case.id: case.image_path for case in cases or ()}
        if head not in _TRAIN_HEADS:
            raise ValueError(f"head must be one of {list(_TRAIN_HEADS)}, got {head!r}")
        self._retriever = retriever
        self._head_choice: TrainHead = head
        self._trained: tuple[str, ...] = _TRAIN_HEADS[head]
        feedback.check_retriever(retriever)
        if validation is not None:
            validation.check_retriever(retriever)
        for name in self._trained:
            if name not in feedback.heads:
                raise ValueError(
                    f"cannot train the {name} head: the feedback cache has candidates for {list(feedback.heads)} "
                    f"only; collect feedback with FeedbackConfig(heads=...) including {name!r} or choose head="
                    f"{feedback.heads[0]!r}"
                )
        self._loss = loss if loss is not None else _default_loss()
        self._device = torch.device(self._config.device)
        self._seed_everything()
        self._heads: dict[str, QueryHead | EncoderQueryHead] = {name: self._initial_head(name, feedback.dim) for name in self._trained}
        fraction = self._config.validation_fraction
        if validation is None and fraction > 0:
            n_val = int(round(len(feedback) * fraction))
            if 1 <= n_val < len(feedback):
                feedback, validation = feedback.split(fraction, seed=self._config.seed)
            else:
                logger.warning(
                    "validation_fraction=%s of %d cases holds out %d; training without validation "
                    "(the final heads are kept)", fraction, len(feedback), n_val,
                )
        self._train = {name: self._head_data(feedback, name) for name in self._trained}
        self._val = {name: self._head_data(validation, name) for name in self._trained} if validation else None
        if self._val is not None and any(data.rows.numel() == 0 for data in self._val.values()):
            logger.warning("no validation case has candidates for every trained head; training without validation")
            self._val = None
        for name, data in self._train.items():
            if data.rows.numel() == 0:
                raise ValueError(
                    f"no training case has a {name}-head candidate in the feedback cache; "
                    "collect feedback on a knowledge base with items to retrieve"
                )
        self._cols: dict[str, torch.Tensor] = {}
        self._history: list[dict[str, Any]] = []
        self._finetuned = False

    # ------------------------------------------------------------------ setup
    def _seed_everything(self) -> None:
        torch.manual_seed(self._config.seed)
        np.random.seed(self._config.seed)

    def _initial_head(self, name: str, dim: int) -> QueryHead | EncoderQueryHead:
        current = self._retriever.image_head if name == HEAD_IMAGE else self._retriever.text_head
        if self._encoder:
            if isinstance(current, EncoderQueryHead):
                if current.config.lora_merged:
                    # A saved LoRA head is a plain frozen tower: new zero adapters on its merged weights.
                    return current.with_fresh_lora().to(self._device)
                return copy.deepcopy(current).to(self._device)  # continue from the retriever's tower
            cfg = self._config
            head = EncoderQueryHead.from_embedding(
                self._retriever.knowledge_base.embed_model,
                alpha=cfg.alpha,
                train_last_n_blocks=cfg.encoder_last_n_blocks,
                lora_r=cfg.encoder_lora_r,
                lora_alpha=cfg.encoder_lora_alpha,
                lora_dropout=cfg.encoder_lora_dropout,
                lora_target_modules=cfg.encoder_lora_target_modules,
            )
            if head.dim != dim or head.out_dim != int(self._retriever.knowledge_base.dim):
                raise ValueError(
                    f"the encoder's image tower gives {head.dim}-d vectors but the feedback cache holds {dim}-d "
                    f"query embeddings and the knowledge base {self._retriever.knowledge_base.dim}-d keys; "
                    "encoder mode needs a retriever without question fusion over its own encoder's KB"
                )
            return head.to(self._device)
        if isinstance(current, EncoderQueryHead):
            raise ValueError(
                f"the retriever's {name} head is an EncoderQueryHead (an image tower); continue training it "
                "with TrainerConfig(mode='encoder') and cases=, not mode='adapter'"
            )
        if current is not None and not current.is_identity:
            if current.dim != dim:
                raise ValueError(
                    f"the retriever's {name} head reads {current.dim}-d embeddings but the feedback cache "
                    f"holds {dim}-d ones; collect feedback with this retriever"
                )
            head = copy.deepcopy(current)  # continue from the retriever's trained head
        else:
            cfg = self._config
            head = QueryHead(
                QueryHeadConfig(
                    dim=dim,
                    kind=cfg.head_kind,
                    hidden_dim=cfg.head_hidden_dim,
                    out_dim=int(self._retriever.knowledge_base.dim),
                    alpha=cfg.alpha,
                    dropout=cfg.dropout,
                )
            )
        return head.to(self._device)

    def _head_data(self, cache: FeedbackCache, name: str) -> HeadData:
        pixels = query_pixels(self._retriever.knowledge_base, cache, self._case_images) if self._encoder else None
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
        """Logged training steps and validations, in order (a copy)."""
        return copy.deepcopy(self._history)

    def finetune(self) -> None:
        """Train the chosen heads (jointly, or the text head then the image head), keeping the best."""
        self._seed_everything()
        if self._config.schedule == "sequential":
            for name in self._trained:
                self._train_phase((name,))
        else:
            self._train_phase(self._trained)
        self._finetuned = True

    def get_finetuned_model(self) -> LVLMAwareRetriever:
        """A retriever over the same knowledge base with the trained heads (and the others unchanged)."""
        if not self._finetuned:
            logger.warning("get_finetuned_model() before finetune(): returning the initial heads")
        heads = {HEAD_IMAGE: self._retriever.image_head, HEAD_TEXT: self._retriever.text_head}
        for name, head in self._heads.items():
            heads[name] = copy.deepcopy(head).to("cpu").eval()
        base = self._retriever.config
        return LVLMAwareRetriever(
            self._retriever.knowledge_base,
            heads[HEAD_IMAGE],
            heads[HEAD_TEXT],
            k_image=base.k_image,
            k_text=base.k_text,
            question_weight=base.question_weight,
            exclude_self=base.exclude_self,
            show_progress=base.show_progress,
        )

    def save(self, output_dir: str | Path) -> Path:
        """Write ``image_head/``, ``text_head/``, ``trainer_config.json`` and ``training_history.json``.

        A head that was not trained is saved as the retriever has it (the identity when it has none),
        so ``LVLMAwareRetriever.from_persist_dir(kb_dir, embed_model, image_head_dir=out / "image_head",
        text_head_dir=out / "text_head")`` rebuilds the fine-tuned retriever.

        Returns:
            The folder.
        """
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = self.get_finetuned_model()
        for name, head in ((HEAD_IMAGE, model.image_head), (HEAD_TEXT, model.text_head)):
            (head or QueryHead.identity(int(model.knowledge_base.dim))).save_pretrained(out / _HEAD_DIRS[name])
        record = {
            "class_name": self.class_name(),
            "config": self._config.model_dump(mode="json"),
            "head": self._head_choice,
            "loss": {"class_name": type(self._loss).__name__, "repr": repr(self._loss)},
            "versions": package_versions(),
        }
        atomic_write(out / TRAINER_CONFIG_FILE, json_bytes(record))
        atomic_write(out / HISTORY_FILE, json_bytes(self._history))
        logger.info("saved fine-tuned heads and training record to %s", out)
        return out

    # ------------------------------------------------------------------ training
    def _train_phase(self, names: tuple[str, ...]) -> None:
        cfg = self._config
        phase = "+".join(names)
        params = [p for name in names for p in self._heads[name].parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"the {phase} head has no trainable parameters (an identity head); use head_kind='linear' or 'mlp'")
        # Decay weight matrices only: decaying biases (or, for a [I; 0] start, anything toward 0
        # at the reference code's 1.0) fights the residual design.
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)
        warmup = int(round(cfg.warmup_ratio * cfg.max_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(cfg.max_steps, warmup, cfg.min_lr_ratio))
        for name in names:
            self._refresh(name)
        best_metric = self._validate(names, step=0, phase=phase)
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
            total = torch.stack([parts[name][LOSS_KEY] for name in names]).sum()
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
            if self._val is not None and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                metric = self._validate(names, step=step, phase=phase)
                if self._better(metric, best_metric):
                    best_metric, best_state, stale = metric, self._snapshot(names, step=step), 0
                else:
                    stale += 1
                    if cfg.patience is not None and stale >= cfg.patience:
                        logger.info("early stop of the %s phase at step %d (no improvement in %d validations)",
                                    phase, step, stale)
                        break
        bar.close()
        if self._val is not None:
            self._restore(best_state)
            self._history.append({"phase": phase, "event": "restored_best", cfg.selection_metric: best_metric,
                                  "best_step": best_state["step"]})
            logger.info("%s phase: kept the heads of step %s (%s %.5f)", phase, best_state["step"],
                        cfg.selection_metric, best_metric)
        for name in names:
            self._heads[name].eval()

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

    def _scores(self, name: str, data: HeadData, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Cosine of the head's query vector with each selected candidate's key, ``(B, n)``."""
        if data.pixels is not None:
            # Encoder mode: the tower reads the query images, blended with the cached frozen embedding.
            query = self._heads[name](data.pixels[rows], data.embeddings[rows])  # (B, D)
        else:
            # Adapter mode: the query vector comes from the cached frozen embedding.
            query = self._heads[name](data.embeddings[rows])  # (B, D)
        keys = data.keys[data.slots[rows].gather(1, cols)]  # (B, n, D)
        return torch.einsum("bd,bnd->bn", query, keys)  # both unit-norm: cosines

    def _loss_on(self, name: str, data: HeadData, rows: torch.Tensor, cols_all: torch.Tensor) -> dict[str, torch.Tensor]:
        cols = cols_all[rows]  # (B, n) columns of the cached pool used in the softmax
        scores = self._scores(name, data, rows, cols)  # (B, n)
        return self._loss(
            scores,
            data.gold[rows].gather(1, cols),
            frozen_scores=data.frozen_scores[rows].gather(1, cols),
            mask=data.mask[rows].gather(1, cols),
            disagree=data.disagree[rows],
        )

    @torch.no_grad()
    def _pool_scores(self, name: str, data: HeadData) -> torch.Tensor:
        """Current-head cosines over the whole cached pool, ``(n, N)``, -inf where masked."""
        self._heads[name].eval()
        n, big_n = data.mask.shape
        all_cols = torch.arange(big_n, device=data.mask.device).expand(n, big_n)  # (n, N)
        chunks = [
            self._scores(name, data, rows, all_cols[rows])
            for rows in torch.arange(n, device=data.mask.device).split(
                _ENCODER_EVAL_CHUNK if data.pixels is not None else _EVAL_CHUNK
            )
        ]
        return torch.cat(chunks).masked_fill(~data.mask, float("-inf"))

    def _select_cols(self, name: str, data: HeadData) -> torch.Tensor:
        """Columns of the training softmax per case: the top ``n_train_candidates`` under the current head."""
        big_n = data.mask.shape[1]
        n_keep = self._config.n_train_candidates
        if n_keep is None or n_keep >= big_n:
            return torch.arange(big_n, device=data.mask.device).expand(data.mask.shape[0], big_n)
        # Masked slots score -inf, so they sort last and only fill lists shorter than n_keep.
        return self._pool_scores(name, data).topk(n_keep, dim=1).indices  # (n, n_keep)

    def _refresh(self, name: str) -> None:
        self._cols[name] = self._select_cols(name, self._train[name])

    # ------------------------------------------------------------------ validation
    def _gamma(self) -> float:
        if self._config.val_gamma is not None:
            return float(self._config.val_gamma)
        # Duck-typed: the package's losses expose their softmax temperature as ``gamma``.
        gamma = getattr(self._loss, "gamma", None)
        return float(gamma) if isinstance(gamma, (int, float)) else _DEFAULT_GAMMA

    def _val_k(self, name: str) -> int:
        if self._config.val_top_k is not None:
            return self._config.val_top_k
        k = self._retriever.k_image if name == HEAD_IMAGE else self._retriever.k_text
        return max(1, k)

    @torch.no_grad()
    def _validate(self, names: tuple[str, ...], *, step: int, phase: str) -> float:
        if self._val is None:
            return float("nan")
        record: dict[str, Any] = {"phase": phase, "step": step, "event": "validation"}
        loglik_total, loss_total = 0.0, 0.0
        for name in names:
            data = self._val[name]
            rows = data.rows
            pool = self._pool_scores(name, data)[rows]  # (m, N)
            k = min(self._val_k(name), pool.shape[1])
            top, idx = pool.topk(k, dim=1)  # (m, k)
            valid = torch.isfinite(top)
            log_p = torch.log_softmax((top / self._gamma()).masked_fill(~valid, float("-inf")), dim=1)  # (m, k)
            joint = (log_p + data.gold[rows].gather(1, idx)).masked_fill(~valid, float("-inf"))  # (m, k)
            loglik = float(torch.logsumexp(joint, dim=1).mean())
            cols = self._select_cols(name, data)
            loss = float(self._loss_on(name, data, rows, cols)[LOSS_KEY])
            record[f"val_rag_loglik/{name}"] = loglik
            record[f"val_loss/{name}"] = loss
            loglik_total += loglik
            loss_total += loss
        record["val_rag_loglik"], record["val_loss"] = loglik_total, loss_total
        self._history.append(record)
        logger.info("step %d (%s): val RAG log-likelihood %.5f, val loss %.5f", step, phase, loglik_total, loss_total)
        return loglik_total if self._config.selection_metric == "val_rag_loglik" else loss_total

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
        logger.debug("step %d (%s): %s", step, phase, record)


def _warmup_cosine(total: int, warmup: int, floor: float) -> Any:
    """Learning-rate multiplier: linear warmup over ``warmup`` steps, then cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _default_loss() -> nn.Module:
    return PosteriorKLLoss(gamma=_DEFAULT_GAMMA)


__all__ = ["RetrieverFinetuneEngine", "TrainerConfig"]
