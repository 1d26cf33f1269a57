"""examples/: each runs with the extras it names (the base install when it names none)."""

from __future__ import annotations

import ast
import importlib.util
import logging
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
# Import roots that only an extra installs -> the extra's name.
EXTRA_ONLY = {
    "skimage": "test", "scipy": "test", "sklearn": "test", "matplotlib": "plots", "pydicom": "dicom",
    "elpv_dataset": "elpv", "medmnist": "medmnist", "peft": "peft", "qdrant_client": "qdrant",
}


def _imports(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_names_the_extras_it_needs(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    for root in sorted(_imports(path) & set(EXTRA_ONLY)):
        extra = EXTRA_ONLY[root]
        assert f"[{extra}]" in docstring, f"{path.name} imports {root} but its docstring does not say: pip install '.[{extra}]'"


def test_diagnosis_query_engine_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("diagnosis_query_engine", REPO / "examples" / "diagnosis_query_engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with caplog.at_level(logging.INFO, logger=module.__name__):
            module.main(tmp_path)
    finally:
        torch.set_num_threads(threads)
    text = caplog.text
    assert "answer:" in text and "support" in text and "neighbour" in text and "consistency: score" in text
