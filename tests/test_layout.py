"""The package root stays lean, and the plumbing packages import only what lies below them.

``../shared/tools/layers.py`` places a module by its first path segment and does not know
``storage/`` or ``outputs/``; these tests hold them at the bottom of the layer order instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import llama_index_lvlm_retriever

_ROOT = Path(llama_index_lvlm_retriever.__file__).parent
_PKG = llama_index_lvlm_retriever.__name__
_MAX_ROOT_MODULES = 12
# package -> the top-level names of the package its modules may import (itself included)
_ALLOWED = {
    "storage": {"errors", "storage"},
    "outputs": {"version", "storage", "outputs"},
}


def _package_imports(path: Path) -> set[str]:
    """The first path segment below the package root of every runtime import in ``path``."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports stay inside the package they are written in
                found.add(path.parent.name)
                continue
            module = node.module or ""
            names = [f"{module}.{alias.name}" if module == _PKG else module for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith(_PKG + "."):
                found.add(name[len(_PKG) + 1 :].split(".")[0])
    return found


def test_root_holds_at_most_twelve_modules() -> None:
    modules = sorted(p.name for p in _ROOT.glob("*.py"))
    assert len(modules) <= _MAX_ROOT_MODULES, f"{len(modules)} root modules: {modules}"


@pytest.mark.parametrize("package", sorted(_ALLOWED))
def test_plumbing_package_imports_only_downward(package: str) -> None:
    files = sorted((_ROOT / package).glob("*.py"))
    assert len(files) >= 4, f"{package}/ lost its modules: {files}"
    upward = {
        f.name: sorted(_package_imports(f) - _ALLOWED[package])
        for f in files
        if _package_imports(f) - _ALLOWED[package]
    }
    assert not upward, f"{package}/ imports above its layer: {upward}"


def test_import_scan_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "storage" / "bad.py"
    module.parent.mkdir()
    module.write_text(f"from {_PKG}.kb import KnowledgeBase\nfrom {_PKG} import errors\n")
    assert _package_imports(module) == {"kb", "errors"}
