"""Stage 1 of arXiv 2508.17394: supervised fine-tuning of the reader on retrieval-augmented prompts.

Samples come from :func:`~llama_index_lvlm_retriever.training.sft_data.build_sft_samples`. Each is
rendered by the reader itself (its :class:`~llama_index_lvlm_retriever.readers.prompt.PromptBuilder`
and chat template), and the answer's token ids are the very ids the reader scores
(:attr:`HFLVLMReader.answer_token_ids`), appended after the prompt as scoring appends them
(:func:`~llama_index_lvlm_retriever.readers._hf_batch.append_continuations`). The loss is the
mean cross-entropy over answer tokens only: every prompt and padding position has label ``-100``.
So a sample's training loss equals minus the log-likelihood ``reader.score(..., scoring="full")``
gives its gold answer.

Training runs on ``transformers.Trainer`` with :class:`~.sft_batches.SFTCollator`, so gradient
accumulation, bf16 mixed precision, evaluation on validation samples and checkpoint/resume come
from the library; each sample is encoded once (:class:`~.sft_batches.SFTDataset`).

Two modes: ``"full"`` updates every weight (small models); ``"lora"`` wraps the model with
``peft`` LoRA adapters and trains only those. A LoRA run saves the adapters on their own (how LoRA
is shared; the folder loads on top of its base model), or the merged model with
``merge_lora=True``; either loads with :meth:`HFLVLMReader.from_pretrained`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from llama_index_lvlm_retriever.outputs.model_card import write_model_card
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.readers.prompt import PromptBuilder
from llama_index_lvlm_retriever.storage.dirswap import swapped_directory
from llama_index_lvlm_retriever.storage.files import atomic_write_text
from llama_index_lvlm_retriever.training.reporting import reporting_callbacks
from llama_index_lvlm_retriever.training.sft_batches import IGNORE_INDEX, SFTCollator, SFTDataset
from llama_index_lvlm_retriever.training.sft_config import ReaderSFTConfig, SFTMode
from llama_index_lvlm_retriever.training.sft_data import SFTSample

logger = logging.getLogger(__name__)

__all__ = ["IGNORE_INDEX", "SFT_CONFIG_NAME", "ReaderSFTConfig", "ReaderSFTEngine", "SFTMode"]

SFT_CONFIG_NAME = "sft_config.json"
"""Written next to the saved reader: the SFT settings and per-epoch history."""
ADAPTER_CONFIG_NAME = "adapter_config.json"
"""peft's file in a LoRA-adapter folder; ``from_pretrained`` loads its base model, then the adapters."""


