"""``evaluate``: compare standard RAG, trained retrievers and closed-book reading on labelled cases."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any, get_args

from llama_index_lvlm_retriever.aggregation import DEFAULT_TEMPERATURE, AggregationMethod
from llama_index_lvlm_retriever.cli._common import (
    CLIError,
    add_config_option,
    add_retrieval_options,
    check_retrieval_options,
    resolved_config,
    write_json_atomic,
)
from llama_index_lvlm_retriever.cli._loading import (
    heads_dir_paths,
    load_cases,
    load_encoder,
    load_reader,
    load_retriever,
    load_task,
)
from llama_index_lvlm_retriever.cli._options import add_command_parser, add_deprecated_alias

logger = logging.getLogger(__name__)

EVAL_CONFIG_FILE = "evaluate_config.json"
"""Written next to the report: the options the evaluation ran with."""
STANDARD_RAG = "standard RAG"
"""Name of the identity-heads system (the baseline of the paired comparisons)."""


def register(subparsers: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Add the ``evaluate`` subcommand; returns name -> parser."""
    parser = add_command_parser(
        subparsers,
        "evaluate",
        help="evaluate retrieval systems with a reader on labelled cases",
        description="Read every case with standard RAG (identity heads), each trained heads folder "
        "(--system NAME=DIR) and closed-book; write report.json, report.md and plots to --out and "
        "print the Markdown tables.",
    )
    data = parser.add_argument_group("input")
    data.add_argument("--kb", required=True, help="KB directory written by build-kb")
    data.add_argument("--cases", required=True, help="labelled test cases (JSONL of image_path + answers)")
    data.add_argument("--task", default=None, help="built-in task name or task JSON file (default: the one saved in a reader folder)")
    systems = parser.add_argument_group("systems")
    systems.add_argument(
        "--system",
        action="append",
        default=[],
        metavar="NAME=HEADS_DIR",
        help="a trained retriever: NAME=folder written by train-retriever (repeatable)",
    )
    systems.add_argument("--no-standard", action="store_true", help=f"leave out the {STANDARD_RAG!r} (identity heads) system")
    systems.add_argument("--no-closed-book", action="store_true", help="leave out the reader-without-retrieval system")
    systems.add_argument("--baseline", default=None, help=f"system the others are compared with (default: {STANDARD_RAG!r}, else the first)")
    reading = parser.add_argument_group("reader and aggregation")
    reading.add_argument("--reader", required=True, help="LVLM: hub id (e.g. Qwen/Qwen2-VL-2B-Instruct) or local folder")
    add_retrieval_options(reading, exclude_self=True)  # test cases may sit in the KB: never read their own pair
    aggregation = reading.add_argument("--aggregation", default="weighted", choices=list(get_args(AggregationMethod)), help="how per-neighbour answers are fused")
    add_deprecated_alias(reading, "--method", aggregation)
    reading.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="softmax temperature over retrieval scores (weighted)")
    reading.add_argument("--batch-size", type=int, default=16, help="cases per retrieval / reader call")
    reading.add_argument("--reader-batch-size", type=int, default=8, help="sequences per reader forward pass")
    stats = parser.add_argument_group("statistics")
    stats.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per interval")
    stats.add_argument("--confidence", type=float, default=0.95, help="interval coverage")
    stats.add_argument("--seed", type=int, default=0, help="resampling seed")
    stats.add_argument(
        "--group-by", action="append", default=[], metavar="FIELD",
        help="also report metrics per value of this case-metadata field, e.g. site (repeatable; default: none)",
    )
    abstain = parser.add_argument_group("abstention")
    abstain.add_argument(
        "--min-support", type=float, default=None,
        help="mark cases whose answer support is below this as abstaining in the evidence viewers "
        "(default: the --target-risk threshold, else none)",
    )
    abstain.add_argument(
        "--target-risk", type=float, default=None, metavar="R",
        help="choose min_support on validation cases so the error rate on answered cases is <= R with "
        "probability >= 1 - --risk-delta; writes threshold_<system>.json (default: off)",
    )
    abstain.add_argument("--risk-delta", type=float, default=0.1, help="allowed failure probability of the --target-risk guarantee")
    abstain.add_argument(
        "--validation-cases", default=None,
        help="labelled JSONL the threshold is chosen on (default: a seeded --validation-fraction of --cases, "
        "the rest being the test cases)",
    )
    abstain.add_argument(
        "--validation-fraction", type=float, default=0.5,
        help="share of --cases held out for choosing the threshold when --validation-cases is not given",
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="cpu", help="torch device of encoder and reader")
    reader_dtype = runtime.add_argument("--reader-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="reader weight dtype (auto = the checkpoint's)")
    add_deprecated_alias(runtime, "--dtype", reader_dtype)
    runtime.add_argument("--no-progress", action="store_true", help="hide progress bars")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default="eval", help="folder for report.json, report.md, plots, the evidence viewers and the resolved config")
    output.add_argument(
        "--viewer-images", default="auto", choices=["auto", "embed", "copy"],
        help="evidence viewer images: embedded, copied beside it, or auto (embed up to 200 cases)",
    )
    output.add_argument("--no-viewer", action="store_true", help="do not write the evidence viewers (evidence_<system>.html)")
    add_config_option(parser)
    parser.set_defaults(handler=_evaluate)
    return {"evaluate": parser}


def parse_systems(specs: list[str]) -> dict[str, tuple[Path, Path]]:
    """``["NAME=DIR", ...]`` -> ``{name: (image_head_dir, text_head_dir)}``.

    Raises:
        CLIError: A spec without ``=``, an empty name, a repeated name, or a folder without heads.
    """
    systems: dict[str, tuple[Path, Path]] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        name = name.strip()
        if not sep or not name or not folder:
            raise CLIError(f"--system {spec!r}: expected NAME=HEADS_DIR, e.g. --system 'LVLM-aware=runs/heads'")
        if name in systems or name == STANDARD_RAG:
            raise CLIError(f"--system {spec!r}: the name {name!r} is used twice; give each system its own name")
        systems[name] = heads_dir_paths(folder, option="--system")
    return systems


def _evaluate(args: argparse.Namespace) -> int:
    from llama_index_lvlm_retriever.evaluation.dataset import evaluate_dataset
    from llama_index_lvlm_retriever.evaluation.report import write_report
    from llama_index_lvlm_retriever.evaluation.risk_control import save_threshold_file
    from llama_index_lvlm_retriever.evaluation.subgroups import subgroup_estimates
    from llama_index_lvlm_retriever.outputs.provenance import (
        collect_provenance,
        describe_head,
        describe_knowledge_base,
        describe_model,
        utc_now,
    )

    started = utc_now()
    check_retrieval_options(args)
    trained = parse_systems(args.system)
    if args.no_standard and not trained:
        raise CLIError("--no-standard leaves no retrieval system; add --system NAME=HEADS_DIR")
    _check_abstention_options(args)
    task = load_task(args.task)
    cases = load_cases(args.cases)
    groups = _case_groups(cases, args.group_by)
    validation_cases = load_cases(args.validation_cases) if args.target_risk is not None and args.validation_cases else None
    reader = load_reader(args.reader, task, device=args.device, dtype=args.reader_dtype, batch_size=args.reader_batch_size)
    encoder = load_encoder(args.kb, device=args.device)
    # Every neighbour the two heads return is read (k_image + k_text, fewer when both heads find a pair).
    heads: dict[str, tuple[Path | None, Path | None]] = {} if args.no_standard else {STANDARD_RAG: (None, None)}
    heads.update(trained)
    systems = {
        name: load_retriever(
            args.kb, encoder, image_head=image, text_head=text, k_image=args.k_image, k_text=args.k_text,
            head_fusion=args.head_fusion, allow_other_kb=args.allow_other_kb,
        )
        for name, (image, text) in heads.items()
    }
    report = evaluate_dataset(
        cases,
        systems,
        reader,
        task,
        k=None,
        closed_book=not args.no_closed_book,
        method=args.aggregation,
        exclude_self=args.exclude_self,
        temperature=args.temperature,
        baseline=args.baseline,
        n_bootstrap=args.bootstrap,
        confidence=args.confidence,
        seed=args.seed,
        batch_size=args.batch_size,
        show_progress=not args.no_progress,
    )
    for field, by_case in groups.items():
        report.subgroups[field] = {
            name: subgroup_estimates(
                report.rows[name], by_case, report.labels, n_bootstrap=args.bootstrap, confidence=args.confidence,
                seed=args.seed,
            )
            for name in report.systems
        }
    controls = {}
    if args.target_risk is not None:
        validation_rows = None
        if validation_cases is not None:
            validation_rows = evaluate_dataset(
                validation_cases, systems, reader, task, k=None, closed_book=False, method=args.aggregation,
                exclude_self=args.exclude_self, temperature=args.temperature, n_bootstrap=0, seed=args.seed,
                batch_size=args.batch_size, show_progress=not args.no_progress,
            ).rows
        controls = risk_controls(report, list(systems), args, validation_rows)
        report.risk_control.update({name: control.to_dict() for name, control in controls.items()})
    # Every system shares the KB, encoder and reader; only the heads differ.
    first = next(iter(systems.values()))
    provenance = collect_provenance(
        models={
            "knowledge_base": describe_knowledge_base(first.knowledge_base, args.kb),
            "encoder": describe_model(encoder),
            "reader": describe_model(reader),
            "systems": {
                name: {"image_head": describe_head(r.image_head, heads[name][0]), "text_head": describe_head(r.text_head, heads[name][1]),
                       **({"head_kb_events": r.head_kb_events} if r.head_kb_events else {})}
                for name, r in systems.items()
            },
        },
        inputs={
            "kb": args.kb, "cases": args.cases,
            **{key: value for key, value in (("reader", args.reader), ("task", args.task)) if value and Path(value).exists()},
            **{f"heads:{name}": str(Path(image).parent) for name, (image, _) in trained.items()},
        },
        options=resolved_config(args),
        started_at=started,
        ended_at=utc_now(),
    )
    paths = write_report(report, args.out, provenance)
    write_json_atomic(Path(args.out) / EVAL_CONFIG_FILE, {**absolute_paths(resolved_config(args)), "provenance": provenance})
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"report -> {paths['json']}")
    for name, control in controls.items():
        if control.threshold is None:
            print(
                f"target risk {args.target_risk:g} ({name}): no min_support certified on {control.validation_cases} "
                f"validation cases (even at 1.00: risk {_num(control.validation_risk)} on coverage "
                f"{_num(control.validation_coverage)}, bound {control.bound:.3f})"
            )
            continue
        threshold_path = save_threshold_file(
            Path(args.out) / threshold_file_name(name), control,
            {"system": name, "kb": str(Path(args.kb).resolve()), "heads": [str(h) if h else None for h in heads[name]]},
        )
        print(
            f"target risk {args.target_risk:g} ({name}): min_support {control.threshold:.2f}, bound {control.bound:.3f} "
            f"(validation risk {control.validation_risk:.3f}, coverage {control.validation_coverage:.3f}); "
            f"test risk {_num(control.test_risk)}, coverage {_num(control.test_coverage)} -> {threshold_path}"
        )
    if not args.no_viewer:
        from llama_index_lvlm_retriever.evaluation.evidence_viewer import write_evidence_viewer
        from llama_index_lvlm_retriever.evaluation.report_rows import report_viewer_rows
        from llama_index_lvlm_retriever.evaluation.viewer_header import (
            label_display_names,
            viewer_header,
        )

        for name, retriever in systems.items():
            min_support = args.min_support
            if min_support is None and name in controls:
                min_support = controls[name].threshold
            rows = report_viewer_rows(report, name, cases, retriever.knowledge_base.get, min_support=min_support)
            viewer = write_evidence_viewer(
                rows, Path(args.out) / viewer_file_name(name), title=f"Evidence viewer: {name}",
                labels=report.labels, images=args.viewer_images,
                label_names=label_display_names(reader.task.labels, reader.task.verbalizers),
                provenance=viewer_header(provenance, system=name, task=reader.task.name),
            )
            print(f"evidence viewer ({name}) -> {viewer}")
    return 0


