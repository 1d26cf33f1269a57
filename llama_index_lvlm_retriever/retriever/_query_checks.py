"""The check that query vectors are finite before they are searched.

faiss compares NaN to nothing, so a NaN query silently returns no neighbours (and an infinite one
arbitrary neighbours); a broken image, encoder or trained head would then look like an empty
knowledge base. One error naming the query says where to look instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llama_index_lvlm_retriever.errors import QueryError


def check_finite_queries(vectors: np.ndarray, what: str, names: Sequence[str] | None = None) -> None:
    """Raise :class:`QueryError` naming the first query whose vector has a NaN or infinite value.

    Args:
        vectors: ``(n, dim)`` query vectors.
        what: What the vectors are, for the message (``"query embedding"``, ``"image head output"``).
        names: How to call each query (e.g. its image path); defaults to ``query <index>``.

    Raises:
        QueryError: Some row is not finite.
    """
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))  # (n_bad,) row indices
    if bad.size == 0:
        return
    first = int(bad[0])
    name = names[first] if names is not None else f"query {first}"
    raise QueryError(
        f"the {what} of {name} has NaN or infinite values ({bad.size} of {len(vectors)} queries affected), so "
        "nothing can be retrieved for it; check that the image decodes to real pixels, and that the "
        "encoder and heads were not trained into NaN (reload them or retrain with a lower learning rate)"
    )


__all__ = ["check_finite_queries"]
