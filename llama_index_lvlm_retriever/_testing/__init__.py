"""Builders of tiny, random, offline models and tokenizers for tests and the offline demo.

This package is private: the public surface is :mod:`llama_index_lvlm_retriever.testing`, which
re-exports the builders. One module per kind of model (``clip.py``, ``lvlm.py``), plus the shared
tokenizer training in ``tokenizer.py``. Nothing here downloads anything.
"""

from __future__ import annotations

__all__: list[str] = []
