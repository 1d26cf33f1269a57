"""evaluate_dataset end to end with a fake reader and fake retrievers; numbers worked out by hand.

Task labels A, B. The fake reader's distribution depends only on the candidate's KB label:
label A -> (0.9, 0.1), label B -> (0.2, 0.8); closed-book -> (0.6, 0.4) for every case (always A).

Cases: e1 gold A, e2 gold B, e3 gold B. Knowledge base: kA1, kA2 (label A), kB1, kB2 (label B).

"rag" (batched): e1 -> kA1 .9, kB1 .8; e2 -> kA2 .7, kA1 .6; e3 -> e3 itself .99 (must be dropped),
kB1 .5, kB2 .4, kA1 .3, kA2 .2 (k = 3 keeps the first three after the drop).
"plain" (a plain BaseRetriever): e1 -> kA1 .9, kA2 .8; e2 -> a copy of e2's own image .95 (dropped),
kB1 .7, kB2 .6; e3 -> kB2 .5 (one neighbour).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.evaluation.dataset import evaluate_dataset
from llama_index_lvlm_retriever.retriever import META_KB_ID, META_LABEL

E2 = math.exp(2.0)
P_GIVEN = {"A": [0.9, 0.1], "B": [0.2, 0.8]}

CASES = [
    Case(id="e1", image_path="e1.png", question="Which?", labels=("A",)),
    Case(id="e2", image_path="e2.png", labels=("B",)),
    Case(id="e3", image_path="e3.png", labels=("B",)),
]
KB = {
    "kA1": "A",
    "kA2": "A",
    "kB1": "B",
    "kB2": "B",
    "e3": "B",  # the case's own image, also in the knowledge base
    "dup-e2": "B",  # another id whose file is e2's image
}


@dataclass(frozen=True)
class FakeTask:
    labels: tuple[str, ...] = ("A", "B")
    multi_label: bool = False


def node(kb_id: str, score: float, image_path: str | None = None) -> NodeWithScore:
    meta = {META_KB_ID: kb_id, META_LABEL: KB[kb_id]}
    path = image_path or f"kb/{kb_id}.png"
    return NodeWithScore(node=ImageNode(id_=kb_id, text=f"caption {kb_id}", image_path=path, metadata=meta), score=score)


@dataclass
class FakeReader:
    task: FakeTask = field(default_factory=FakeTask)
    calls: list[tuple[list[str], list[list[KBItem]]]] = field(default_factory=list)

    def score(self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem]]) -> Any:
        self.calls.append(([c.id for c in cases], [list(items) for items in candidates]))
        probs = np.array([[P_GIVEN[item.label] for item in items] for items in candidates])  # (n, k, 2)
        return SimpleNamespace(log_probs=np.log(probs))

    def score_closed_book(self, cases: Sequence[Case]) -> Any:
        # a torch tensor, as a real reader returns
        return SimpleNamespace(log_probs=torch.log(torch.tensor([[[0.6, 0.4]]] * len(cases))))


@dataclass
class FakeBatchRetriever:
    results: dict[str, list[NodeWithScore]]
    calls: list[dict[str, Any]] = field(default_factory=list)

    def retrieve_batch(
        self,
        images: Sequence[Any],
        questions: Sequence[str] | None = None,
        *,
        exclude_ids: Sequence[Collection[str]] | None = None,
        exclude_self: bool | None = None,
    ) -> list[list[NodeWithScore]]:
        self.calls.append(
            {"images": list(images), "questions": list(questions or []), "exclude_ids": exclude_ids, "exclude_self": exclude_self}
        )
        # ignores the exclusions on purpose: evaluate_dataset must drop the case's own image anyway
        return [self.results[str(img).removesuffix(".png")] for img in images]


class FakePlainRetriever(BaseRetriever):
    def __init__(self, results: dict[str, list[NodeWithScore]]) -> None:
        super().__init__()
        self._results = results
        self.queries: list[QueryBundle] = []

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self.queries.append(query_bundle)
        return self._results[str(query_bundle.image_path).removesuffix(".png")]


def rag() -> FakeBatchRetriever:
    return FakeBatchRetriever(
        {
            "e1": [node("kA1", 0.9), node("kB1", 0.8)],
            "e2": [node("kA2", 0.7), node("kA1", 0.6)],
            "e3": [node("e3", 0.99), node("kB1", 0.5), node("kB2", 0.4), node("kA1", 0.3), node("kA2", 0.2)],
        }
    )


def plain() -> FakePlainRetriever:
    return FakePlainRetriever(
        {
            "e1": [node("kA1", 0.9), node("kA2", 0.8)],
            "e2": [node("dup-e2", 0.95, image_path="e2.png"), node("kB1", 0.7), node("kB2", 0.6)],
            "e3": [node("kB2", 0.5)],
        }
    )


def test_end_to_end_numbers() -> None:
    reader, batch, simple = FakeReader(), rag(), plain()
    report = evaluate_dataset(
        CASES, {"rag": batch, "plain": simple}, reader, k=3, batch_size=2, n_bootstrap=50, seed=0
    )
    assert report.systems == ("closed-book", "rag", "plain")
    assert report.baseline == "rag" and report.settings["k"] == 3
    rows = {r.case_id: r for r in report.rows["rag"]}
    # e1: w = (e^2, 1) / (e^2 + 1); P(A) = (0.9 e^2 + 0.2) / (e^2 + 1) = 0.8166 -> A, right
    assert rows["e1"].distribution[0] == pytest.approx((0.9 * E2 + 0.2) / (E2 + 1))
    assert rows["e1"].correct and not rows["e1"].consistent and rows["e1"].agreement == 0.5
    # e2: both neighbours labelled A -> (0.9, 0.1) -> A, wrong, consistent
    assert rows["e2"].prediction == ("A",) and not rows["e2"].correct and rows["e2"].consistent
    # e3: own image dropped; kB1 .5, kB2 .4, kA1 .3: w = (1, e^-2, e^-4) / (1 + e^-2 + e^-4)
    w = np.array([1.0, math.exp(-2), math.exp(-4)]) / (1 + math.exp(-2) + math.exp(-4))
    assert rows["e3"].neighbour_ids == ("kB1", "kB2", "kA1")
    assert rows["e3"].distribution[0] == pytest.approx(w @ [0.2, 0.2, 0.9])
    assert rows["e3"].correct and rows["e3"].agreement == pytest.approx(2 / 3)
    assert rows["e3"].retrieval_scores == (0.5, 0.4, 0.3)
    flat = report.metrics("rag")
    assert flat["rag_accuracy"] == pytest.approx(2 / 3)
    assert flat["rag_inconsistent_rate"] == pytest.approx(2 / 3)
    assert flat["rag_oracle@3"] == pytest.approx(2 / 3)  # e2 has no B neighbour
    # label precision: e1 1/2, e2 0/2, e3 2/3 -> 7/18; recall: e1, e3 -> 2/3
    assert flat["rag_label_precision@3"] == pytest.approx(7 / 18)
    assert flat["rag_label_recall@3"] == pytest.approx(2 / 3)
    # plain: all right and consistent; e2's copy of its own image was dropped
    plain_rows = {r.case_id: r for r in report.rows["plain"]}
    assert plain_rows["e2"].neighbour_ids == ("kB1", "kB2")
    assert plain_rows["e3"].k == 1
    assert report.metrics("plain")["plain_accuracy"] == 1.0
    assert report.metrics("plain")["plain_inconsistent_rate"] == 0.0
    # closed-book always answers A: right on e1 only
    assert report.metrics("closed-book")["closed_book_accuracy"] == pytest.approx(1 / 3)
    # plain vs rag: plain alone is right on e2
    overall = next(c for c in report.comparisons if c.system == "plain" and c.subset == "all")
    assert (overall.n_system_only, overall.n_baseline_only) == (1, 0)


def test_retrieval_excludes_the_query_and_batches() -> None:
    reader, batch, simple = FakeReader(), rag(), plain()
    evaluate_dataset(CASES, {"rag": batch, "plain": simple}, reader, k=3, batch_size=2, n_bootstrap=0)
    assert [c["images"] for c in batch.calls] == [["e1.png", "e2.png"], ["e3.png"]]
    assert [c["exclude_ids"] for c in batch.calls] == [[{"e1"}, {"e2"}], [{"e3"}]]
    assert all(c["exclude_self"] is True for c in batch.calls)
    # each case's own question ("" = image only)
    assert batch.calls[0]["questions"] == ["Which?", ""]
    assert [q.image_path for q in simple.queries] == ["e1.png", "e2.png", "e3.png"]
    # the reader sees cases grouped by neighbour count: rag k=2 {e1, e2} then k=3 {e3}; plain k=1 {e3} then k=2
    assert [ids for ids, _ in reader.calls] == [["e1", "e2"], ["e3"], ["e3"], ["e1", "e2"]]
    first = reader.calls[0][1][0][0]
    assert first == KBItem(id="kA1", image_path="kb/kA1.png", text="caption kA1", label="A")


def test_no_closed_book_and_explicit_baseline() -> None:
    report = evaluate_dataset(
        CASES, {"rag": rag(), "plain": plain()}, FakeReader(), k=2, closed_book=False, baseline="plain", n_bootstrap=0
    )
    assert report.systems == ("rag", "plain") and report.baseline == "plain"
    assert {c.system for c in report.comparisons} == {"rag"}


def test_text_only_nodes_become_text_candidates() -> None:
    text_node = TextNode(id_="t1", text="report text", metadata={META_KB_ID: "kA1", META_LABEL: "A"})
    retriever = FakeBatchRetriever({c.id: [NodeWithScore(node=text_node, score=1.0)] for c in CASES})
    reader = FakeReader()
    report = evaluate_dataset(CASES, {"text": retriever}, reader, closed_book=False, n_bootstrap=0)
    assert reader.calls[0][1][0] == [KBItem(id="kA1", image_path="", text="report text", label="A")]
    assert report.metrics("text")["text_accuracy"] == pytest.approx(1 / 3)  # always A


# --------------------------------------------------------------------------- bad input


def test_rejects_bad_cases_and_tasks() -> None:
    reader = FakeReader()
    with pytest.raises(ValueError, match="no cases to evaluate"):
        evaluate_dataset([], {"rag": rag()}, reader)
    bad = [Case(id="e1", image_path="e1.png", labels=("Z",))]
    with pytest.raises(ValueError, match=r"case 'e1' has gold label\(s\) \['Z'\] outside the task's labels \['A', 'B'\]"):
        evaluate_dataset(bad, {"rag": rag()}, reader)
    with pytest.raises(ValueError, match="case 'e1' has no gold label"):
        evaluate_dataset([Case(id="e1", image_path="e1.png")], {"rag": rag()}, reader)
    with pytest.raises(ValueError, match=r"duplicate case ids \['e1'\]"):
        evaluate_dataset([CASES[0], CASES[0]], {"rag": rag()}, reader)
    with pytest.raises(ValueError, match=r"the reader scores labels \['A', 'B'\] but the task has \['A', 'B', 'C'\]"):
        evaluate_dataset(CASES, {"rag": rag()}, reader, FakeTask(labels=("A", "B", "C")))
    assert reader.calls == []  # nothing ran


def test_rejects_bad_systems() -> None:
    with pytest.raises(TypeError, match="system 'rag' is a dict; pass an LVLMAwareRetriever"):
        evaluate_dataset(CASES, {"rag": {}}, FakeReader())
    with pytest.raises(ValueError, match="system name 'closed-book' clashes"):
        evaluate_dataset(CASES, {"closed-book": rag()}, FakeReader())
    empty = FakeBatchRetriever({"e1": [], "e2": [], "e3": []})
    with pytest.raises(ValueError, match="system 'rag' retrieved no neighbour for case 'e1'"):
        evaluate_dataset(CASES, {"rag": empty}, FakeReader(), n_bootstrap=0)


def test_rejects_bad_reader_output() -> None:
    class WrongShape(FakeReader):
        def score(self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem]]) -> Any:
            return SimpleNamespace(log_probs=np.zeros((len(cases), 1, 2)))

    with pytest.raises(ValueError, match=r"shape \(3, 1, 2\) for 'rag'; expected \(n_cases, k, n_labels\) = \(3, 2, 2\)"):
        evaluate_dataset(CASES, {"rag": rag()}, WrongShape(), k=2, n_bootstrap=0)

    class Probabilities(FakeReader):
        def score(self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem]]) -> Any:
            return SimpleNamespace(log_probs=np.full((len(cases), len(candidates[0]), 2), 0.5))

    with pytest.raises(ValueError, match="not log-probabilities"):
        evaluate_dataset(CASES, {"rag": rag()}, Probabilities(), k=2, n_bootstrap=0)


def test_works_with_the_real_task_and_reader_scores() -> None:
    """Contract check against ``TaskSpec`` and ``ReaderScores`` (no model involved)."""
    from llama_index_lvlm_retriever.readers.base import ReaderScores
    from llama_index_lvlm_retriever.tasks import TaskSpec

    task = TaskSpec(name="ab", labels=("A", "B"), question="A or B?")

    class SpecReader(FakeReader):
        def score(self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem]]) -> ReaderScores:
            log_probs = super().score(cases, candidates).log_probs
            return ReaderScores(log_probs=log_probs, labels=task.labels)

    report = evaluate_dataset(CASES, {"rag": rag()}, SpecReader(task=task), k=3, closed_book=False, n_bootstrap=0)
    assert report.labels == ("A", "B")
    assert report.metrics("rag")["rag_accuracy"] == pytest.approx(2 / 3)  # as in test_end_to_end_numbers
