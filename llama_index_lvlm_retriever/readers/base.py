"""The Reader interface: label scores for every (case, retrieved candidate) pair.

A reader is the (frozen) LVLM of the paper (arXiv 2508.17394) seen from the outside: given a query
case and *one* retrieved knowledge-base pair, it returns the log-probability of each label of its
task. Everything downstream (reranking, consistency, LVLM-aware retriever training, evaluation)
only needs :meth:`Reader.score`, so any model can stand behind it.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llama_index_lvlm_retriever.aggregation import MULTI_LABEL_THRESHOLD
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.tasks import TaskSpec

logger = logging.getLogger(__name__)

__all__ = ["MULTI_LABEL_SEPARATOR", "UNPARSED_PREDICTION", "Reader", "ReaderScores", "check_inputs"]

MULTI_LABEL_SEPARATOR = "|"
"""Joins the predicted label names of a multi-label prediction (as the CSV case loader splits)."""
UNPARSED_PREDICTION = ""
"""Prediction for a pair whose free-text answer could not be mapped to a label."""


@dataclass(frozen=True)
class ReaderScores:
    """Label scores of a batch of (case, candidate) pairs.

    Shapes use ``n`` cases, ``k`` candidates per case and ``L`` labels.

    Args:
        log_probs: ``(n, k, L)`` float64. Single-label tasks: ``log P(label | case, candidate)``
            normalised over the label set (log-softmax of the verbalizer log-likelihoods), so
            ``exp`` sums to 1 over the last axis. Multi-label tasks: ``log P(yes)`` of each label's
            own yes/no question (independent; ``log P(no) = log(1 - exp(.))``).
        raw_log_likelihoods: ``(n, k, L)`` unnormalised log-likelihood of each verbalizer (sum of
            its token log-probabilities; first token only on the fast path, see
            :class:`~llama_index_lvlm_retriever.readers.hf_lvlm.HFLVLMReader`); for multi-label
            tasks, of the yes verbalizer. ``None`` for readers without logits (LLM readers).
        parsed: ``(n, k)`` bool, ``False`` where a free-text answer could not be mapped to a label
            (LLM readers only; ``None`` otherwise).
        labels: The task's label names, in the order of the last axis.
        multi_label: Whether ``log_probs`` holds independent per-label ``log P(yes)``.
        case_ids: Id of each case (row order), for provenance.
        candidate_ids: ``(n, k)`` id of each candidate (``None`` for a closed-book slot).

    Raises:
        ValueError: Arrays of inconsistent shapes.
    """

    log_probs: np.ndarray
    raw_log_likelihoods: np.ndarray | None = None
    parsed: np.ndarray | None = None
    labels: tuple[str, ...] = ()
    multi_label: bool = False
    case_ids: tuple[str, ...] = ()
    candidate_ids: tuple[tuple[str | None, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.log_probs.ndim != 3:
            raise ValueError(f"log_probs must be (n_cases, k, n_labels), got shape {self.log_probs.shape}")
        n, k, n_labels = self.log_probs.shape
        if self.raw_log_likelihoods is not None and self.raw_log_likelihoods.shape != self.log_probs.shape:
            raise ValueError(
                f"raw_log_likelihoods has shape {self.raw_log_likelihoods.shape}, expected {self.log_probs.shape}"
            )
        if self.parsed is not None and self.parsed.shape != (n, k):
            raise ValueError(f"parsed has shape {self.parsed.shape}, expected {(n, k)}")
        if self.labels and len(self.labels) != n_labels:
            raise ValueError(f"{len(self.labels)} label names for {n_labels} label columns")
        if self.case_ids and len(self.case_ids) != n:
            raise ValueError(f"{len(self.case_ids)} case ids for {n} cases")
        if self.candidate_ids and (len(self.candidate_ids) != n or any(len(r) != k for r in self.candidate_ids)):
            raise ValueError(f"candidate_ids must be {n} rows of {k} ids")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_cases, k, n_labels)``."""
        n, k, n_labels = self.log_probs.shape
        return n, k, n_labels

    @property
    def probs(self) -> np.ndarray:
        """``exp(log_probs)``: label distributions (single-label) or per-label ``P(yes)``."""
        return np.exp(self.log_probs)

    def predictions(self) -> list[list[str]]:
        """One predicted answer per (case, candidate), as label names.

        Single-label: the argmax label (ties go to the first label). Multi-label: the labels with
        ``P(yes) >= 0.5`` (the aggregation module's threshold) joined by ``"|"`` in label order,
        ``""`` when none is. A pair whose LLM answer was unparseable gets ``""``.

        Returns:
            ``n`` lists of ``k`` strings.
        """
        if not self.labels:
            raise ValueError("these scores carry no label names; build ReaderScores with labels=")
        n, k, _ = self.shape
        out: list[list[str]] = []
        for i in range(n):
            row: list[str] = []
            for j in range(k):
                if self.parsed is not None and not bool(self.parsed[i, j]):
                    row.append(UNPARSED_PREDICTION)
                elif self.multi_label:
                    present = np.exp(self.log_probs[i, j]) >= MULTI_LABEL_THRESHOLD
                    row.append(MULTI_LABEL_SEPARATOR.join(np.asarray(self.labels)[present].tolist()))
                else:
                    row.append(self.labels[int(np.argmax(self.log_probs[i, j]))])
            out.append(row)
        return out


