"""``build-kb``, ``query``, ``info`` and ``kb add|delete``: the knowledge base from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llama_index_lvlm_retriever.cli._common import (
    CLIError,
    add_config_option,
    add_retrieval_options,
    check_output_dir,
    check_retrieval_options,
    cli_wording,
    resolved_config,
    write_json_atomic,
)
from llama_index_lvlm_retriever.cli._loading import (
    BUILD_CONFIG_FILE,
    heads_dir_paths,
    load_encoder,
    recorded_dtype,
)
from llama_index_lvlm_retriever.cli._options import add_command_parser, add_deprecated_alias
from llama_index_lvlm_retriever.errors import DataError, InputFormatError
from llama_index_lvlm_retriever.outputs import metadata_keys as keys

logger = logging.getLogger(__name__)

# Written next to the manifest by build-kb: the options the KB was built with (dtype, model, ...).


def register(subparsers: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Add the knowledge-base subcommands; returns name -> parser."""
    build = add_command_parser(
        subparsers,
        "build-kb",
        help="embed image-text pairs and persist a knowledge base",
        description="Embed every image and caption once (batched) and write a KB directory "
        "(vectors, faiss indexes, items, manifest). The write is atomic. With --backend milvus or qdrant the "
        "vectors are also stored in that database (embedded Milvus Lite / Qdrant local mode inside the KB "
        "directory by default, or a server), and the directory records how to reach it.",
    )
    src = build.add_argument_group("input")
    src.add_argument("--items", required=True, help="KB file: the paper's JSONL, a CSV (with --image-dir) or a MedMNIST .npz (with --image-dir)")
    src.add_argument("--image-dir", default=None, help="CSV: folder the image column is relative to; .npz: folder to write PNGs into")
    src.add_argument("--image-column", default="image", help="CSV column with the image file name")
    src.add_argument("--text-column", default="text", help="CSV column with the caption")
    src.add_argument("--label-column", default=None, help="CSV column with the label (optional)")
    src.add_argument("--split", default="train", help=".npz split to load (train/val/test)")
    src.add_argument("--skip-bad", action="store_true", help="skip (and report) items whose image is missing or unreadable instead of failing")
    model = build.add_argument_group("encoder")
    model.add_argument("--embed-model", required=True, help="CLIP/SigLIP checkpoint: hub name (e.g. openai/clip-vit-base-patch16) or local directory")
    model.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, auto")
    encoder_dtype = model.add_argument("--encoder-dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="encoder weight dtype (queries load it the same way)")
    add_deprecated_alias(model, "--dtype", encoder_dtype)
    model.add_argument("--batch-size", type=int, default=64, help="images/texts per forward pass")
    index = build.add_argument_group("index")
    index.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw"], help="index kind: flat (exact), ivf or hnsw (approximate, for large KBs); Qdrant has no ivf")
    store = build.add_argument_group("vector backend")
    store.add_argument("--backend", default="faiss", choices=["faiss", "milvus", "qdrant"], help="where the vectors are searched: faiss in process, a Milvus or a Qdrant collection pair")
    store.add_argument("--uri", default=None, help="milvus: a path ending in .db (Milvus Lite, embedded) or http://host:19530 (server; token from $MILVUS_TOKEN); default OUT/kb.db")
    store.add_argument("--path", default=None, help="qdrant: local-mode folder (embedded); default OUT/qdrant unless --url")
    store.add_argument("--url", default=None, help="qdrant: server or cluster URL, e.g. http://host:6333 (API key from $QDRANT_API_KEY)")
    store.add_argument("--collection", default="lvlm_kb", help="milvus/qdrant: collection name prefix (<name>_image, <name>_text)")
    build.add_argument("--out", required=True, help="KB directory to write (a new or empty folder, or see --overwrite)")
    build.add_argument("--overwrite", action="store_true", help="replace the knowledge base already in --out (its `kb add` pairs are lost)")
    build.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_option(build)
    build.set_defaults(handler=_build_kb)

    query = add_command_parser(
        subparsers,
        "query",
        help="retrieve image-text pairs for a query image",
        description="Embed a query image (and optional question) and print its nearest KB pairs from both heads.",
    )
    query.add_argument("--kb", required=True, help="KB directory written by build-kb")
    query.add_argument("--image", required=True, help="query image (PNG/JPEG/DICOM)")
    query.add_argument("--question", default="", help="question about the image; used only with --question-weight > 0 (a warning says so otherwise)")
    add_retrieval_options(query)
    query.add_argument("--question-weight", type=float, default=0.0, help="weight of the question's text embedding in the query vector (0 = image only)")
    query.add_argument("--image-head", default=None, help="trained image-head directory (default: identity = standard RAG)")
    query.add_argument("--text-head", default=None, help="trained text-head directory (default: identity = standard RAG)")
    query.add_argument(
        "--heads",
        default=None,
        metavar="DIR",
        help="a trained retriever's heads folder (the --out of train-retriever: image_head/ and text_head/); "
        "replaces --image-head and --text-head",
    )
    query.add_argument("--embed-model", default=None, help="override the encoder recorded in the KB manifest")
    query.add_argument("--device", default="cpu", help="torch device")
    query_dtype = query.add_argument("--encoder-dtype", default=None, choices=["float32", "float16", "bfloat16"], help="encoder dtype (default: the one the KB was built with, from its build_config.json)")
    add_deprecated_alias(query, "--dtype", query_dtype)
    query.add_argument("--json", action="store_true", help="print a JSON list of neighbours {kb_id, kb_label, source, head, retrieval_score, cosine, text, image_path} "
                       "(schema: query.schema.json), highest score first, instead of a table")
    add_config_option(query)
    query.set_defaults(handler=_query)

    info = add_command_parser(subparsers, "info", help="describe a KB directory", description="Print a KB's manifest: encoder, dimension, counts, index.")
    info.add_argument("--kb", required=True, help="KB directory")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    add_config_option(info)
    info.set_defaults(handler=_info)

    kb = add_command_parser(
        subparsers,
        "kb",
        help="change a persisted KB: add, upsert or delete pairs",
        description="Live updates of a KB directory on any backend. Only the new pairs are embedded (with the "
        "KB's own encoder), so trained heads stay valid; the directory is rewritten atomically afterwards. The KB is "
        "locked from load to write, so concurrent updates of one KB run one after the other and none is lost.",
    )
    actions = kb.add_subparsers(dest="kb_command", metavar="ACTION", required=True)
    add = add_command_parser(actions, "add", help="embed and add pairs (--upsert: replace pairs whose id exists)")
    add.add_argument("--kb", required=True, help="KB directory written by build-kb")
    add.add_argument("--items", required=True, help="pairs to add: JSONL, CSV (with --image-dir) or MedMNIST .npz (with --image-dir)")
    add.add_argument("--image-dir", default=None, help="CSV: folder the image column is relative to; .npz: folder to write PNGs into")
    add.add_argument("--image-column", default="image", help="CSV column with the image file name")
    add.add_argument("--text-column", default="text", help="CSV column with the caption")
    add.add_argument("--label-column", default=None, help="CSV column with the label (optional)")
    add.add_argument("--split", default="train", help=".npz split to load (train/val/test)")
    add.add_argument("--upsert", action="store_true", help="replace pairs whose id is already in the KB (in place) instead of failing")
    add.add_argument("--skip-bad", action="store_true", help="skip (and report) unreadable images (not with --upsert)")
    add.add_argument("--batch-size", type=int, default=64, help="images/texts per forward pass")
    add.add_argument("--device", default="cpu", help="torch device")
    add.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add.add_argument("--lock-wait", type=float, default=600.0, help="seconds to wait for another kb add/delete on the same KB to finish")
    add.set_defaults(handler=_kb_add)
    delete = add_command_parser(actions, "delete", help="delete pairs by id")
    delete.add_argument("--kb", required=True, help="KB directory written by build-kb")
    delete.add_argument("--ids", required=True, nargs="+", help="ids of the pairs to delete")
    delete.add_argument("--device", default="cpu", help="torch device of the encoder (loaded to check the KB)")
    delete.add_argument("--lock-wait", type=float, default=600.0, help="seconds to wait for another kb add/delete on the same KB to finish")
    delete.set_defaults(handler=_kb_delete)
    return {"build-kb": build, "query": query, "info": info, "kb": kb}


def load_kb_items(path: str, *, image_dir: str | None, image_column: str, text_column: str, label_column: str | None, split: str) -> list[Any]:
    """Load KB items from a JSONL, CSV or MedMNIST ``.npz`` file, chosen by suffix."""
    from llama_index_lvlm_retriever.data.loaders import (
        load_kb_csv,
        load_kb_jsonl,
        load_medmnist_npz,
    )

    suffix = Path(path).suffix.lower()
    if suffix in {".jsonl", ".json"}:
        return load_kb_jsonl(path)
    if suffix in {".csv", ".npz"} and image_dir is None:
        raise CLIError(f"--items {path}: a {suffix} file needs --image-dir")
    try:
        if suffix == ".csv":
            return load_kb_csv(path, image_dir, image_column=image_column, text_column=text_column, label_column=label_column)
        if suffix == ".npz":
            return load_medmnist_npz(path, split=split, image_dir=image_dir)
    except InputFormatError as err:
        # The loaders speak Python (``text_column=``); the fix on the command line is a flag.
        raise InputFormatError(cli_wording(str(err), _LOADER_FLAGS)) from err
    raise CLIError(f"--items {path}: unknown format {suffix!r}; use .jsonl, .csv or .npz")


# The loaders' keyword arguments and the build-kb / kb add flags that set them.
_LOADER_FLAGS = {
    "image_column": "--image-column",
    "text_column": "--text-column",
    "label_column": "--label-column",
    "split": "--split",
}


def _build_kb(args: argparse.Namespace) -> int:
    from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
    from llama_index_lvlm_retriever.kb import IndexConfig, KnowledgeBase
    from llama_index_lvlm_retriever.kb.storage import MANIFEST_FILE

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    # Before reading items or loading the encoder: a bad --out should fail now, not after embedding.
    if (Path(args.out) / MANIFEST_FILE).is_file() and not args.overwrite:
        # A rebuild would drop what `kb add` put there since; replacing a KB is a decision, not a default.
        raise CLIError(
            f"--out {args.out}: already holds a knowledge base; pass --overwrite to replace it, a new folder to "
            "keep it, or `lvlm-retriever kb add` to extend it"
        )
    check_output_dir(args.out, "--out", replaceable_if=MANIFEST_FILE)
    backend = backend_config(args)
    items = load_kb_items(args.items, image_dir=args.image_dir, image_column=args.image_column, text_column=args.text_column, label_column=args.label_column, split=args.split)
    # A local model folder is recorded as an absolute path, so `query` finds it from any directory.
    model_dir = Path(args.embed_model).expanduser()
    model_name = str(model_dir.resolve()) if model_dir.is_dir() else args.embed_model
    embed_model = CLIPEmbedding.from_pretrained(model_name, device=args.device, dtype=args.encoder_dtype, embed_batch_size=args.batch_size)
    kb = KnowledgeBase.build(items, embed_model, index_config=IndexConfig(kind=args.index), batch_size=args.batch_size, show_progress=not args.no_progress, skip_bad=args.skip_bad, backend=backend)
    kb.persist(args.out)
    kb.close()
    write_json_atomic(Path(args.out) / BUILD_CONFIG_FILE, {**resolved_config(args), "embed_model": model_name})
    print(f"built {len(kb)} items ({kb.dim}-d, {args.index}, {backend.describe()}) -> {args.out}")
    for item_id, reason in kb.skipped:
        print(f"skipped {item_id}: {reason}")
    if kb.skipped:
        print(f"skipped {len(kb.skipped)} of {len(items)} items with unreadable images")
    return 0


def backend_config(args: argparse.Namespace) -> Any:
    """The vector-backend settings named by ``--backend`` and its connection options."""
    from llama_index_lvlm_retriever.kb.backends import (
        FaissBackendConfig,
        MilvusBackendConfig,
        QdrantBackendConfig,
    )

    given = {option: getattr(args, option) for option in ("uri", "path", "url") if getattr(args, option) is not None}
    allowed = {"faiss": set(), "milvus": {"uri"}, "qdrant": {"path", "url"}}[args.backend]
    wrong = sorted(set(given) - allowed)
    if wrong:
        raise CLIError(f"--{wrong[0]} does not apply to --backend {args.backend}; it takes {sorted('--' + o for o in allowed) or 'no connection option'}")
    if args.backend == "milvus":
        return MilvusBackendConfig(uri=args.uri or str(Path(args.out) / "kb.db"), collection=args.collection)
    if args.backend == "qdrant":
        if args.url is not None and args.path is not None:
            raise CLIError("pass one of --path (Qdrant local mode) and --url (server), not both")
        if args.url is not None:
            return QdrantBackendConfig(url=args.url, collection=args.collection)
        return QdrantBackendConfig(path=args.path or str(Path(args.out) / "qdrant"), collection=args.collection)
    return FaissBackendConfig()


@contextlib.contextmanager
def _updating(args: argparse.Namespace) -> Iterator[Any]:
    """The KB of ``--kb``, locked from load to persist (other ``kb add|delete`` runs wait), with its own encoder.

    build_config.json (the options the KB was built with) is kept as it was.
    """
    from llama_index_lvlm_retriever.kb import KnowledgeBase

    if args.lock_wait < 0:
        raise CLIError(f"--lock-wait must be >= 0 seconds, got {args.lock_wait}")
    build_config_path = Path(args.kb) / BUILD_CONFIG_FILE
    build_config = json.loads(build_config_path.read_text(encoding="utf-8")) if build_config_path.is_file() else None
    embed_model = load_encoder(args.kb, device=args.device)
    # faiss: new files, then the manifest; databases: their rows, then the manifest (both atomic on exit).
    with KnowledgeBase.updating(args.kb, embed_model, wait=args.lock_wait) as kb:
        yield kb
    if build_config is not None and not build_config_path.is_file():
        write_json_atomic(build_config_path, build_config)


def _kb_add(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.upsert and args.skip_bad:
        raise CLIError("--skip-bad does not apply with --upsert (a replaced pair must be readable); drop one")
    items = load_kb_items(args.items, image_dir=args.image_dir, image_column=args.image_column, text_column=args.text_column, label_column=args.label_column, split=args.split)
    with _updating(args) as kb:
        if not args.upsert:
            present = [item.id for item in items if item.id in kb]
            if present:
                # A data error (exit 1), as ``kb delete`` of an id the KB lacks: the file and the KB disagree.
                raise DataError(
                    f"--items {args.items}: {len(present)} id(s) already in the KB {args.kb} (first: {present[0]!r}); "
                    "pass --upsert to replace those pairs, or give them new ids. Nothing was added."
                )
        if args.upsert:
            written = kb.upsert(items, batch_size=args.batch_size, show_progress=not args.no_progress)
        else:
            written = kb.add(items, batch_size=args.batch_size, show_progress=not args.no_progress, skip_bad=args.skip_bad)
    print(f"{'upserted' if args.upsert else 'added'} {len(written)} items ({len(kb)} total, {kb.backend.describe()}) -> {args.kb}")
    for item_id, reason in kb.skipped:
        print(f"skipped {item_id}: {reason}")
    return 0


def _kb_delete(args: argparse.Namespace) -> int:
    with _updating(args) as kb:
        try:
            deleted = kb.delete(args.ids)
        except KeyError as err:
            # A data error (exit 1), as ``kb add`` of an id the KB already has.
            raise DataError(f"--ids: {err.args[0]}; nothing was deleted") from err
    print(f"deleted {len(deleted)} items ({len(kb)} left, {kb.backend.describe()}) -> {args.kb}")
    return 0


def _query(args: argparse.Namespace) -> int:
    from llama_index.core.schema import QueryBundle

    from llama_index_lvlm_retriever.heads import load_head
    from llama_index_lvlm_retriever.kb import KnowledgeBase
    from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever

    check_retrieval_options(args)
    warn_unused_question(args.question, args.question_weight)
    image_head, text_head = args.image_head, args.text_head
    if args.heads is not None:
        if image_head or text_head:
            raise CLIError(
                f"--heads {args.heads} already names both heads; drop --image-head/--text-head, or drop --heads"
            )
        image_head, text_head = heads_dir_paths(args.heads)
    embed_model = load_encoder(args.kb, embed_model=args.embed_model, device=args.device, dtype=args.encoder_dtype)
    kb = KnowledgeBase.from_persist_dir(args.kb, embed_model)
    retriever = LVLMAwareRetriever(
        knowledge_base=kb,
        image_head=load_head(image_head) if image_head else None,
        text_head=load_head(text_head) if text_head else None,
        k_image=args.k_image,
        k_text=args.k_text,
        head_fusion=args.head_fusion,
        question_weight=args.question_weight,
        exclude_self=args.exclude_self,
        allow_other_kb=args.allow_other_kb,
    )
    nodes = retriever.retrieve(QueryBundle(query_str=args.question, image_path=args.image))
    rows = [node_summary(n) for n in nodes]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, ["rank", keys.NEIGHBOUR_KB_ID, keys.NEIGHBOUR_HEAD, keys.NEIGHBOUR_RETRIEVAL_SCORE,
                                  keys.NEIGHBOUR_KB_LABEL, keys.NEIGHBOUR_TEXT]))
    return 0


