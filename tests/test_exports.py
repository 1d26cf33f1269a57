"""Every name a module lists in ``__all__`` resolves, and every package lists ``__all__``."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import llama_index_lvlm_retriever

_LLAMA_INDEX_PATHS = ("llama_index.retrievers.lvlm_aware", "llama_index.postprocessor.lvlm_rerank")


def _module_infos() -> list[pkgutil.ModuleInfo]:
    root = llama_index_lvlm_retriever
    return [
        pkgutil.ModuleInfo(None, root.__name__, True),  # type: ignore[arg-type]
        *pkgutil.walk_packages(root.__path__, root.__name__ + "."),
    ]


_MODULES = _module_infos()
_PACKAGES = [info.name for info in _MODULES if info.ispkg]
_ALL_MODULES = [info.name for info in _MODULES] + list(_LLAMA_INDEX_PATHS)


@pytest.mark.parametrize("name", _ALL_MODULES)
def test_all_names_resolve(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", ())  # private helper modules may have none
    missing = [symbol for symbol in exported if not hasattr(module, symbol)]
    assert not missing, f"{name}.__all__ lists names the module does not define: {missing}"
    duplicated = sorted({symbol for symbol in exported if list(exported).count(symbol) > 1})
    assert not duplicated, f"{name}.__all__ lists names twice: {duplicated}"


@pytest.mark.parametrize("name", _PACKAGES + list(_LLAMA_INDEX_PATHS))
def test_every_package_lists_all(name: str) -> None:
    assert isinstance(getattr(importlib.import_module(name), "__all__", None), list | tuple)


@pytest.mark.parametrize(
    ("package", "names"),
    [
        (
            "llama_index_lvlm_retriever.training",
            [
                "CLIPPretrainConfig",
                "CLIPPretrainEngine",
                "EncoderQueryHead",
                "EncoderQueryHeadConfig",
                "MultiPositiveInfoNCELoss",
            ],
        ),
        ("llama_index_lvlm_retriever.training.losses", ["MultiPositiveInfoNCELoss"]),
        (
            "llama_index_lvlm_retriever.data",
            [
                "ELPV_CITATION",
                "ELPV_LABEL_NAMES",
                "ELPV_LICENSE",
                "ElpvSplits",
                "elpv_caption",
                "load_elpv_splits",
            ],
        ),
    ],
)
def test_package_exports(package: str, names: list[str]) -> None:
    module = importlib.import_module(package)
    assert set(names) <= set(module.__all__)


def test_data_import_does_not_load_optional_elpv_dataset() -> None:
    # A fresh interpreter: this process may already hold elpv_dataset from another test.
    code = (
        "import sys, llama_index_lvlm_retriever.data, llama_index_lvlm_retriever.training; "
        "sys.exit(int('elpv_dataset' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
