"""Shared fixtures. Tests never touch a model hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models on a shared 2-core machine: one intra-op thread is ~10-50x faster than oversubscribing.
torch.set_num_threads(1)
