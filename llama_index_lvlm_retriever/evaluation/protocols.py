"""Structural types the evaluator needs from tasks, readers and retrievers.

The evaluator depends on behaviour, not on concrete classes, so ``TaskSpec``, any ``Reader`` and
``LVLMAwareRetriever`` fit, and so do the small fakes the tests use.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from llama_index.core.schema import NodeWithScore

from llama_index_lvlm_retriever.data.records import Case, KBItem

__all__ = ["BatchRetriever", "ReaderLike", "ReaderScoresLike", "TaskLike", "log_probs_array"]


class TaskLike(Protocol):
    """What the evaluator reads from a ``TaskSpec``: the closed label set and its mode."""

    @property
    def labels(self) -> Sequence[str]:
        """Label names in index order."""
        ...

    @property
    def multi_label(self) -> bool:
        """``True`` when a case may carry several labels (per-label yes/no probabilities)."""
        ...


class ReaderScoresLike(Protocol):
    """What the evaluator reads from ``ReaderScores``."""

    @property
    def log_probs(self) -> Any:
        """``(n_cases, k, n_labels)`` log-probabilities (array or tensor)."""
        ...


class ReaderLike(Protocol):
    """A reader that scores every label for each (case, candidate) pair."""

    @property
    def task(self) -> Any:
        """The reader's ``TaskSpec``."""
        ...

    def score(self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem]]) -> ReaderScoresLike:
        """Score ``len(candidates[i]) == k`` candidates for each case, one pass per candidate."""
        ...

    def score_closed_book(self, cases: Sequence[Case]) -> ReaderScoresLike:
        """Score each case without retrieval (``k == 1``)."""
        ...


@runtime_checkable
class BatchRetriever(Protocol):
    """A retriever with ``LVLMAwareRetriever.retrieve_batch``'s signature."""

    def retrieve_batch(
        self,
        images: Sequence[Any],
        questions: Sequence[str] | None = None,
        *,
        exclude_ids: Sequence[Collection[str]] | None = None,
        exclude_self: bool | None = None,
    ) -> list[list[NodeWithScore]]:
        """Retrieve neighbours for many query images at once."""
        ...


def log_probs_array(scores: ReaderScoresLike) -> np.ndarray:
    """``ReaderScores.log_probs`` as a float64 numpy array (torch tensors are detached first)."""
    values = scores.log_probs
    detach = getattr(values, "detach", None)  # torch.Tensor without importing torch
    if callable(detach):
        values = detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)
