"""predict(): batched retrieval + reading over unlabelled images, resumable output, evidence viewer.

Tiny random models (CLIP and LLaVA from ``llama_index_lvlm_retriever.testing``) and generated
images: the answers are meaningless, the bookkeeping is what is checked.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.schema import QueryBundle
from PIL import Image

from llama_index_lvlm_retriever.data.folders import cases_from_folder
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.evaluation.predict import (
    EVIDENCE_HTML,
    PREDICTIONS_CSV,
    PREDICTIONS_JSONL,
    ROW_CORRECT,
    ROW_ERROR,
    RUN_FILE,
    predict,
)
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.query_engine import LVLMDiagnosisQueryEngine
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.schemas import load_schema
from llama_index_lvlm_retriever.tasks import get_task
from llama_index_lvlm_retriever.testing import build_tiny_clip, build_tiny_llava

N_IMAGES = 20


def _blobs(rng: np.random.Generator, side: int = 40) -> np.ndarray:
    """A grey image of a few bright discs on a dark background (a made-up 'lesion' picture)."""
    yy, xx = np.mgrid[0:side, 0:side]
    img = np.full((side, side), 20.0)
    for _ in range(3):
        cy, cx, r = rng.uniform(5, side - 5), rng.uniform(5, side - 5), rng.uniform(3, 9)
        img += 180 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        path = root / f"kb{i}.png"
        Image.fromarray(_blobs(rng)).save(path)
        items.append(KBItem(id=f"kb{i}", image_path=str(path), text=f"ultrasound pattern {i}", label=("malignant", "benign")[i % 2]))
    queries = root / "queries"
    queries.mkdir()
    for i in range(N_IMAGES):
        Image.fromarray(_blobs(rng)).save(queries / f"img{i:02d}.png")
    kb = KnowledgeBase.build(items, CLIPEmbedding.from_pretrained(build_tiny_clip(root / "clip")), show_progress=False)
    reader = HFLVLMReader.from_pretrained(build_tiny_llava(root / "llava"), get_task("breastmnist"))
    return {"kb": kb, "reader": reader, "queries": queries, "root": root}


class _CountingReader:
    """Wraps a reader: records which cases it scored; raises once ``fail_after`` cases are scored.

    (A batch of cases may take several ``score`` calls, one per neighbour count, so the kill is
    counted in cases.)
    """

    def __init__(self, reader: Any, fail_after: int | None = None) -> None:
        self._reader = reader
        self.fail_after = fail_after
        self.scored: list[str] = []

    @property
    def task(self) -> Any:
        return self._reader.task

    @property
    def model_name(self) -> str:
        return str(self._reader.model_name)

    def score(self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem]]) -> Any:
        if self.fail_after is not None and len(self.scored) >= self.fail_after:
            raise RuntimeError("simulated kill")
        self.scored += [case.id for case in cases]
        return self._reader.score(cases, candidates)

    def score_closed_book(self, cases: Sequence[Case]) -> Any:  # pragma: no cover - not used by predict
        return self._reader.score_closed_book(cases)


def test_predict_writes_one_row_per_image(models: dict[str, Any], tmp_path: Path) -> None:
    cases = cases_from_folder(models["queries"])
    retriever = LVLMAwareRetriever(models["kb"], k_image=2, k_text=2)
    rows = predict(cases, retriever, models["reader"], out_dir=tmp_path, batch_size=8, min_support=0.75)
    assert [row["case_id"] for row in rows] == [f"img{i:02d}.png" for i in range(N_IMAGES)]
    labels = get_task("breastmnist").labels
    for row in rows:
        assert row[keys.ANSWER] in labels and row[ROW_ERROR] is None and row[ROW_CORRECT] is None
        assert row[keys.PROBABILITY] == pytest.approx(max(row[keys.DISTRIBUTION].values()), abs=1e-6)
        neighbours = row[keys.NEIGHBOURS]
        assert 2 <= len(neighbours) <= 4
        assert all(n[keys.NEIGHBOUR_HEAD] in {"image", "text"} and n[keys.NEIGHBOUR_PREDICTION] in labels for n in neighbours)
        # support = share of neighbours whose own prediction is the answer; abstain below 0.75
        share = sum(n[keys.NEIGHBOUR_PREDICTION] == row[keys.ANSWER] for n in neighbours) / len(neighbours)
        assert row[keys.SUPPORT] == pytest.approx(share)
        assert row[keys.ABSTAIN] == (share < 0.75)
        assert row[keys.CONSISTENT] == (len({n[keys.NEIGHBOUR_PREDICTION] for n in neighbours}) == 1)
    # The files: JSONL and CSV with one line per image, the viewer with one card per image.
    assert [json.loads(line)["case_id"] for line in (tmp_path / PREDICTIONS_JSONL).read_text().splitlines()] == [
        row["case_id"] for row in rows
    ]
    with (tmp_path / PREDICTIONS_CSV).open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == N_IMAGES
    assert table[0]["answer"] == rows[0][keys.ANSWER] and table[0]["neighbour1_kb_id"] == rows[0][keys.NEIGHBOURS][0]["kb_id"]
    # One vocabulary: the CSV's columns are the JSONL's keys (neighbours flattened as neighbour<j>_<key>).
    case_keys = [key for key in rows[0] if key not in (keys.NEIGHBOURS, keys.DISTRIBUTION)]
    assert list(table[0])[: len(case_keys)] == case_keys
    first = rows[0][keys.NEIGHBOURS][0]
    assert {f"neighbour1_{key}" for key in first if key not in ("text", "image_path")} <= set(table[0])
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the test extra) checks the output schemas")
    for line in (tmp_path / PREDICTIONS_JSONL).read_text().splitlines():
        jsonschema.validate(json.loads(line), load_schema("predictions"))
    for csv_row in table:
        jsonschema.validate(csv_row, load_schema("predictions_csv"))
    page = (tmp_path / EVIDENCE_HTML).read_text()
    assert page.count('<article class="case"') == N_IMAGES and "http://" not in page and "https://" not in page
    run = json.loads((tmp_path / RUN_FILE).read_text())
    assert run["summary"]["n_cases"] == N_IMAGES
    assert run["summary"]["n_abstain"] == sum(row[keys.ABSTAIN] for row in rows)
    provenance = run["provenance"]
    assert provenance["models"]["reader"]["fingerprint"] == models["reader"].fingerprint()
    assert provenance["models"]["encoder"]["fingerprint"] == models["kb"].embed_model.fingerprint()
    assert provenance["models"]["image_head"] == {"kind": "identity"}
    assert provenance["ended_at"] >= provenance["started_at"]


def test_predict_matches_the_query_engine(models: dict[str, Any]) -> None:
    # predict batches what LVLMDiagnosisQueryEngine does for one image; the numbers must agree.
    case = cases_from_folder(models["queries"])[3]
    row = predict([case], LVLMAwareRetriever(models["kb"]), models["reader"], min_support=0.5)[0]
    engine = LVLMDiagnosisQueryEngine.from_defaults(knowledge_base=models["kb"], reader=models["reader"], min_support=0.5)
    meta = engine.query(QueryBundle(query_str="", image_path=case.image_path)).metadata
    assert row[keys.ANSWER] == meta[keys.ANSWER]
    assert row[keys.PROBABILITY] == pytest.approx(meta[keys.PROBABILITY], abs=1e-5)
    assert row[keys.SUPPORT] == pytest.approx(meta[keys.SUPPORT])
    assert row[keys.WEIGHTED_SUPPORT] == pytest.approx(meta[keys.WEIGHTED_SUPPORT], abs=1e-5)
    assert row[keys.ABSTAIN] == meta[keys.ABSTAIN]
    assert {n["kb_id"] for n in row[keys.NEIGHBOURS]} == {n[keys.NEIGHBOUR_KB_ID] for n in meta[keys.NEIGHBOURS]}


def test_predict_resumes_after_a_kill(models: dict[str, Any], tmp_path: Path) -> None:
    cases = cases_from_folder(models["queries"])
    retriever = LVLMAwareRetriever(models["kb"])
    killed = _CountingReader(models["reader"], fail_after=8)
    with pytest.raises(RuntimeError, match="simulated kill"):
        predict(cases, retriever, killed, out_dir=tmp_path, batch_size=4)
    assert len((tmp_path / PREDICTIONS_JSONL).read_text().splitlines()) == 8  # two finished batches of 4
    # A kill in the middle of a write leaves half a line; the rerun drops it.
    with (tmp_path / PREDICTIONS_JSONL).open("a") as handle:
        handle.write('{"case_id": "img08.png", "lab')
    rerun = _CountingReader(models["reader"])
    rows = predict(cases, retriever, rerun, out_dir=tmp_path, batch_size=4)
    assert sorted(rerun.scored) == [c.id for c in cases[8:]]  # only the 12 unfinished images are read
    assert [row["case_id"] for row in rows] == [c.id for c in cases]
    fresh = predict(cases, retriever, _CountingReader(models["reader"]), batch_size=4)
    assert rows == fresh
    # A third run finds everything done and reads nothing.
    third = _CountingReader(models["reader"])
    assert predict(cases, retriever, third, out_dir=tmp_path, batch_size=4) == rows and third.scored == []
    # A new image in the folder is the only one read.
    extra = Case(id="new.png", image_path=cases[0].image_path)
    fourth = _CountingReader(models["reader"])
    predict([*cases, extra], retriever, fourth, out_dir=tmp_path, batch_size=4)
    assert fourth.scored == ["new.png"]


def test_predict_refuses_to_mix_runs(models: dict[str, Any], tmp_path: Path) -> None:
    cases = cases_from_folder(models["queries"])[:3]
    retriever = LVLMAwareRetriever(models["kb"])
    predict(cases, retriever, models["reader"], out_dir=tmp_path, min_support=1.0, viewer=False)
    with pytest.raises(ValueError, match="holds predictions of another run .*other models or settings"):
        predict(cases, retriever, models["reader"], out_dir=tmp_path, min_support=0.5)
    rows = predict(cases, retriever, models["reader"], out_dir=tmp_path, min_support=0.5, resume=False)
    assert len(rows) == 3 and (tmp_path / EVIDENCE_HTML).is_file()


def test_predict_gold_and_unreadable_images(models: dict[str, Any], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = cases_from_folder(models["queries"])[:2]
    cases = [
        Case(id="a", image_path=good[0].image_path, labels=("malignant",)),
        Case(id="b", image_path=good[1].image_path, labels=("benign",)),
        Case(id="broken", image_path=str(broken)),
    ]
    rows = predict(cases, LVLMAwareRetriever(models["kb"]), models["reader"], out_dir=tmp_path / "out")
    assert [row[ROW_CORRECT] for row in rows[:2]] == [rows[0][keys.ANSWER] == "malignant", rows[1][keys.ANSWER] == "benign"]
    assert rows[2][ROW_ERROR].startswith("unreadable image") and rows[2][keys.ABSTAIN] is True
    assert rows[2][keys.ANSWER] is None and rows[2][keys.NEIGHBOURS] == []
    summary = json.loads((tmp_path / "out" / RUN_FILE).read_text())["summary"]
    assert summary["n_errors"] == 1 and summary["n_with_gold"] == 2
    assert summary["accuracy"] == pytest.approx(sum(row[ROW_CORRECT] for row in rows[:2]) / 2)
    page = (tmp_path / "out" / EVIDENCE_HTML).read_text()
    assert 'data-error="1"' in page and "image unavailable" in page


def test_predict_bad_inputs(models: dict[str, Any]) -> None:
    retriever = LVLMAwareRetriever(models["kb"])
    case = cases_from_folder(models["queries"])[0]
    with pytest.raises(ValueError, match="no cases to predict"):
        predict([], retriever, models["reader"])
    with pytest.raises(ValueError, match=r"min_support must be in \(0, 1\], got 0"):
        predict([case], retriever, models["reader"], min_support=0.0)
    with pytest.raises(ValueError, match="duplicate case id 'img00.png'"):
        predict([case, case], retriever, models["reader"])
    with pytest.raises(ValueError, match="the reader scores labels .* but the task has"):
        predict([case], retriever, models["reader"], task=get_task("retinamnist"))
    with pytest.raises(TypeError, match="retriever is a str"):
        predict([case], "retriever", models["reader"])  # type: ignore[arg-type]
