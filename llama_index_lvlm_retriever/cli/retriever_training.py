"""``collect-feedback`` and ``train-retriever``: fine-tune the retriever's query heads on reader feedback."""

from __future__ import annotations

import argparse
import functools
import json
import logging
from pathlib import Path
from typing import Any

from llama_index_lvlm_retriever.cli._common import (
    CLIError,
    add_allow_other_kb_option,
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

logger = logging.getLogger(__name__)

COLLECT_CONFIG_FILE = "collect_config.json"
"""Written into the feedback cache folder: the options it was collected with (train-retriever reads the heads)."""
TRAIN_CONFIG_FILE = "train_config.json"
"""Written into the heads folder: the options train-retriever ran with."""
LOSSES = ("posterior_kl", "lsr", "rank", "emdr")
_CONFIG_LOSS = {"posterior_kl": "posterior", "lsr": "lsr", "rank": "rank", "emdr": "emdr"}  # --loss -> TrainerConfig.loss


def register(subparsers: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Add ``collect-feedback`` and ``train-retriever``; returns name -> parser."""
    collect = add_command_parser(
        subparsers,
        "collect-feedback",
        help="score retrieved candidates with the frozen reader and cache them",
        description="Retrieve --n-candidates pairs per head for every training case, score each with the "
        "frozen reader, and write a resumable feedback cache to --out.",
    )
    data = collect.add_argument_group("input")
    data.add_argument("--kb", required=True, help="KB directory written by build-kb")
    data.add_argument("--cases", required=True, help="labelled training cases (JSONL of image_path + answers)")
    data.add_argument("--task", default=None, help="built-in task name or task JSON file (default: the one saved in a reader folder)")
    model = collect.add_argument_group("models")
    model.add_argument("--reader", required=True, help="LVLM: hub id (e.g. Qwen/Qwen2-VL-2B-Instruct) or local folder")
    model.add_argument("--image-head", default=None, help="trained image-head folder to collect with (default: identity)")
    model.add_argument("--text-head", default=None, help="trained text-head folder to collect with (default: identity)")
    fb = collect.add_argument_group("feedback")
    fb.add_argument("--n-candidates", type=int, default=50, help="candidates scored per case and head (the paper: 50)")
    feedback_heads = fb.add_argument(
        "--feedback-heads", nargs="+", default=["image", "text"], choices=["image", "text"], help="heads whose candidates are collected",
    )
    # --heads names a trained heads folder in query/diagnose/predict; here it was the head list.
    add_deprecated_alias(fb, "--heads", feedback_heads)
    # The retriever's k per head defines disagreeing cases and validation's top-k. A training case must
    # never be scored with its own pair (its caption holds the gold label), so exclusion is always on.
    add_retrieval_options(fb, exclude_self=True)
    fb.add_argument("--shard-size", type=int, default=256, help="cases per shard (unit of resumption)")
    fb.add_argument("--embed-batch-size", type=int, default=32, help="query images per encoder call")
    fb.add_argument("--pairs-batch-size", type=int, default=64, help="(case, candidate) pairs per reader.score call")
    fb.add_argument("--reader-batch-size", type=int, default=8, help="sequences per reader forward pass")
    runtime = collect.add_argument_group("runtime")
    runtime.add_argument("--device", default="cpu", help="torch device of encoder and reader")
    reader_dtype = runtime.add_argument("--reader-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="reader weight dtype (auto = the checkpoint's)")
    add_deprecated_alias(runtime, "--dtype", reader_dtype)
    runtime.add_argument("--no-progress", action="store_true", help="hide progress bars")
    collect.add_argument("--out", required=True, help="feedback cache folder (an unfinished one is resumed)")
    add_config_option(collect)
    collect.set_defaults(handler=_collect_feedback)

    train = add_command_parser(
        subparsers,
        "train-retriever",
        help="fine-tune the query heads on a feedback cache",
        description="Train residual query heads so the retriever ranks the candidates the reader finds "
        "useful higher; write image_head/, text_head/ and the training record to --out.",
    )
    data = train.add_argument_group("input")
    data.add_argument("--kb", required=True, help="KB directory the feedback was collected on")
    data.add_argument("--feedback", required=True, help="feedback cache folder written by collect-feedback")
    data.add_argument("--image-head", default=None, help="image head the feedback was collected with (default: the one in the cache's collect_config.json, else identity)")
    data.add_argument("--text-head", default=None, help="text head the feedback was collected with (default: as --image-head)")
    add_allow_other_kb_option(data)
    objective = train.add_argument_group("objective")
    objective.add_argument("--loss", default="posterior_kl", choices=list(LOSSES),
                           help="training loss (default posterior_kl with --gamma 1: the paper's code, chosen on "
                           "validation; see README)")
    objective.add_argument("--prior-gamma", type=float, default=None,
                           help="posterior_kl: temperature of the frozen prior (default: gamma; 1.0 = the paper's code)")
    objective.add_argument("--beta", type=float, default=1.0, help="lsr: temperature dividing the reader log-likelihoods")
    objective.add_argument("--rank-min-gap", type=float, default=0.0,
                           help="rank: smallest reader log-likelihood gap (nats) that makes a pair")
    objective.add_argument("--inconsistent-weight", type=float, default=1.0,
                           help="weight of an inconsistent case relative to a consistent one (soft --only-inconsistent)")
    objective.add_argument("--gamma", type=_gamma, default=1.0,
                           help="retrieval softmax temperature (divides the scores; default 1.0 on raw cosines, the "
                           "paper's code): a float, or 'auto' = per head, the value giving the frozen softmax half its "
                           "maximum entropy")
    objective.add_argument("--only-inconsistent", action="store_true", help="train only on cases whose reader prediction changes with the candidate")
    objective.add_argument("--head", default="both", choices=["text", "image", "both"], help="heads to train")
    objective.add_argument("--schedule", default="joint", choices=["joint", "sequential"], help="train heads together or text then image")
    optim = train.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, default=600, help="optimiser steps per phase")
    optim.add_argument("--lr", type=float, default=None,
                       help="peak AdamW learning rate (default: 0.1 in adapter mode, 3e-3 in encoder mode)")
    optim.add_argument("--batch-size", type=int, default=256, help="training cases per step")
    optim.add_argument("--head-kind", default="linear", choices=["linear", "mlp"], help="residual head architecture")
    optim.add_argument("--alpha", type=float, default=0.15, help="blend weight of a new head (adapter or tower copy)")
    encoder = train.add_argument_group("encoder mode (the paper's head: a trainable copy of the image tower)")
    encoder.add_argument("--mode", default="adapter", choices=["adapter", "encoder"],
                         help="adapter: residual head on cached embeddings (fast); encoder: tower copy on the query images")
    encoder.add_argument("--cases", default=None,
                         help="the training cases (JSONL or CSV) the feedback was collected for: needed by encoder mode, "
                         "--rounds > 1 and real-retrieval validation of a held-out split")
    encoder.add_argument("--encoder-last-n-blocks", type=int, default=1, help="trainable blocks of the tower copy")
    encoder.add_argument("--encoder-lora-r", type=int, default=None,
                         help="train rank-r LoRA adapters instead of the last blocks (needs the peft extra)")
    optim.add_argument("--weight-decay", type=float, default=0.01,
                       help="L2-SP: pull the trainable weights toward their start (not toward zero)")
    optim.add_argument("--validation-fraction", type=float, default=0.1, help="cases held out for checkpoint selection (0 = none)")
    optim.add_argument("--eval-every", type=int, default=25, help="validate every this many steps")
    optim.add_argument("--seed", type=int, default=0, help="seed of split, batches and initialisation")
    valid = train.add_argument_group("validation on real retrieval and feedback rounds (need the reader)")
    valid.add_argument("--reader", default=None,
                       help="the frozen reader that scored --feedback (hub id or folder): validation then searches the "
                       "whole KB and scores new pairs through the cache; without it, it re-ranks the cached pools")
    valid.add_argument("--task", default=None,
                       help="built-in task name or task JSON file (default: as in the cache's collect_config.json)")
    valid.add_argument("--validation-cases", default=None,
                       help="held-out validation cases (JSONL or CSV); default: --validation-fraction of --cases")
    valid.add_argument("--rounds", type=int, default=1,
                       help="feedback rounds: after each, score the trained heads' new candidates and train on the merged pool")
    valid.add_argument("--adoption", default="no_regression", choices=["no_regression", "best"],
                       help="no_regression: keep the trained heads only if they beat the initial ones on validation")
    valid.add_argument("--adoption-holdout", type=float, default=0.5,
                       help="share of validation cases kept out of checkpoint selection for the adoption rule")
    valid.add_argument("--reader-dtype", default=None, choices=["auto", "float32", "float16", "bfloat16"],
                       help="reader dtype (default: as in the cache's collect_config.json, else auto); the reader "
                       "must be loaded as it was for collect-feedback, or the cache refuses it")
    valid.add_argument("--reader-batch-size", type=int, default=None,
                       help="sequences per reader forward pass (default: as in collect_config.json, else 8)")
    runtime = train.add_argument_group("runtime")
    runtime.add_argument("--device", default="cpu", help="torch device for training")
    runtime.add_argument("--no-progress", action="store_true", help="hide progress bars")
    runtime.add_argument(
        "--report-to", nargs="+", default=["none"], choices=["none", "tensorboard", "mlflow", "wandb"], metavar="NAME",
        help="send training metrics to these transformers integrations: tensorboard, mlflow, wandb (each needs its "
        "package; MLflow logs to ./mlruns unless MLFLOW_TRACKING_URI is set, W&B offline needs WANDB_MODE=offline); "
        "default none",
    )
    runtime.add_argument("--report-dir", default=None, metavar="DIR",
                         help="folder of TensorBoard's event files (default: runs/<command>-<date-time>)")
    train.add_argument("--out", required=True, help="heads folder to write (image_head/, text_head/, records)")
    add_config_option(train)
    train.set_defaults(handler=_train_retriever)
    return {"collect-feedback": collect, "train-retriever": train}


def _collect_feedback(args: argparse.Namespace) -> int:
    from llama_index_lvlm_retriever.training.config import FeedbackConfig
    from llama_index_lvlm_retriever.training.feedback import collect_feedback

    check_retrieval_options(args)
    require_exclude_self(args, "collect-feedback")
    config = FeedbackConfig(
        n_candidates=args.n_candidates,
        heads=tuple(args.feedback_heads),
        embed_batch_size=args.embed_batch_size,
        reader_batch_size=args.pairs_batch_size,
        shard_size=args.shard_size,
    )
    task = load_task(args.task)
    cases = load_cases(args.cases)
    reader = load_reader(args.reader, task, device=args.device, dtype=args.reader_dtype, batch_size=args.reader_batch_size)
    retriever = load_retriever(
        args.kb, load_encoder(args.kb, device=args.device), image_head=args.image_head, text_head=args.text_head,
        k_image=args.k_image, k_text=args.k_text, head_fusion=args.head_fusion, allow_other_kb=args.allow_other_kb,
    )
    cache = collect_feedback(cases, retriever, reader, args.out, config, show_progress=not args.no_progress)
    record = resolved_config(args)
    # Absolute head paths, so train-retriever finds them from any working directory.
    for key in ("image_head", "text_head"):
        record[key] = str(Path(record[key]).resolve()) if record[key] else None
    write_json_atomic(Path(args.out) / COLLECT_CONFIG_FILE, record)
    print(f"collected feedback for {len(cache)} cases ({', '.join(cache.heads)} heads, {cache.n_candidates} candidates) -> {args.out}")
    return 0


def _gamma(value: str) -> float | str:
    """``--gamma``: ``auto`` or a float > 0."""
    if value == "auto":
        return value
    try:
        gamma = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a float > 0 or 'auto', got {value!r}") from None
    if not gamma > 0:
        raise argparse.ArgumentTypeError(f"expected a float > 0 or 'auto', got {value!r}")
    return gamma


def build_loss(name: str, gamma: float | str, *, only_inconsistent: bool = False) -> Any:
    """The loss module named by ``--loss``; with ``gamma="auto"`` a factory ``gamma -> loss`` the engine calls per head.

    Raises:
        CLIError: An unknown name.
    """
    from llama_index_lvlm_retriever.training.losses import (
        EMDRLoss,
        LSRLoss,
        PosteriorKLLoss,
        ReaderRankLoss,
    )

    classes = {"posterior_kl": PosteriorKLLoss, "lsr": LSRLoss, "rank": ReaderRankLoss, "emdr": EMDRLoss}
    if name not in classes:
        raise CLIError(f"--loss {name!r}: choose one of {list(classes)}")
    if gamma == "auto":
        return functools.partial(classes[name], only_inconsistent=only_inconsistent)
    return classes[name](gamma=gamma, only_inconsistent=only_inconsistent)


def _collect_record(feedback_dir: str) -> dict[str, Any]:
    """The options collect-feedback ran with (its ``collect_config.json``), ``{}`` when absent."""
    path = Path(feedback_dir) / COLLECT_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CLIError(f"{path} is not valid JSON; pass --image-head/--text-head explicitly") from err
    return record if isinstance(record, dict) else {}


def collected_heads(feedback_dir: str) -> tuple[str | None, str | None]:
    """The head folders recorded in a feedback cache's ``collect_config.json`` (``None`` = identity)."""
    record = _collect_record(feedback_dir)
    return record.get("image_head"), record.get("text_head")


def _train_retriever(args: argparse.Namespace) -> int:
    from llama_index_lvlm_retriever.training.config import TrainerConfig
    from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache
    from llama_index_lvlm_retriever.training.trainer import RetrieverFinetuneEngine

    if not Path(args.feedback).is_dir():
        raise CLIError(f"--feedback {args.feedback}: folder not found; run collect-feedback first")
    if args.mode == "encoder" and not args.cases:
        raise CLIError("--mode encoder reads the query images: pass --cases, the training cases file the feedback "
                       "was collected for (or use --mode adapter)")
    if args.mode != "encoder" and args.encoder_lora_r is not None:
        raise CLIError("--encoder-lora-r needs --mode encoder")
    if args.rounds > 1 and not (args.reader and args.cases):
        raise CLIError(f"--rounds {args.rounds} scores the trained heads' new candidates: pass --reader and --cases")
    config = TrainerConfig(
        mode=args.mode,
        encoder_last_n_blocks=args.encoder_last_n_blocks,
        encoder_lora_r=args.encoder_lora_r,
        schedule=args.schedule,
        head_kind=args.head_kind,
        alpha=args.alpha,
        max_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        gamma=args.gamma,
        loss=_CONFIG_LOSS[args.loss],
        prior_gamma=args.prior_gamma,
        beta=args.beta,
        rank_min_gap=args.rank_min_gap,
        only_inconsistent=args.only_inconsistent,
        inconsistent_weight=args.inconsistent_weight,
        rounds=args.rounds,
        adoption=args.adoption,
        adoption_holdout=args.adoption_holdout,
        validation_fraction=args.validation_fraction,
        eval_every=args.eval_every,
        seed=args.seed,
        device=args.device,
        show_progress=not args.no_progress,
        report_to=tuple(args.report_to),
        report_dir=args.report_dir,
    )
    recorded_image, recorded_text = collected_heads(args.feedback)
    image_head = args.image_head or recorded_image
    text_head = args.text_head or recorded_text
    feedback = FeedbackCache.from_persist_dir(args.feedback)
    # The retriever as collect-feedback ran it: its per-head k and fusion set validation's top-k.
    collected = _collect_record(args.feedback)
    retriever = load_retriever(
        args.kb, load_encoder(args.kb, device="cpu"), image_head=image_head, text_head=text_head,
        k_image=int(collected.get("k_image", 2)), k_text=int(collected.get("k_text", 2)),
        head_fusion=str(collected.get("head_fusion", "max")), allow_other_kb=args.allow_other_kb,
    )
    cases = load_cases(args.cases) if args.cases else None
    reader = None
    if args.reader:
        # The cache checks the reader's identity, settings included: load it as collect-feedback did.
        reader = load_reader(
            args.reader, load_task(args.task or collected.get("task")), device=args.device,
            dtype=args.reader_dtype or collected.get("reader_dtype") or collected.get("dtype") or "auto",  # "dtype": before the rename
            batch_size=args.reader_batch_size or collected.get("reader_batch_size") or 8,
        )
    validation_cases = load_cases(args.validation_cases) if args.validation_cases else None
    engine = RetrieverFinetuneEngine(retriever, feedback, head=args.head, config=config, cases=cases,
                                     reader=reader, validation_cases=validation_cases)
    for found in engine.target_diagnostics.values():
        print(found.line() + ("  -> this target cannot change retrieval" if found.cannot_change_retrieval else ""))
    engine.finetune()
    out = engine.save(args.out)
    write_json_atomic(out / TRAIN_CONFIG_FILE, {**resolved_config(args), "image_head": image_head, "text_head": text_head})
    gammas = ", ".join(f"{h} {g:.4g}" for h, g in engine.gammas.items())
    print(f"trained the {args.head} head(s) ({args.mode} mode) with {args.loss} for {args.steps} steps "
          f"(gamma: {gammas}) -> {out}")
    if engine.decision is not None:
        print(engine.decision.message)
    return 0
