"""Provenance: where an output came from (code, models, inputs, command, time, host).

Every JSON output a team keeps (``report.json`` of ``evaluate``, ``predict_run.json`` of
``predict``) carries one block built by :func:`collect_provenance`, so a result can be traced to
the package version and git commit, the exact models (names and weight fingerprints), the input
files (absolute paths and SHA-256 where small), the command line, the run's start and end time
and the machine. The module sits at the lowest layer: it imports nothing heavy at import time
and reads models by duck typing (``model_name``, ``fingerprint()``, ``config``, ``state_dict()``),
so any encoder, reader or head fits.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llama_index_lvlm_retriever.version import __version__

__all__ = [
    "DEFAULT_HASH_LIMIT_BYTES",
    "PROVENANCE_KEY",
    "collect_provenance",
    "describe_head",
    "describe_knowledge_base",
    "describe_model",
    "describe_path",
    "git_commit",
    "host_info",
    "utc_now",
]

PROVENANCE_KEY = "provenance"
"""Key of the provenance block inside the JSON outputs."""
DEFAULT_HASH_LIMIT_BYTES = 50 * 1024 * 1024
"""Inputs larger than this (a file, or a folder's files together) are listed without a SHA-256."""
_CHUNK = 1 << 20
_GIT_TIMEOUT_S = 5.0


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string with seconds (``2025-01-31T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: this package), ``None`` outside one.

    A ``-dirty`` suffix marks uncommitted changes to tracked files. An installed wheel (no ``.git``
    above it) or a missing ``git`` binary gives ``None``.
    """
    start = Path(path) if path is not None else Path(__file__).resolve().parent
    folder = start if start.is_dir() else start.parent
    if not any((parent / ".git").exists() for parent in (folder, *folder.parents)):
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=_GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = status.returncode == 0 and bool(status.stdout.strip())
    return commit.stdout.strip() + ("-dirty" if dirty else "")


def host_info() -> dict[str, Any]:
    """Host name, OS, Python, CPU model and count, and the CUDA GPUs torch sees (if torch is loaded).

    torch is only asked when the process has already imported it, so recording provenance never
    pays torch's import time; every command that runs a model has.
    """
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    torch = sys.modules.get("torch")
    gpus: list[str] = []
    if torch is not None:
        try:
            if torch.cuda.is_available():
                gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001 - a broken driver must not stop a run from recording itself
            gpus = []
        info["torch"] = str(torch.__version__)
    info["gpus"] = gpus
    return info


def describe_path(path: str | Path, *, hash_limit_bytes: int = DEFAULT_HASH_LIMIT_BYTES) -> dict[str, Any]:
    """Absolute path, kind, size and SHA-256 (when at most ``hash_limit_bytes``) of a file or folder.

    A folder's digest covers every file below it, in sorted relative-path order: the SHA-256 of the
    lines ``<relative path> <file sha256>``; it is left out when the files together exceed the
    limit. A missing path is recorded as ``{"path": ..., "exists": False}``.

    Example:
        >>> describe_path("/nonexistent")["exists"]
        False
    """
    target = Path(path).expanduser().resolve()
    if not target.exists():
        return {"path": str(target), "exists": False}
    if target.is_file():
        size = target.stat().st_size
        record: dict[str, Any] = {"path": str(target), "kind": "file", "bytes": size}
        record["sha256"] = _file_sha256(target) if size <= hash_limit_bytes else None
        return record
    files = sorted(p for p in target.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    record = {"path": str(target), "kind": "folder", "files": len(files), "bytes": total}
    if total <= hash_limit_bytes:
        digest = hashlib.sha256()
        for file in files:
            digest.update(f"{file.relative_to(target).as_posix()} {_file_sha256(file)}\n".encode())
        record["sha256"] = digest.hexdigest()
    else:
        record["sha256"] = None
    return record


def describe_model(model: Any) -> dict[str, Any] | None:
    """Class, ``model_name`` and ``fingerprint()`` of an encoder or reader, each when it has one.

    Returns ``None`` for ``None``.
    """
    if model is None:
        return None
    record: dict[str, Any] = {"class_name": type(model).__name__}
    name = getattr(model, "model_name", None)
    if name is not None:
        record["model_name"] = str(name)
    fingerprint = getattr(model, "fingerprint", None)
    try:
        value = fingerprint() if callable(fingerprint) else fingerprint
    except Exception as err:  # noqa: BLE001 - a model without weights (a stub) still gets a record
        value = f"unavailable ({type(err).__name__})"
    if value is not None:
        record["fingerprint"] = str(value)
    task = getattr(model, "task", None)
    if task is not None and getattr(task, "name", None) is not None:
        record["task"] = str(task.name)
    return record


def describe_head(head: Any, folder: str | Path | None = None) -> dict[str, Any]:
    """Class, config and SHA-256 of the weights of a query head; ``None`` is the identity head.

    Args:
        head: A head module (``QueryHead``, ``EncoderQueryHead``, ...) or ``None``.
        folder: Where it was loaded from, recorded as an absolute path when given.
    """
    if head is None or bool(getattr(head, "is_identity", False)):
        record: dict[str, Any] = {"kind": "identity"}
    else:
        record = {"class_name": type(head).__name__}
        config = getattr(head, "config", None)
        to_dict = getattr(config, "to_dict", None)
        if callable(to_dict):
            record["config"] = to_dict()
        state_dict = getattr(head, "state_dict", None)
        if callable(state_dict):
            digest = hashlib.sha256()
            for name, tensor in sorted(state_dict().items()):
                digest.update(name.encode())
                # float32 first: numpy has no bfloat16, and the digest only needs to change with the weights.
                digest.update(tensor.detach().to("cpu").float().contiguous().numpy().tobytes())
            record["weights_sha256"] = digest.hexdigest()
    if folder is not None:
        record["path"] = str(Path(folder).expanduser().resolve())
    return record


def describe_knowledge_base(kb: Any, folder: str | Path | None = None) -> dict[str, Any] | None:
    """Size, dimension, a fingerprint of the rows and vectors, and the encoder of a knowledge base.

    The fingerprint is the SHA-256 of the ids in order and both vector matrices (about 1 s per GB),
    so a knowledge base rebuilt with other images under the same ids gets another one.
    """
    if kb is None:
        return None
    digest = hashlib.sha256()
    items = list(getattr(kb, "items", []))
    digest.update(json.dumps([str(getattr(item, "id", "")) for item in items]).encode())
    for name in ("image_vectors", "text_vectors"):
        vectors = getattr(kb, name, None)
        if vectors is not None:
            digest.update(name.encode())
            digest.update(memoryview(_contiguous(vectors)).cast("B"))
    record: dict[str, Any] = {
        "class_name": type(kb).__name__,
        "n_items": len(items),
        "dim": int(getattr(kb, "dim", 0) or 0),
        "fingerprint": digest.hexdigest()[:16],
        "encoder": describe_model(getattr(kb, "embed_model", None)),
    }
    if folder is not None:
        record["path"] = str(Path(folder).expanduser().resolve())
    return record


def collect_provenance(
    *,
    models: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str | Path | Sequence[str | Path] | None] | None = None,
    command: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    started_at: str | None = None,
    ended_at: str | None = None,
    hash_limit_bytes: int = DEFAULT_HASH_LIMIT_BYTES,
) -> dict[str, Any]:
    """The provenance block of one run.

    Args:
        models: Name -> record, e.g. ``{"encoder": describe_model(enc), "reader": describe_model(r),
            "image_head": describe_head(h), "knowledge_base": describe_knowledge_base(kb)}``.
            Records are stored as given (JSON-serialisable dicts).
        inputs: Name -> path (or list of paths) of the inputs; each becomes
            :func:`describe_path`'s record. ``None`` values are left out.
        command: The command line; default ``sys.argv`` (program name first).
        options: The command's resolved options (JSON-serialisable), e.g. defaults filled in.
        started_at: ISO time the run started (:func:`utc_now`); default now.
        ended_at: ISO time it ended; ``None`` while it runs.
        hash_limit_bytes: Largest input (file, or folder total) that is hashed.

    Returns:
        ``{"package": {...}, "git_commit", "command", "options", "cwd", "started_at", "ended_at",
        "host", "models", "inputs"}``, JSON-serialisable.

    Example:
        >>> block = collect_provenance(inputs={"cases": "/nonexistent.jsonl"}, command=["lvlm-retriever", "predict"])
        >>> block["package"]["name"], block["inputs"]["cases"]["exists"], block["command"]
        ('llama-index-lvlm-retriever', False, ['lvlm-retriever', 'predict'])
    """
    described: dict[str, Any] = {}
    for name, value in (inputs or {}).items():
        if value is None:
            continue
        if isinstance(value, (str, Path)):
            described[name] = describe_path(value, hash_limit_bytes=hash_limit_bytes)
        else:
            described[name] = [describe_path(v, hash_limit_bytes=hash_limit_bytes) for v in value]
    return {
        "package": {"name": "llama-index-lvlm-retriever", "version": __version__, **_library_versions()},
        "git_commit": git_commit(),
        "command": list(sys.argv if command is None else command),
        "options": dict(options or {}),
        "cwd": str(Path.cwd()),
        "started_at": started_at or utc_now(),
        "ended_at": ended_at,
        "host": host_info(),
        "models": dict(models or {}),
        "inputs": described,
    }


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "llama-index-core"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        try:
            for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def _contiguous(array: Any) -> Any:
    import numpy as np  # numpy is light, but keep the module import-free of it

    return np.ascontiguousarray(np.asarray(array, dtype=np.float32))
