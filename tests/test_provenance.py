"""The provenance block: code version, models, inputs (paths + SHA-256), command, time, host."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from llama_index_lvlm_retriever.heads import QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.outputs.provenance import (
    collect_provenance,
    describe_head,
    describe_model,
    describe_path,
    git_commit,
)
from llama_index_lvlm_retriever.version import __version__


def test_describe_path_file_folder_and_limit(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_bytes(b"alpha")
    (tmp_path / "d" / "sub" / "b.txt").write_bytes(b"beta")
    file = describe_path(tmp_path / "d" / "a.txt")
    assert file == {"path": str((tmp_path / "d" / "a.txt").resolve()), "kind": "file", "bytes": 5,
                    "sha256": hashlib.sha256(b"alpha").hexdigest()}
    # A folder's digest: sha256 over "<relative path> <file sha256>" lines in path order.
    lines = f"a.txt {hashlib.sha256(b'alpha').hexdigest()}\nsub/b.txt {hashlib.sha256(b'beta').hexdigest()}\n"
    folder = describe_path(tmp_path / "d")
    assert folder["kind"] == "folder" and folder["files"] == 2 and folder["bytes"] == 9
    assert folder["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert describe_path(tmp_path / "d", hash_limit_bytes=8)["sha256"] is None  # 9 bytes > 8: too large to hash
    assert describe_path(tmp_path / "missing") == {"path": str((tmp_path / "missing").resolve()), "exists": False}


def test_collect_provenance_is_json(tmp_path: Path) -> None:
    (tmp_path / "cases.jsonl").write_text("{}\n")
    block = collect_provenance(
        models={"reader": {"model_name": "tiny"}},
        inputs={"cases": tmp_path / "cases.jsonl", "images": [tmp_path], "heads": None},
        command=["lvlm-retriever", "predict", "--out", "x"],
        options={"k_image": 2},
        started_at="2025-01-01T00:00:00+00:00",
    )
    json.dumps(block, allow_nan=False)
    assert block["package"]["version"] == __version__ and "torch" in block["package"]
    assert block["command"] == ["lvlm-retriever", "predict", "--out", "x"] and block["options"] == {"k_image": 2}
    assert block["started_at"] == "2025-01-01T00:00:00+00:00" and block["ended_at"] is None
    assert set(block["inputs"]) == {"cases", "images"} and block["inputs"]["cases"]["bytes"] == 3
    assert block["host"]["cpu_count"] >= 1 and isinstance(block["host"]["gpus"], list)
    assert block["models"] == {"reader": {"model_name": "tiny"}}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")
def test_git_commit(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None  # not a checkout
    repo = tmp_path / "repo"
    repo.mkdir()
    run = {"cwd": repo, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)
    (repo / "f.txt").write_text("1")
    subprocess.run(["git", "add", "f.txt"], **run)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], **run)
    head = subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()
    assert git_commit(repo) == head
    (repo / "f.txt").write_text("2")
    assert git_commit(repo / "f.txt") == head + "-dirty"


def test_describe_models_and_heads() -> None:
    class Stub:
        model_name = "org/model"

        def fingerprint(self) -> str:
            return "abc123"

    assert describe_model(Stub()) == {"class_name": "Stub", "model_name": "org/model", "fingerprint": "abc123"}
    assert describe_model(None) is None
    assert describe_head(None) == {"kind": "identity"}
    assert describe_head(QueryHead.identity(4)) == {"kind": "identity"}
    head = QueryHead(QueryHeadConfig(dim=4, kind="linear"))
    record = describe_head(head, folder="heads/image_head")
    assert record["class_name"] == "QueryHead" and record["config"]["dim"] == 4 and len(record["weights_sha256"]) == 64
    assert record["path"].endswith("heads/image_head") and Path(record["path"]).is_absolute()
    with __import__("torch").no_grad():
        next(head.parameters()).add_(1.0)
    assert describe_head(head)["weights_sha256"] != record["weights_sha256"]
