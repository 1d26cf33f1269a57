"""Package version, recorded in every persisted artifact."""

from __future__ import annotations

from importlib import metadata as _metadata

__version__ = "0.1.0"


def package_versions() -> dict[str, str]:
    """Versions of this package, torch and transformers (recorded next to saved artifacts)."""
    import torch  # here, not at import time: importing the package stays light

    versions = {"llama-index-lvlm-retriever": __version__, "torch": torch.__version__}
    try:
        versions["transformers"] = _metadata.version("transformers")
    except _metadata.PackageNotFoundError:  # pragma: no cover - a core dependency
        versions["transformers"] = "not installed"
    return versions