class ReaderSFTEngine:
    """Fine-tune an :class:`HFLVLMReader` on SFT samples; loss on answer tokens only.

    Args:
        reader: The reader to train (its model is updated in place; in LoRA mode it is replaced by
            the merged model after :meth:`finetune`, so scoring needs no peft).
        samples: Training samples (for the reader's task).
        config: Settings; ``None`` = defaults.
        validation_samples: Samples scored after every epoch (``eval_loss`` in the history and
            the model card); empty = no validation.

    Raises:
        ValueError: No samples, a sample whose answer is not one of the reader's answers, or a
            LoRA target that matches no module of the model.

    Example:
        >>> engine = ReaderSFTEngine(reader, samples, ReaderSFTConfig(mode="full"))  # doctest: +SKIP
        >>> history = engine.finetune(); engine.save("out/reader")  # doctest: +SKIP
    """

    def __init__(
        self,
        reader: HFLVLMReader,
        samples: Sequence[SFTSample],
        config: ReaderSFTConfig | None = None,
        *,
        validation_samples: Sequence[SFTSample] = (),
    ) -> None:
        self.reader = reader
        self.samples = list(samples)
        self.validation_samples = list(validation_samples)
        self.config = config or ReaderSFTConfig()
        if not self.samples:
            raise ValueError("no SFT samples; build them with build_sft_samples(cases, retriever, task)")
        n_answers = len(reader.answer_token_ids)
        for sample in [*self.samples, *self.validation_samples]:
            if not 0 <= sample.answer_index < n_answers:
                raise ValueError(
                    f"sample of case {sample.case.id!r} targets answer {sample.answer_index} but the reader "
                    f"of task {reader.task.name!r} has {n_answers} answers; build samples for the reader's task"
                )
        prompt_config = reader.config.prompt
        if self.config.max_image_side is not None:
            prompt_config = prompt_config.model_copy(update={"max_image_side": self.config.max_image_side})
        self._prompts = PromptBuilder(reader.task, prompt_config)
        cache_bytes = self.config.encoding_cache_mb << 20
        self._train_data = SFTDataset(reader, self.samples, self._prompts, cache_bytes=cache_bytes)
        self._validation_data = SFTDataset(reader, self.validation_samples, self._prompts, cache_bytes=cache_bytes)
        self._collate = SFTCollator(reader._pad_id)
        self._adapter_dir: Path | None = None
        self._checkpointing = False
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
        data = SFTDataset(self.reader, samples, self._prompts, cache_bytes=0)
        return self._collate([data[i] for i in range(len(data))])

    @torch.no_grad()
    def sample_losses(self) -> np.ndarray:
        """Summed answer-token negative log-likelihood of each sample under the current model.

        Returns:
            ``(len(samples),)`` float64; equals ``-raw_log_likelihoods`` of the gold answer from
            :meth:`HFLVLMReader.score` with ``scoring="full"``.
        """
        model = self.reader.model.eval()
        return np.asarray([_answer_nll(model, self._train_data[i]) for i in range(len(self.samples))], dtype=np.float64)

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
        torch.manual_seed(self.config.seed)  # the adapters' initialisation
        return get_peft_model(model, lora)

    def _training_arguments(self, output_dir: Path, device: torch.device) -> TrainingArguments:
        cfg = self.config
        validate = "epoch" if self.validation_samples else "no"
        return TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=cfg.epochs,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            lr_scheduler_type="linear",
            # A float below 1 is a share of the steps; 1.0 itself would read as one step.
            warmup_steps=min(cfg.warmup_ratio, 0.999) if cfg.warmup_ratio else 0,
            max_grad_norm=cfg.max_grad_norm or 0.0,
            bf16=cfg.bf16,
            seed=cfg.seed,
            data_seed=cfg.seed,
            logging_strategy="epoch",
            eval_strategy=validate,
            save_strategy="epoch" if self._checkpointing else "no",
            save_total_limit=cfg.keep_checkpoints if self._checkpointing else None,
            report_to="none",
            disable_tqdm=not cfg.show_progress,
            remove_unused_columns=False,  # the collator's tensors are exactly the model's inputs
            dataloader_pin_memory=False,
            use_cpu=device.type == "cpu",
        )

    def finetune(self, *, checkpoint_dir: str | Path | None = None, resume: bool = False) -> list[dict[str, float]]:
        """Train for ``epochs`` passes; the reader's model is left trained and in eval mode.

        Args:
            checkpoint_dir: Save a ``transformers`` checkpoint here after every epoch (model,
                optimiser, scheduler and RNG state; the last ``keep_checkpoints``).
            resume: Continue from the newest checkpoint in ``checkpoint_dir`` (a run killed
                mid-way resumes where its last epoch ended); no checkpoint there = start afresh.

        Returns:
            One record per epoch: ``{"epoch", "loss" (mean training loss), "steps" (optimiser
            steps), "lr"}``, plus ``"eval_loss"`` with validation samples.

        Raises:
            ValueError: ``resume`` without ``checkpoint_dir``.
        """
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir, the folder the interrupted run checkpointed to")
        cfg = self.config
        self._checkpointing = checkpoint_dir is not None
        device = self.reader.device
        model = self._prepare_model()
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.trainable_parameter_names = [name for name, _ in named]
        logger.info(
            "reader SFT (%s): %d samples, %d trainable parameters", cfg.mode, len(self.samples),
            sum(p.numel() for _, p in named),
        )
        with tempfile.TemporaryDirectory(prefix="reader-sft-") as scratch:
            output_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path(scratch)
            trainer = _SFTTrainer(
                model=model,
                args=self._training_arguments(output_dir, device),
                data_collator=_TrainingCollator(self._collate),
                train_dataset=self._train_data,
                eval_dataset=self._validation_data if self.validation_samples else None,
                # report_to stays "none" in the arguments: these are the same integrations, pointed at report_dir.
                callbacks=reporting_callbacks(cfg.report_to, cfg.report_dir, run_name="train-reader"),
            )
            trainer.remove_callback(PrinterCallback)  # the per-epoch records are logged below
            last = get_last_checkpoint(str(output_dir)) if resume and output_dir.is_dir() else None
            if resume and last is None:
                logger.info("no checkpoint in %s: reader SFT starts from the beginning", output_dir)
            trainer.train(resume_from_checkpoint=last)
            self.history = _epoch_records(trainer.state.log_history)
            for record in self.history:
                logger.info("reader SFT epoch %d: %s", int(record["epoch"]), {k: round(v, 5) for k, v in record.items()})
            model = trainer.model
            if cfg.mode == "lora":
                self._adapter_dir = Path(tempfile.mkdtemp(prefix="reader-lora-"))
                # Kept until the engine goes, so save() can write the adapters after the merge.
                weakref.finalize(self, shutil.rmtree, self._adapter_dir, True)
                model.save_pretrained(self._adapter_dir)
                model = model.merge_and_unload()
        self.reader.model = model.to(device).eval()
        for param in self.reader.model.parameters():
            param.requires_grad_(False)
        self.reader._fingerprint = None  # the weights changed
        return self.history

    def save(self, save_dir: str | Path) -> Path:
        """Save the reader plus :data:`SFT_CONFIG_NAME` and a model card, atomically.

        Full mode and LoRA with ``merge_lora`` save the whole model; LoRA without it saves the
        adapters alone, with the processor and settings, on top of the base model they name.

        Returns:
            The folder; ``HFLVLMReader.from_pretrained(folder)`` loads the fine-tuned reader.
        """
        folder = Path(save_dir)
        adapters_only = self.config.mode == "lora" and not self.config.merge_lora and self._adapter_dir is not None
        with swapped_directory(folder) as tmp:
            self.reader.save_pretrained(tmp, save_model=not adapters_only)
            if adapters_only:
                self._write_adapters(tmp)
            record: dict[str, Any] = {
                "config": self.config.model_dump(mode="json"),
                "n_samples": len(self.samples),
                "n_validation_samples": len(self.validation_samples),
                "saved": "lora adapters" if adapters_only else "model",
                "history": self.history,
            }
            atomic_write_text(tmp / SFT_CONFIG_NAME, json.dumps(record, indent=2) + "\n")
            last = self.history[-1] if self.history else {}
            validation = {"final_train_loss": float(last["loss"])} if "loss" in last else None
            if validation is not None and "eval_loss" in last:
                validation["final_validation_loss"] = float(last["eval_loss"])
            write_model_card(
                tmp, kind="reader", base_model=getattr(self.reader, "model_name", None) or None, task=self.reader.task,
                training={**self.config.model_dump(mode="json"), "n_samples": len(self.samples)},
                validation=validation,
                validation_dataset=(f"{len(self.validation_samples)} validation samples" if self.validation_samples
                                    else "training samples (no validation split)"),
            )
        logger.info("saved the fine-tuned reader (%s) to %s", record["saved"], folder)
        return folder

    def _write_adapters(self, folder: Path) -> None:
        assert self._adapter_dir is not None
        for path in self._adapter_dir.iterdir():
            if path.is_file():
                shutil.copy2(path, folder / path.name)
        config_path = folder / ADAPTER_CONFIG_NAME
        adapter = json.loads(config_path.read_text())
        base = adapter.get("base_model_name_or_path")
        # A base model loaded from a relative folder must stay findable from anywhere.
        if base and Path(base).is_dir():
            adapter["base_model_name_or_path"] = str(Path(base).resolve())
        atomic_write_text(config_path, json.dumps(adapter, indent=2) + "\n")