def threshold_file_name(system: str) -> str:
    """``threshold_<system>.json``: the min_support ``--target-risk`` chose for a system."""
    return "threshold_" + viewer_file_name(system)[len("evidence_"):-len(".html")] + ".json"


def _check_abstention_options(args: argparse.Namespace) -> None:
    if args.min_support is not None and not 0.0 < args.min_support <= 1.0:
        raise CLIError(f"--min-support must be in (0, 1], got {args.min_support}")
    if args.target_risk is not None and not 0.0 < args.target_risk < 1.0:
        raise CLIError(f"--target-risk must be in (0, 1), e.g. 0.1; got {args.target_risk}")
    if not 0.0 < args.risk_delta < 1.0:
        raise CLIError(f"--risk-delta must be in (0, 1), e.g. 0.1; got {args.risk_delta}")
    if not 0.0 < args.validation_fraction < 1.0:
        raise CLIError(f"--validation-fraction must be in (0, 1), e.g. 0.5; got {args.validation_fraction}")
    if args.validation_cases and args.target_risk is None:
        raise CLIError("--validation-cases is only used with --target-risk; add --target-risk R or drop it")


def _case_groups(cases: list[Any], fields: list[str]) -> dict[str, dict[str, str]]:
    """Field -> (case id -> group value), checked before any model loads."""
    from llama_index_lvlm_retriever.evaluation.subgroups import case_groups

    out = {}
    for field in fields:
        try:
            out[field] = case_groups({case.id: case.metadata for case in cases}, field)
        except ValueError as error:
            raise CLIError(f"--group-by {field}: {error}") from error
    return out


