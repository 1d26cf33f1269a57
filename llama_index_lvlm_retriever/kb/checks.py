"""Input checks of the knowledge base (items, vectors, indexes, per-query exclusion lists).

Private module; every message names the offending item or argument and what to pass instead.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.kb.backends import VectorBackend


def check_items(items: Sequence[Any], existing: Collection[str] = ()) -> None:
    """Every entry is a :class:`KBItem` and no id repeats (within ``items`` or with ``existing``)."""
    seen: set[str] = set()
    for position, item in enumerate(items):
        if not isinstance(item, KBItem):
            raise TypeError(
                f"items[{position}] is a {type(item).__name__}, not a KBItem; build items with "
                "the loaders in llama_index_lvlm_retriever.data.loaders"
            )
        if item.id in existing:
            raise ValueError(f"item id {item.id!r} is already in the knowledge base; ids must be unique")
        if item.id in seen:
            raise ValueError(f"item id {item.id!r} appears twice in the input; ids must be unique")
        seen.add(item.id)


def as_vectors(name: str, vectors: np.ndarray | None, n: int) -> np.ndarray:
    """``vectors`` as a contiguous float32 ``(n, dim)`` array (``(0, 0)`` for ``None``)."""
    if vectors is None:
        return np.zeros((0, 0), np.float32)
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, dim) for {n} items, got {array.shape}")
    return np.ascontiguousarray(array)


def check_state(
    vectors: Mapping[str, np.ndarray], image_hashes: Sequence[str], indexes: Mapping[str, VectorBackend], n: int
) -> None:
    """Vectors, hashes and indexes all describe the same ``n`` rows of one dimension."""
    if n and vectors["image"].shape[1] != vectors["text"].shape[1]:
        raise ValueError(
            f"image_vectors are {vectors['image'].shape[1]}-d but text_vectors are "
            f"{vectors['text'].shape[1]}-d; both must come from one dual encoder"
        )
    if len(image_hashes) != n:
        raise ValueError(f"got {len(image_hashes)} image_hashes for {n} items; pass one per item")
    for name, index in indexes.items():
        index_dim = index.dim
        if n and index_dim != vectors[name].shape[1]:
            raise ValueError(
                f"the {name} index is {index_dim}-d but the vectors are {vectors[name].shape[1]}-d; "
                "the knowledge base is inconsistent, rebuild it"
            )
        if index.ntotal != n:
            raise ValueError(
                f"the {name} index holds {index.ntotal} vectors for {n} items; "
                "the knowledge base is inconsistent, rebuild it"
            )


def per_query(name: str, values: Sequence[Collection[str] | None] | None, n: int) -> list[Collection[str]]:
    """One exclusion collection per query (``None`` entries become empty)."""
    if values is None:
        return [() for _ in range(n)]
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} queries; pass one collection per query")
    out: list[Collection[str]] = []
    for i, value in enumerate(values):
        if isinstance(value, str):
            # A bare string is a collection of characters: almost certainly a forgotten list.
            raise ValueError(f"{name}[{i}] is the string {value!r}; pass a collection of strings, e.g. [{value!r}]")
        out.append(() if value is None else value)
    return out


def read_only(array: np.ndarray) -> np.ndarray:
    """A non-writeable view, so callers cannot change the vectors behind the indexes."""
    view = array.view()
    view.flags.writeable = False
    return view
