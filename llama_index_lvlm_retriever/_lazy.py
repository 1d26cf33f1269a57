"""Lazy package exports (PEP 562): public names imported on first access.

Keeps ``import`` of a package, and so the CLI's ``--help``/``--version``, free of torch,
transformers and llama-index until a name that needs them is used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, table: Mapping[str, tuple[str, str]], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose ``table`` maps name -> (module, attribute).

    Example:
        .. code-block:: python

            __getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
    """

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module-level hook's own name
        try:
            module, attribute = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), attribute)
        setattr(sys.modules[package], name, value)  # cache: the next access is a plain attribute
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(vars(sys.modules[package])) | set(public))

    return __getattr__, __dir__