def risk_controls(
    report: Any, systems: list[str], args: argparse.Namespace, validation_rows: dict[str, Any] | None
) -> dict[str, Any]:
    """Per retrieval system: the min_support chosen for ``--target-risk`` and its test risk and coverage.

    With ``validation_rows`` (from ``--validation-cases``) the threshold is chosen on them and tested on
    every evaluated case; otherwise a seeded ``--validation-fraction`` of the evaluated cases (the same
    split for every system) chooses it and the rest test it.
    """
    import numpy as np

    from llama_index_lvlm_retriever.evaluation.risk_control import choose_min_support

    out = {}
    n = report.n_cases
    in_validation = np.zeros(n, dtype=bool)
    if validation_rows is None:
        n_validation = int(round(args.validation_fraction * n))
        if n_validation < 1 or n_validation >= n:
            raise CLIError(
                f"--validation-fraction {args.validation_fraction} of {n} cases leaves no validation or no test case; "
                "pass --validation-cases FILE or evaluate more cases"
            )
        in_validation[np.random.default_rng(args.seed).permutation(n)[:n_validation]] = True
    for name in systems:
        rows = report.rows[name]
        support = np.array([r.support for r in rows])
        correct = np.array([r.correct for r in rows])
        if validation_rows is None:
            control = choose_min_support(support[in_validation], correct[in_validation], args.target_risk, args.risk_delta)
            out[name] = control.with_test(support[~in_validation], correct[~in_validation])
        else:
            v_support = np.array([r.support for r in validation_rows[name]])
            v_correct = np.array([r.correct for r in validation_rows[name]])
            out[name] = choose_min_support(v_support, v_correct, args.target_risk, args.risk_delta).with_test(support, correct)
    return out


def _num(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"  # NaN: nothing answered


def viewer_file_name(system: str) -> str:
    """``evidence_<system>.html`` with the system name reduced to a safe file name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", system).strip("_") or "system"
    return f"evidence_{slug}.html"


def absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved options with every path option absolute, so the record is valid from any folder.

    ``reader`` and ``task`` are made absolute only when they name an existing folder or file (else
    they are a hub id or built-in task name); ``system`` entries become ``NAME=/abs/folder``.
    """
    out = dict(config)
    for key in ("kb", "cases", "out"):
        if out.get(key):
            out[key] = str(Path(out[key]).expanduser().resolve())
    for key in ("reader", "task"):
        if out.get(key) and Path(out[key]).expanduser().exists():
            out[key] = str(Path(out[key]).expanduser().resolve())
    systems = []
    for spec in out.get("system") or []:
        name, _, folder = spec.partition("=")
        systems.append(f"{name}={Path(folder).expanduser().resolve()}")
    out["system"] = systems
    return out
