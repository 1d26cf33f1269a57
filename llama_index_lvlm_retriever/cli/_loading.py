"""Loaders shared by the CLI subcommands: task, cases, reader, and a retriever from a KB folder.

Every loader turns a missing or malformed input into a :class:`CLIError` that names the option,
the path and the fix, so handlers stay one library call long.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index_lvlm_retriever.cli._common import CLIError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.data.records import Case
    from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
    from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
    from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
    from llama_index_lvlm_retriever.tasks import TaskSpec

IMAGE_HEAD_DIR = "image_head"
"""Sub-folder of a heads directory (``RetrieverFinetuneEngine.save``) holding the image head."""
TEXT_HEAD_DIR = "text_head"
"""Sub-folder of a heads directory holding the text head."""
BUILD_CONFIG_FILE = "build_config.json"
"""The resolved ``build-kb`` settings, written next to a KB the CLI built."""


def load_task(name_or_path: str | None) -> TaskSpec | None:
    """A built-in task by name or a task JSON file; ``None`` passes through (the reader's task).

    Raises:
        CLIError: Neither a built-in name nor an existing JSON file.
    """
    from llama_index_lvlm_retriever.tasks import get_task

    if name_or_path is None:
        return None
    try:
        return get_task(name_or_path)
    except KeyError as err:
        raise CLIError(f"--task {name_or_path}: {err.args[0]}") from err


def load_cases(path: str) -> list[Case]:
    """Labelled cases from the paper's JSONL layout (``image_path`` + ``answers``).

    Raises:
        CLIError: The file is missing or not a ``.jsonl`` file.
    """
    from llama_index_lvlm_retriever.data.cases import load_cases_jsonl

    cases_path = Path(path)
    if not cases_path.is_file():
        raise CLIError(f"--cases {path}: file not found; pass a JSONL of {{'image_path', 'answers'}} lines")
    if cases_path.suffix.lower() != ".jsonl":
        raise CLIError(f"--cases {path}: expected a .jsonl file, got {cases_path.suffix or 'no suffix'!r}")
    return load_cases_jsonl(cases_path)


def load_reader(
    name_or_dir: str, task: TaskSpec | None, *, device: str = "cpu", dtype: str = "auto", batch_size: int = 8
) -> HFLVLMReader:
    """A transformers LVLM reader by hub id or folder (a reader folder may carry its own task).

    Raises:
        CLIError: ``batch_size`` < 1, or no ``task`` and ``name_or_dir`` is not a reader folder
            with a saved task.
    """
    from llama_index_lvlm_retriever.readers.hf_lvlm import READER_CONFIG_NAME, HFLVLMReader

    if batch_size < 1:
        raise CLIError(f"--reader-batch-size must be >= 1, got {batch_size}")
    source = Path(name_or_dir).expanduser()
    if task is None and not (source / READER_CONFIG_NAME).is_file():
        raise CLIError(
            f"--task is required: --reader {name_or_dir} has no saved task (no {READER_CONFIG_NAME}; only a folder "
            "written by train-reader has one); pass --task with a built-in task name (e.g. retinamnist) or a task "
            "JSON file"
        )
    name = str(source.resolve()) if source.is_dir() else name_or_dir
    return HFLVLMReader.from_pretrained(name, task, device=device, dtype=dtype, batch_size=batch_size)  # type: ignore[arg-type]


def recorded_dtype(kb_dir: str | Path, manifest: dict[str, Any]) -> str:
    """The dtype the KB's encoder ran in: ``build_config.json``, else the manifest, else float32.

    ``build_config.json`` holds it as ``encoder_dtype`` (``dtype`` before the option was renamed).

    The encoder's weights fingerprint depends on its dtype, so queries must load it the same way.
    """
    config_path = Path(kb_dir) / BUILD_CONFIG_FILE
    if config_path.is_file():
        try:
            record = json.loads(config_path.read_text(encoding="utf-8"))
            dtype = record.get("encoder_dtype") or record.get("dtype")
        except (json.JSONDecodeError, AttributeError) as err:
            raise CLIError(f"{config_path} is not a JSON object; pass --encoder-dtype explicitly") from err
        if dtype:
            return str(dtype)
    return str((manifest.get("encoder") or {}).get("dtype") or "float32")


OPENAI_CLIP_CLASS = "ClipEmbedding"
"""``class_name`` a KB records when it was built with ``llama_index.embeddings.clip.ClipEmbedding``."""


def load_encoder(kb_dir: str, *, embed_model: str | None = None, device: str = "cpu", dtype: str | None = None) -> Any:
    """The encoder a KB was built with: its manifest's model and dtype unless overridden.

    A KB built with LlamaIndex's ``ClipEmbedding`` (OpenAI CLIP, the ``clip`` extra) is reopened
    with that class; any other with our :class:`CLIPEmbedding` (transformers checkpoints).

    Raises:
        CLIError: The manifest names no encoder and ``embed_model`` is not given.
        ImportError: The KB needs ``ClipEmbedding`` and the ``clip`` extra is not installed.
    """
    from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
    from llama_index_lvlm_retriever.kb import KnowledgeBase

    manifest = KnowledgeBase.read_manifest(kb_dir)
    encoder = manifest.get("encoder") or {}
    model_name = embed_model or encoder.get("model_name")
    if not model_name:
        raise CLIError(f"{kb_dir}: the manifest records no encoder name; pass --embed-model")
    if encoder.get("class_name") == OPENAI_CLIP_CLASS and embed_model is None:
        try:
            from llama_index.embeddings.clip import ClipEmbedding
        except ImportError as err:
            raise ImportError(
                f"{kb_dir} was built with llama_index.embeddings.clip.ClipEmbedding ({model_name}); install the "
                "clip extra (pip install 'llama-index-lvlm-retriever[clip]' torchvision) to reopen it"
            ) from err
        try:
            import clip  # noqa: F401 - ClipEmbedding hides why this failed behind a "pip install git+..." hint
        except ImportError as err:
            raise ImportError(f"{kb_dir} was built with ClipEmbedding ({model_name}): {clip_import_hint(err)}") from err
        return ClipEmbedding(model_name=model_name, device=device)
    return CLIPEmbedding.from_pretrained(model_name, device=device, dtype=dtype or recorded_dtype(kb_dir, manifest))


_CLIP_EXTRA = "pip install 'llama-index-lvlm-retriever[clip]'"


def clip_import_hint(err: ImportError) -> str:
    """Why ``import clip`` (OpenAI's CLIP, the ``clip`` extra) failed, and the fix, from its ``ImportError``."""
    missing = getattr(err, "name", None) or ""
    if missing == "pkg_resources":
        return (f"`import clip` needs pkg_resources, which setuptools 81+ no longer ships; install "
                f"setuptools>=80.9,<81 ({_CLIP_EXTRA} pins it)")
    if missing == "torchvision":
        return ("`import clip` needs torchvision; install the build that matches your torch, with torch pinned: "
                "pip install torchvision \"torch==$(python -c 'import torch; print(torch.__version__)')\"")
    if missing == "clip":
        return f"OpenAI's CLIP (`import clip`) is not installed; {_CLIP_EXTRA}"
    return f"`import clip` failed ({err}); reinstall the clip extra: {_CLIP_EXTRA}"


def heads_dir_paths(heads_dir: str, option: str = "--heads") -> tuple[Path, Path]:
    """``(image_head/, text_head/)`` inside a folder written by ``RetrieverFinetuneEngine.save``.

    Raises:
        CLIError: The folder or one of its two head folders is missing.
    """
    root = Path(heads_dir)
    if not root.is_dir():
        raise CLIError(f"{option} {heads_dir}: folder not found; pass the --out folder of train-retriever")
    paths = (root / IMAGE_HEAD_DIR, root / TEXT_HEAD_DIR)
    for path in paths:
        if not path.is_dir():
            raise CLIError(
                f"{option} {heads_dir}: no {path.name}/ inside; pass a folder written by train-retriever "
                f"(it holds {IMAGE_HEAD_DIR}/ and {TEXT_HEAD_DIR}/)"
            )
    return paths


def load_retriever(
    kb_dir: str,
    embed_model: CLIPEmbedding,
    *,
    image_head: str | Path | None = None,
    text_head: str | Path | None = None,
    k_image: int = 2,
    k_text: int = 2,
    head_fusion: str = "max",
    allow_other_kb: bool = False,
) -> LVLMAwareRetriever:
    """An ``LVLMAwareRetriever`` over a persisted KB with optional trained heads (``None`` = identity).

    ``allow_other_kb`` uses heads trained on a KB sharing under half of its items (``--allow-other-kb``).

    Raises:
        CLIError: A head folder is given but does not exist.
    """
    from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever

    for option, path in (("--image-head", image_head), ("--text-head", text_head)):
        if path is not None and not Path(path).is_dir():
            raise CLIError(f"{option} {path}: folder not found; pass a folder written by QueryHead.save_pretrained")
    return LVLMAwareRetriever.from_persist_dir(
        kb_dir, embed_model, image_head_dir=image_head, text_head_dir=text_head, k_image=k_image, k_text=k_text,
        head_fusion=head_fusion, allow_other_kb=allow_other_kb,
    )
