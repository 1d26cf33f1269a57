"""``train-reader``: stage-1 reader SFT on retrieval-augmented prompts from the command line."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llama_index_lvlm_retriever.cli._common import (
    CLIError,
    add_config_option,
    add_retrieval_options,
    check_retrieval_options,
    require_exclude_self,
    resolved_config,
    write_json_atomic,
)
from llama_index_lvlm_retriever.cli._loading import (
    load_cases,
    load_encoder,
    load_reader,
    load_retriever,
    load_task,
)
from llama_index_lvlm_retriever.cli._options import add_command_parser, add_deprecated_alias
from llama_index_lvlm_retriever.training.sft_config import ReaderSFTConfig

logger = logging.getLogger(__name__)

TRAIN_READER_CONFIG_FILE = "train_reader_config.json"
"""Written into the output folder: the options train-reader ran with and the resolved SFT config."""
SAMPLES_FILE = "sft_samples.jsonl"
"""Written into the output folder: the training samples as chat records (for other SFT tools)."""


def _default(name: str) -> Any:
    return ReaderSFTConfig.model_fields[name].default


def register(subparsers: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Add ``train-reader``; returns name -> parser."""
    train = add_command_parser(
        subparsers,
        "train-reader",
        help="fine-tune the reader on retrieval-augmented prompts (stage-1 SFT)",
        description="Retrieve the top --k-image / --k-text pairs of each head for every training case (its own pair "
        "excluded), fine-tune the reader to answer the gold verbalizer in the exact inference prompt, "
        "and save the reader (loadable by HFLVLMReader.from_pretrained) to --out.",
    )
    data = train.add_argument_group("input")
    data.add_argument("--kb", required=True, help="KB directory written by build-kb")
    data.add_argument("--cases", required=True, help="labelled training cases (JSONL of image_path + answers)")
    data.add_argument("--validation-cases", default=None,
                      help="labelled validation cases: their SFT samples are scored after every epoch (eval_loss)")
    data.add_argument("--task", default=None, help="built-in task name or task JSON file (default: the one saved in a reader folder)")
    data.add_argument("--image-head", default=None, help="trained image-head folder (default: identity)")
    data.add_argument("--text-head", default=None, help="trained text-head folder (default: identity)")
    # Retrieved pairs per head per case, one sample each (the paper: 2 + 2); a case's own pair is never a sample.
    add_retrieval_options(data, exclude_self=True)
    model = train.add_argument_group("reader")
    model.add_argument("--reader", required=True, help="LVLM: hub id (e.g. Qwen/Qwen2-VL-2B-Instruct) or local folder")
    model.add_argument("--mode", default=_default("mode"), choices=["full", "lora"], help="full fine-tuning or LoRA adapters")
    model.add_argument("--merge", action="store_true",
                       help="LoRA: save the merged model (self-contained) instead of the adapters alone")
    model.add_argument("--lora-r", type=int, default=_default("lora_r"), help="LoRA rank")
    model.add_argument("--lora-alpha", type=float, default=_default("lora_alpha"), help="LoRA alpha (scale = alpha / r)")
    model.add_argument("--lora-dropout", type=float, default=_default("lora_dropout"), help="LoRA dropout")
    model.add_argument("--target-modules", nargs="+", default=list(_default("target_modules")), help="module names that get LoRA adapters")
    optim = train.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=_default("epochs"), help="passes over the samples")
    optim.add_argument("--lr", type=float, default=_default("learning_rate"), help="peak AdamW learning rate")
    optim.add_argument("--batch-size", type=int, default=_default("batch_size"), help="samples per forward pass")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=_default("gradient_accumulation_steps"),
                       help="forward passes per optimiser step (effective batch = batch size x this)")
    optim.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    optim.add_argument("--weight-decay", type=float, default=_default("weight_decay"), help="AdamW weight decay")
    optim.add_argument("--warmup-ratio", type=float, default=_default("warmup_ratio"), help="fraction of steps with linear warmup")
    optim.add_argument("--max-grad-norm", type=float, default=_default("max_grad_norm"), help="gradient-norm clip (<= 0: none)")
    optim.add_argument("--max-image-side", type=int, default=None, help="longest image side (default: the reader's prompt setting)")
    optim.add_argument("--seed", type=int, default=_default("seed"), help="seed of sample order and LoRA init")
    runtime = train.add_argument_group("runtime")
    runtime.add_argument("--device", default="cpu", help="torch device of encoder and reader")
    reader_dtype = runtime.add_argument("--reader-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="reader weight dtype (auto = the checkpoint's)")
    add_deprecated_alias(runtime, "--dtype", reader_dtype)
    runtime.add_argument("--no-progress", action="store_true", help="hide progress bars")
    runtime.add_argument(
        "--report-to", nargs="+", default=["none"], choices=["none", "tensorboard", "mlflow", "wandb"], metavar="NAME",
        help="send training metrics to these transformers integrations: tensorboard, mlflow, wandb (each needs its "
        "package; MLflow logs to ./mlruns unless MLFLOW_TRACKING_URI is set, W&B offline needs WANDB_MODE=offline); "
        "default none",
    )
    runtime.add_argument("--report-dir", default=None, metavar="DIR",
                         help="folder of TensorBoard's event files (default: runs/<command>-<date-time>)")
    runtime.add_argument("--checkpoint-dir", default=None,
                         help="epoch checkpoints (model, optimiser, scheduler, RNG); default: <out>.checkpoints, "
                         "removed after a successful save")
    runtime.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of an interrupted run")
    train.add_argument("--out", required=True, help="folder for the fine-tuned reader, samples and records")
    add_config_option(train)
    train.set_defaults(handler=_train_reader)
    return {"train-reader": train}


def sft_config_from_args(args: argparse.Namespace) -> ReaderSFTConfig:
    """The :class:`ReaderSFTConfig` the options describe.

    Raises:
        CLIError: A value the config rejects (the message names the option's field).
    """
    try:
        return ReaderSFTConfig(
            epochs=args.epochs,
            learning_rate=args.lr,
            batch_size=args.batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            bf16=args.bf16,
            merge_lora=args.merge,
            mode=args.mode,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=tuple(args.target_modules),
            weight_decay=args.weight_decay,
            warmup_ratio=args.warmup_ratio,
            max_grad_norm=args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None,
            max_image_side=args.max_image_side,
            seed=args.seed,
            show_progress=not args.no_progress,
            report_to=tuple(args.report_to),
            report_dir=args.report_dir,
        )
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']} (got {e['input']!r})" for e in err.errors())
        raise CLIError(f"invalid train-reader options: {problems}") from err


def _train_reader(args: argparse.Namespace) -> int:
    from llama_index_lvlm_retriever.training.reader_sft import ReaderSFTEngine
    from llama_index_lvlm_retriever.training.sft_data import build_sft_samples, export_sft_jsonl

    check_retrieval_options(args)
    require_exclude_self(args, "train-reader")
    if not Path(args.kb).is_dir():
        raise CLIError(f"--kb {args.kb}: folder not found; build one with build-kb")
    config = sft_config_from_args(args)
    task = load_task(args.task)
    cases = load_cases(args.cases)
    reader = load_reader(args.reader, task, device=args.device, dtype=args.reader_dtype)
    retriever = load_retriever(
        args.kb, load_encoder(args.kb, device=args.device), image_head=args.image_head, text_head=args.text_head,
        k_image=args.k_image, k_text=args.k_text, head_fusion=args.head_fusion, allow_other_kb=args.allow_other_kb,
    )
    heads = tuple(h for h, k in (("image", args.k_image), ("text", args.k_text)) if k > 0)
    samples = build_sft_samples(cases, retriever, reader.task, heads=heads)
    validation = (
        build_sft_samples(load_cases(args.validation_cases), retriever, reader.task, heads=heads)
        if args.validation_cases else []
    )
    out = Path(args.out)
    checkpoints = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(f"{out.name}.checkpoints")
    engine = ReaderSFTEngine(reader, samples, config, validation_samples=validation)
    history = engine.finetune(checkpoint_dir=checkpoints, resume=args.resume)
    engine.save(out)  # replaces --out as a whole, so the records below go in after it
    export_sft_jsonl(samples, out / SAMPLES_FILE, reader.task, reader.config.prompt)
    record = {**resolved_config(args), "sft_config": config.model_dump(mode="json"), "history": history}
    write_json_atomic(out / TRAIN_READER_CONFIG_FILE, record)
    if not args.checkpoint_dir:
        shutil.rmtree(checkpoints, ignore_errors=True)
    last = history[-1]
    validation_note = f", validation loss {last['eval_loss']:.4f}" if "eval_loss" in last else ""
    saved = "LoRA adapters" if args.mode == "lora" and not args.merge else "model"
    print(
        f"fine-tuned the reader ({args.mode}) on {len(samples)} samples from {len(cases)} cases for "
        f"{args.epochs} epoch(s), final loss {last['loss']:.4f}{validation_note}; saved the {saved} -> {out}"
    )
    return 0