class _SFTTrainer(Trainer):
    """``Trainer`` whose resume reloads a full model through ``from_pretrained``.

    ``save_pretrained`` writes some architectures (LLaVA in transformers 5) under their checkpoint
    key names, which ``Trainer``'s plain ``load_state_dict(strict=False)`` on resume does not map
    back: it would warn and keep the initial weights. ``from_pretrained`` applies the model's key
    mapping. LoRA adapters keep peft's names and resume as usual.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        target = model if model is not None else self.model
        if hasattr(target, "peft_config"):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        loaded = type(target).from_pretrained(resume_from_checkpoint, dtype=target.dtype)
        target.load_state_dict(loaded.state_dict())


class _TrainingCollator:
    """The SFT collator plus ``use_cache=False`` (training never reuses keys and values)."""

    def __init__(self, collate: SFTCollator) -> None:
        self.collate = collate

    def __call__(self, rows: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
        return {**self.collate(rows), "use_cache": False}


def _answer_nll(model: torch.nn.Module, encoded: dict[str, torch.Tensor]) -> float:
    """Summed cross-entropy of one encoded sample's answer tokens."""
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    labels = encoded["labels"].to(device)
    inputs = {
        key: value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
        for key, value in encoded.items()
        if key != "labels"
    }
    logits = model(**inputs, use_cache=False).logits  # (1, T, V)
    # The logits at position t predict token t + 1.
    return float(
        torch.nn.functional.cross_entropy(
            logits[0, :-1].float(), labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum"
        )
    )


def _epoch_records(log_history: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Trainer's per-epoch log entries as one record per epoch (0-based ``epoch``)."""
    records: dict[int, dict[str, float]] = {}
    previous_step = 0
    for entry in log_history:
        if "epoch" not in entry or not ({"loss", "eval_loss"} & set(entry)):
            continue
        epoch = max(0, round(float(entry["epoch"])) - 1)
        record = records.setdefault(epoch, {"epoch": float(epoch)})
        if "loss" in entry:
            step = int(entry.get("step", previous_step))
            record.update(loss=float(entry["loss"]), steps=float(step - previous_step),
                          lr=float(entry.get("learning_rate", float("nan"))))
            previous_step = step
        if "eval_loss" in entry:
            record["eval_loss"] = float(entry["eval_loss"])
    return [records[k] for k in sorted(records)]
