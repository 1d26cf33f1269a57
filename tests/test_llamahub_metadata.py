"""``[tool.llamahub]``: every listed class imports from the declared ``import_path``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_listed_classes_import_from_the_import_path() -> None:
    hub = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["llamahub"]
    module = importlib.import_module(hub["import_path"])
    listed = sorted(hub["class_authors"])
    assert listed, "[tool.llamahub.class_authors] lists no class"
    missing = [name for name in listed if not hasattr(module, name)]
    assert not missing, f"{hub['import_path']} does not export {missing}; re-export them or drop them from pyproject"
    assert set(listed) <= set(module.__all__)