def warn_unused_question(question: str, question_weight: float) -> None:
    """Warn on stderr when ``--question`` is given but retrieval ignores it (``--question-weight`` 0)."""
    if question.strip() and question_weight == 0:
        print(
            "warning: --question has no effect on retrieval while --question-weight is 0 (the query is the image "
            "alone); pass --question-weight > 0 (e.g. 0.2) to mix the question's text embedding into the query",
            file=sys.stderr,
        )


def node_summary(node_with_score: Any, *, score_key: str = keys.NEIGHBOUR_RETRIEVAL_SCORE) -> dict[str, Any]:
    """The JSON row the CLI prints for one retrieved node, in the neighbour vocabulary of ``metadata_keys``.

    ``head`` lists the heads that found it (the one whose fused score it carries first); the node's
    score goes under ``score_key`` (``retrieval_score`` for a retrieval, ``rerank_score`` after
    reading) and ``cosine`` holds the raw cosine per head.
    """
    from llama_index_lvlm_retriever.retriever import (
        META_HEADS,
        META_KB_ID,
        META_LABEL,
        META_SOURCE,
        SCORE_KEYS,
    )

    node = node_with_score.node
    meta = node.metadata
    label = meta.get(META_LABEL)
    return {
        keys.NEIGHBOUR_KB_ID: meta.get(META_KB_ID, node.node_id),
        keys.NEIGHBOUR_KB_LABEL: None if label is None else str(label),
        keys.NEIGHBOUR_SOURCE: meta.get(META_SOURCE, ""),
        keys.NEIGHBOUR_HEAD: "+".join(meta.get(META_HEADS, [])),
        score_key: round(float(node_with_score.score or 0.0), 6),
        keys.NEIGHBOUR_COSINE: {head: round(float(meta[key]), 6) for head, key in SCORE_KEYS.items() if key in meta},
        keys.NEIGHBOUR_TEXT: node.get_content(),
        keys.NEIGHBOUR_IMAGE_PATH: getattr(node, "image_path", None),
    }


