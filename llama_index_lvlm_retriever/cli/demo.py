"""``demo``: the whole method end to end (``make demo``); see :mod:`llama_index_lvlm_retriever.demo`.

Offline by default: real ELPV solar-cell images, a small CLIP and a small LLaVA trained here.
Real mode: ``--dataset retinamnist --embed-model <CLIP/SigLIP> --reader <LVLM>`` runs the
same pipeline with pretrained checkpoints (network for the download, a GPU for speed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llama_index_lvlm_retriever.cli._common import CLIError
from llama_index_lvlm_retriever.cli._options import add_command_parser, add_deprecated_alias

__all__ = ["config_from_args", "register"]


def register(subparsers: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Add the ``demo`` subcommand; returns name -> parser."""
    demo = add_command_parser(
        subparsers,
        "demo",
        help="the method end to end: closed-book vs standard RAG vs LVLM-aware RAG vs placebo",
        description="Split real expert-labelled images into knowledge base / train / val / test, train (or load) "
        "the retriever encoder and the reader, collect the reader's feedback, train the LVLM-aware retriever, "
        "and print the paper-style table with confidence intervals, a placebo row and paired tests. "
        "Outputs go to --out (Markdown, JSON, PNG); a second run reuses the cache.",
        # Defaults are written in the help texts: several depend on --quick or on real mode.
        formatter_class=argparse.HelpFormatter,
    )
    demo.add_argument("--out", default="demo_output", help="output folder (reports, plots, cache/); default demo_output")
    demo.add_argument("--seed", type=int, nargs="+", default=None,
                      help="seed(s); default 0 1 2 (quick: 0)")
    demo.add_argument("--quick", action="store_true", help="small run for CI (one seed, 480 images, short training)")
    demo.add_argument("--fresh", action="store_true", help="delete the cache and rebuild everything")
    demo.add_argument("--k-image", type=int, default=None, help="neighbours from the image head (default 2, the paper)")
    demo.add_argument("--k-text", type=int, default=None, help="neighbours from the text head (default 2, the paper)")
    demo.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 1000; quick 200)")
    demo.add_argument("--limit", type=int, default=None, help="use only this many images (stratified)")
    demo.add_argument("--dataset", choices=["elpv", "fashion-mnist", "retinamnist", "dermamnist", "breastmnist"],
                      default="elpv",
                      help="elpv (offline, from PyPI; the default), fashion-mnist (offline scale variant: Debian's "
                      "dataset-fashion-mnist or --data-root) or a MedMNIST task (real mode; downloads through medmnist)")
    embed_model = demo.add_argument(
        "--embed-model", default=None,
        help="real mode: CLIP/SigLIP checkpoint (hub id or folder) instead of training a small CLIP")
    reader = demo.add_argument(
        "--reader", default=None, help="real mode: image-text-to-text checkpoint, e.g. Qwen/Qwen2-VL-2B-Instruct")
    # The names the other commands use; the demo's old spellings still work, hidden, with a warning.
    add_deprecated_alias(demo, "--retriever-model", embed_model)
    add_deprecated_alias(demo, "--reader-model", reader)
    demo.add_argument("--image-size", type=int, default=None, help="stored image side (default: elpv 48, fashion-mnist 28; real mode 224); a multiple of the small CLIP's patch")
    demo.add_argument("--data-root", default=None,
                      help="fashion-mnist: folder of the idx files (default /usr/share/datasets/fashion-mnist); "
                      "MedMNIST: download folder (default <out>/cache/medmnist)")
    demo.add_argument("--device", default="cpu", help="torch device for the reader and training, e.g. cuda; default cpu")
    demo.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads for the whole run (default 2: fixed, so numbers do not depend on the machine)")
    demo.add_argument("--nuisance-strength", type=float, default=None,
                      help="miniature: strength of the label-independent tint and contrast in (0, 1] (default: the dataset's)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=_demo)
    return {"demo": demo}


def config_from_args(args: argparse.Namespace):  # -> DemoConfig (import kept lazy for a fast --help)
    """Turn parsed arguments into a :class:`~llama_index_lvlm_retriever.demo.DemoConfig`.

    Raises:
        CLIError: Inconsistent options (named).
    """
    from pydantic import ValidationError

    from llama_index_lvlm_retriever.demo.config import dataset_config, quick_config

    values: dict[str, object] = {
        "output_dir": Path(args.out),
        "fresh": args.fresh,
        "retriever_model": args.embed_model,
        "reader_model": args.reader,
        "device": args.device,
        "show_progress": not args.no_progress,
    }
    optional = {"seeds": tuple(args.seed) if args.seed else None, "k_image": args.k_image, "k_text": args.k_text,
                "n_bootstrap": args.bootstrap,
                "limit": args.limit, "data_root": Path(args.data_root) if args.data_root else None,
                "threads": args.threads, "nuisance_strength": args.nuisance_strength}
    image_size = args.image_size or (224 if args.reader or args.embed_model else None)
    optional["image_size"] = image_size
    values.update({key: value for key, value in optional.items() if value is not None})
    try:
        return quick_config(dataset=args.dataset, **values) if args.quick else dataset_config(args.dataset, **values)
    except ValidationError as err:
        # The messages only: pydantic's header and links speak of DemoConfig, not of the flags.
        raise CLIError("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors())) from err


def _demo(args: argparse.Namespace) -> int:
    from llama_index_lvlm_retriever.demo.run import run_demo

    run_demo(config_from_args(args))
    return 0
