"""Atomic file writes for report outputs (the package-wide helper)."""

from __future__ import annotations

from llama_index_lvlm_retriever.storage.files import atomic_write_bytes

__all__ = ["atomic_write_bytes"]
