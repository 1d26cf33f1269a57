"""Stage 1 of arXiv 2508.17394: supervised fine-tuning of the reader on retrieval-augmented prompts.

Samples come from :func:`~llama_index_lvlm_retriever.training.sft_data.build_sft_samples`. Each is
rendered by the reader itself (its :class:`~llama_index_lvlm_retriever.readers.prompt.PromptBuilder`
and chat template), and the answer's token ids are the very ids the reader scores
(:attr:`HFLVLMReader.answer_token_ids`), appended after the prompt as scoring appends them
(:func:`~llama_index_lvlm_retriever.readers._hf_batch.append_continuations`). The loss is the
mean cross-entropy over answer tokens only: every prompt and padding position has label ``-100``.
So a sample's training loss equals minus the log-likelihood ``reader.score(..., scoring="full")``
gives its gold answer.

Two modes: ``"full"`` updates every weight (small models); ``"lora"`` wraps the model with
``peft`` LoRA adapters, trains only those, and merges them back before saving, so the output
folder loads with the ordinary :meth:`HFLVLMReader.from_pretrained`.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from llama_index_lvlm_retriever._io import atomic_write_text
from llama_index_lvlm_retriever.model_card import write_model_card
from llama_index_lvlm_retriever.readers._hf_batch import append_continuations
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.readers.prompt import PromptBuilder
from llama_index_lvlm_retriever.training.sft_config import ReaderSFTConfig, SFTMode
from llama_index_lvlm_retriever.training.sft_data import SFTSample

logger = logging.getLogger(__name__)

__all__ = ["IGNORE_INDEX", "SFT_CONFIG_NAME", "ReaderSFTConfig", "ReaderSFTEngine", "SFTMode"]

IGNORE_INDEX = -100
"""Label of every position that carries no loss (prompt, image and padding tokens)."""
SFT_CONFIG_NAME = "sft_config.json"
"""Written next to the saved reader: the SFT settings and per-epoch history."""


class ReaderSFTEngine:
    """Fine-tune an :class:`HFLVLMReader` on SFT samples; loss on answer tokens only.

    Args:
        reader: The reader to train (its model is updated in place; in LoRA mode it is replaced by
            the merged model after :meth:`finetune`).
        samples: Training samples (for the reader's task).
        config: Settings; ``None`` = defaults.

    Raises:
        ValueError: No samples, a sample whose answer is not one of the reader's answers, or a
            LoRA target that matches no module of the model.

    Example:
        >>> engine = ReaderSFTEngine(reader, samples, ReaderSFTConfig(mode="full"))  # doctest: +SKIP
        >>> history = engine.finetune(); engine.save("out/reader")  # doctest: +SKIP
    """

    def __init__(self, reader: HFLVLMReader, samples: Sequence[SFTSample], config: ReaderSFTConfig | None = None) -> None:
        self.reader = reader
        self.samples = list(samples)
        self.config = config or ReaderSFTConfig()
        if not self.samples:
            raise ValueError("no SFT samples; build them with build_sft_samples(cases, retriever, task)")
        n_answers = len(reader.answer_token_ids)
        for sample in self.samples:
            if not 0 <= sample.answer_index < n_answers:
                raise ValueError(
                    f"sample of case {sample.case.id!r} targets answer {sample.answer_index} but the reader "
                    f"of task {reader.task.name!r} has {n_answers} answers; build samples for the reader's task"
                )
        prompt_config = reader.config.prompt
        if self.config.max_image_side is not None:
            prompt_config = prompt_config.model_copy(update={"max_image_side": self.config.max_image_side})
        self._prompts = PromptBuilder(reader.task, prompt_config)
        self.history: list[dict[str, float]] = []
        self.trainable_parameter_names: list[str] = []
        """Names of the parameters the last :meth:`finetune` updated (LoRA: only adapter weights)."""

    # ------------------------------------------------------------------ batches
    def build_batch(self, samples: Sequence[SFTSample]) -> dict[str, torch.Tensor]:
        """Processor inputs plus ``labels`` for samples: the prompt, then the answer's token ids.

        Args:
            samples: The samples of one batch.

        Returns:
            Right-padded tensors with ``labels`` ``(R, T)``: the answer token ids at the answer's
            positions, :data:`IGNORE_INDEX` everywhere else.
        """
        reader = self.reader
        texts, images = [], []
        for sample in samples:
            prompt = self._prompts.build(sample.case, sample.candidate, label_index=sample.label_index, slot=sample.rank)
            texts.append(reader._chat_text(prompt))
            images.append(prompt.images)
        batch = reader.processor(
            text=texts, images=images if any(images) else None, padding=True, padding_side="right", return_tensors="pt"
        )
        batch = {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}
        answers = [reader.answer_token_ids[s.answer_index] for s in samples]
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
        out, _, _, _ = append_continuations(batch, answers, pad_token_id=reader._pad_id, paligemma=reader._paligemma)
        labels = torch.full_like(out["input_ids"], IGNORE_INDEX)  # (R, T')
        for row, (n, ids) in enumerate(zip(prompt_lengths, answers)):
            labels[row, n : n + len(ids)] = torch.as_tensor(ids, dtype=labels.dtype)
        out["labels"] = labels
        return out

    def _loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = next(model.parameters()).device
        dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        labels = batch["labels"].to(device)
        inputs = {
            key: value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
            for key, value in batch.items()
            if key != "labels"
        }
        logits = model(**inputs, use_cache=False).logits  # (R, T', V)
        # The logits at position t predict token t + 1.
        shifted_logits = logits[:, :-1].float()  # (R, T'-1, V)
        shifted_labels = labels[:, 1:]  # (R, T'-1)
        return torch.nn.functional.cross_entropy(
            shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted_labels.reshape(-1), ignore_index=IGNORE_INDEX
        )

    @torch.no_grad()
    def sample_losses(self) -> np.ndarray:
        """Summed answer-token negative log-likelihood of each sample under the current model.

        Returns:
            ``(len(samples),)`` float64; equals ``-raw_log_likelihoods`` of the gold answer from
            :meth:`HFLVLMReader.score` with ``scoring="full"``.
        """
        model = self.reader.model.eval()
        values = []
        for sample in self.samples:
            batch = self.build_batch([sample])
            n_tokens = int((batch["labels"] != IGNORE_INDEX).sum())
            values.append(float(self._loss(model, batch)) * n_tokens)
        return np.asarray(values, dtype=np.float64)

    # ------------------------------------------------------------------ training
    def _prepare_model(self) -> torch.nn.Module:
        model = self.reader.model
        if self.config.mode == "full":
            for param in model.parameters():
                param.requires_grad_(True)
            return model
        from peft import LoraConfig, get_peft_model

        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in self.config.target_modules if t not in names]
        if missing:
            raise ValueError(
                f"LoRA target_modules {missing} match no module of {type(model).__name__}; pick from its "
                f"linear layers, e.g. {sorted(n for n in names if n.endswith('proj'))[:8]}"
            )
        lora = LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=list(self.config.target_modules),
            bias="none",
        )
        return get_peft_model(model, lora)

    def finetune(self) -> list[dict[str, float]]:
        """Train for ``epochs`` passes; the reader's model is left trained and in eval mode.

        Returns:
            One record per epoch: ``{"epoch", "loss" (mean batch loss), "steps", "lr"}``.
        """
        cfg = self.config
        torch.manual_seed(cfg.seed)
        model = self._prepare_model()
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.trainable_parameter_names = [name for name, _ in named]
        trainable = [p for _, p in named]
        n_trainable = sum(p.numel() for p in trainable)
        logger.info("reader SFT (%s): %d samples, %d trainable parameters", cfg.mode, len(self.samples), n_trainable)
        decay = [p for p in trainable if p.ndim >= 2]
        no_decay = [p for p in trainable if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.learning_rate,
        )
        steps_per_epoch = math.ceil(len(self.samples) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        warmup = int(round(cfg.warmup_ratio * total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        order_rng = random.Random(cfg.seed)
        model.train()
        bar = tqdm(total=total, desc="reader SFT", disable=not cfg.show_progress)
        try:
            for epoch in range(cfg.epochs):
                order = list(range(len(self.samples)))
                order_rng.shuffle(order)
                losses = []
                for start in range(0, len(order), cfg.batch_size):
                    batch = self.build_batch([self.samples[i] for i in order[start : start + cfg.batch_size]])
                    loss = self._loss(model, batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    losses.append(float(loss.detach()))
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                record = {"epoch": float(epoch), "loss": float(np.mean(losses)), "steps": float(len(losses)), "lr": float(scheduler.get_last_lr()[0])}
                self.history.append(record)
                logger.info("reader SFT epoch %d: mean loss %.4f", epoch, record["loss"])
        finally:
            bar.close()
        if cfg.mode == "lora":
            model = model.merge_and_unload()
        self.reader.model = model.eval()
        for param in self.reader.model.parameters():
            param.requires_grad_(False)
        self.reader._fingerprint = None  # the weights changed
        return self.history

    def save(self, save_dir: str | Path) -> Path:
        """Save the (merged) reader with ``save_pretrained`` plus :data:`SFT_CONFIG_NAME`.

        Returns:
            The folder; ``HFLVLMReader.from_pretrained(folder)`` loads the fine-tuned reader.
        """
        folder = self.reader.save_pretrained(save_dir)
        record: dict[str, Any] = {
            "config": self.config.model_dump(mode="json"),
            "n_samples": len(self.samples),
            "history": self.history,
        }
        atomic_write_text(folder / SFT_CONFIG_NAME, json.dumps(record, indent=2) + "\n")
        write_model_card(
            folder, kind="reader", base_model=getattr(self.reader, "model_name", None) or None, task=self.reader.task,
            training={**self.config.model_dump(mode="json"), "n_samples": len(self.samples)},
            validation={"final_train_loss": float(self.history[-1]["loss"])} if self.history else None,
            validation_dataset="training samples (no validation split)",
        )
        logger.info("saved the fine-tuned reader to %s", folder)
        return folder