def check_inputs(cases: Sequence[Case], candidates: Sequence[Sequence[KBItem | None]]) -> int:
    """Validate a ``score`` call and return ``k``, the number of candidates per case.

    Raises:
        ValueError: ``candidates`` does not have one row per case, rows differ in length, a row
            is empty, or a slot holds something other than a ``KBItem`` or ``None``.
    """
    if len(candidates) != len(cases):
        raise ValueError(
            f"got {len(cases)} cases but {len(candidates)} candidate lists; pass one list of "
            "candidates per case (use [None] for a closed-book slot)"
        )
    if not cases:
        return 0
    k = len(candidates[0])
    for case, row in zip(cases, candidates):
        if len(row) != k:
            raise ValueError(
                f"case {case.id!r} has {len(row)} candidates but case {cases[0].id!r} has {k}; "
                "every case needs the same number k (pad with None for closed-book slots)"
            )
        for item in row:
            if item is not None and not isinstance(item, KBItem):
                raise ValueError(
                    f"case {case.id!r}: candidate of type {type(item).__name__} is not a KBItem "
                    "(or None for a closed-book slot)"
                )
    if k == 0:
        raise ValueError("k = 0 candidates per case; pass at least one (None = closed-book)")
    return k


class Reader(ABC):
    """Scores the labels of a task for a query case given one retrieved pair at a time.

    Implementations: :class:`~llama_index_lvlm_retriever.readers.hf_lvlm.HFLVLMReader` (likelihood
    scoring with any transformers image-text-to-text model) and
    :class:`~llama_index_lvlm_retriever.readers.llamaindex_llm.LlamaIndexLLMReader` (any LlamaIndex
    chat LLM that accepts images; one-hot answers).

    A candidate ``None`` is a closed-book slot (the prompt has no retrieved pair). A candidate with
    an empty ``image_path`` is text-only background: its text is shown, no retrieved image.
    """

    task: TaskSpec

    @abstractmethod
    def score(
        self,
        cases: Sequence[Case],
        candidates: Sequence[Sequence[KBItem | None]],
        *,
        show_progress: bool = False,
    ) -> ReaderScores:
        """Label log-probabilities of every (case, candidate) pair, one candidate per prompt.

        Args:
            cases: The query cases.
            candidates: ``candidates[i]`` are case ``i``'s ``k`` candidates (equal ``k`` for all
                cases; ``None`` is a closed-book slot).
            show_progress: Show a tqdm progress bar.

        Returns:
            Scores of shape ``(len(cases), k, n_labels)``.
        """

    def score_closed_book(
        self, cases: Sequence[Case], *, show_progress: bool = False
    ) -> ReaderScores:
        """Scores without retrieval (``k == 1``, the prompt has only the query).

        Args:
            cases: The query cases.
            show_progress: Show a tqdm progress bar.

        Returns:
            Scores of shape ``(len(cases), 1, n_labels)``.
        """
        return self.score(cases, [[None] for _ in cases], show_progress=show_progress)

    def predict(
        self,
        cases: Sequence[Case],
        candidates: Sequence[Sequence[KBItem | None]],
        *,
        show_progress: bool = False,
    ) -> list[list[str]]:
        """Predicted label name per (case, candidate); see :meth:`ReaderScores.predictions`.

        Returns:
            ``len(cases)`` lists of ``k`` label names (multi-label: names joined by ``"|"``).
        """
        return self.score(cases, candidates, show_progress=show_progress).predictions()

    async def ascore(
        self,
        cases: Sequence[Case],
        candidates: Sequence[Sequence[KBItem | None]],
        *,
        show_progress: bool = False,
    ) -> ReaderScores:
        """Async :meth:`score`; by default runs it in a worker thread."""
        return await asyncio.to_thread(self.score, cases, candidates, show_progress=show_progress)