def format_table(rows: list[dict[str, Any]], columns: list[str], *, width: int = 60) -> str:
    """A plain fixed-width text table; long cells are cut with an ellipsis."""
    cells = [[str(i + 1) if c == "rank" else _cut("" if r.get(c) is None else str(r[c]), width) for c in columns] for i, r in enumerate(rows)]
    widths = [max([len(c)] + [len(row[j]) for row in cells]) for j, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _info(args: argparse.Namespace) -> int:
    from llama_index_lvlm_retriever.kb import KnowledgeBase

    manifest = KnowledgeBase.read_manifest(args.kb)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    encoder = manifest.get("encoder") or {}
    counts = manifest.get("counts") or {}
    lines = [
        f"knowledge base: {args.kb}",
        f"items: {counts.get('items', manifest.get('count'))}",
        f"dimension: {manifest.get('dim')}",
        f"encoder: {encoder.get('class_name')} {encoder.get('model_name')} "
        f"(dtype {recorded_dtype(args.kb, manifest)}, fingerprint {encoder.get('fingerprint')})",
        f"index: {(manifest.get('index') or {}).get('kind')}",
        f"backend: {_backend_line(manifest.get('backend') or {'name': 'faiss'})}",
    ]
    lines += [f"source {name}: {n}" for name, n in sorted((counts.get("sources") or {}).items())]
    print("\n".join(lines))
    return 0


def _backend_line(record: dict[str, Any]) -> str:
    location = record.get("uri") or record.get("url") or record.get("path")
    collection = f", collections {record['collection']}_image/_text" if record.get("collection") else ""
    return f"{record.get('name')}" + (f" at {location}{collection}" if location else "")
