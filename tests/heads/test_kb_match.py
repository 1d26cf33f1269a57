"""Heads know their KB: a warning naming both KBs and the shared share, refusal below 50%, provenance."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import KBMismatchError
from llama_index_lvlm_retriever.evaluation.predict import _describe_models
from llama_index_lvlm_retriever.heads import QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.heads.kb_match import (
    IDS_SAMPLE_SIZE,
    compare_knowledge_base,
    id_hash,
    ids_sha256,
    knowledge_base_record,
)
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.testing.colour import ColourEmbedding

COLOURS = {"r": (255, 0, 0), "g": (0, 255, 0), "b": (0, 0, 255), "y": (255, 255, 0), "c": (0, 255, 255), "m": (255, 0, 255)}


def _kb(folder: Path, ids: str) -> KnowledgeBase:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in ids:
        path = folder / f"{i}.png"
        if not path.exists():
            Image.new("RGB", (4, 4), COLOURS[i]).save(path)
        items.append(KBItem(id=i, image_path=str(path), text="red green blue", source="stub"))
    return KnowledgeBase.build(items, ColourEmbedding(), show_progress=False)


def _head_trained_on(kb: KnowledgeBase, *, old_record: bool = False) -> QueryHead:
    head = QueryHead(QueryHeadConfig(dim=kb.dim, kind="linear"))
    record = knowledge_base_record(kb)
    if old_record:  # what heads saved before the ids sample existed carry
        del record["ids_sample"]
    head.trained_on = {"knowledge_base": record, "gamma": 1.0}
    return head


def _fake_kb(ids: list[str]) -> SimpleNamespace:
    return SimpleNamespace(items=[SimpleNamespace(id=i) for i in ids], dim=3)


def test_the_record_holds_count_ids_hash_and_a_bottom_k_sample() -> None:
    ids = [f"item-{i}" for i in range(3000)]
    record = knowledge_base_record(_fake_kb(ids))
    assert record["n_items"] == 3000 and record["dim"] == 3 and record["ids_sha256"] == ids_sha256(ids)
    assert len(record["ids_sample"]) == IDS_SAMPLE_SIZE
    assert record["ids_sample"] == sorted(id_hash(i) for i in ids)[:IDS_SAMPLE_SIZE]
    assert len(knowledge_base_record(_fake_kb(ids[:5]))["ids_sample"]) == 5  # small KB: every id


def test_same_kb_is_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kb = _kb(tmp_path, "rgb")
    with caplog.at_level(logging.WARNING):
        retriever = LVLMAwareRetriever(kb, _head_trained_on(kb), _head_trained_on(kb))
    assert retriever.head_kb_events == {} and "trained on" not in caplog.text


def test_another_kb_sharing_most_items_warns_naming_both_and_the_share(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trained = _kb(tmp_path, "rgb")
    used = _kb(tmp_path, "rgy")  # 2 of 3 shared
    with caplog.at_level(logging.WARNING):
        retriever = LVLMAwareRetriever(used, image_head=_head_trained_on(trained))
    ours, theirs = ids_sha256(["r", "g", "b"])[:12], ids_sha256(["r", "g", "y"])[:12]
    assert (
        f"image_head was trained on the knowledge base of 3 items (ids sha256 {ours}) but is used on the knowledge "
        f"base of 3 items (ids sha256 {theirs}), 66.7% of items shared"
    ) in caplog.text
    event = retriever.head_kb_events["image_head"]
    assert event["shared_share"] == pytest.approx(2 / 3) and not event["estimated"] and not event["allowed"]
    # ... and it is recorded in the provenance of the run's models
    assert _describe_models(retriever, None)["head_kb_events"]["image_head"] == event


def test_under_half_shared_is_refused_unless_allowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trained = _kb(tmp_path, "rgb")
    used = _kb(tmp_path, "rycm")  # 1 shared, of max(3, 4) = 25%
    with pytest.raises(KBMismatchError, match=(
        r"^text_head was trained on the knowledge base of 3 items .* but is used on the knowledge base of 4 items "
        r".*, 25.0% of items shared, below the 50% minimum; retrain .* or pass allow_other_kb=True \(--allow-other-kb\)"
    )):
        LVLMAwareRetriever(used, text_head=_head_trained_on(trained))
    with caplog.at_level(logging.WARNING):
        retriever = LVLMAwareRetriever(used, text_head=_head_trained_on(trained), allow_other_kb=True)
    assert "25.0% of items shared" in caplog.text
    assert retriever.head_kb_events["text_head"]["allowed"] is True
    assert retriever.config.allow_other_kb is True


def test_a_grown_kb_shares_its_old_items_over_the_new_size(tmp_path: Path) -> None:
    trained = _kb(tmp_path, "rg")
    assert LVLMAwareRetriever(_kb(tmp_path, "rgb"), _head_trained_on(trained)).head_kb_events["image_head"][
        "shared_share"] == pytest.approx(2 / 3)
    with pytest.raises(KBMismatchError, match="40.0% of items shared"):
        LVLMAwareRetriever(_kb(tmp_path, "rgbyc"), _head_trained_on(trained))  # grown 2 -> 5 items


def test_old_records_compare_the_ids_hash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trained = _kb(tmp_path, "rgb")
    assert LVLMAwareRetriever(_kb(tmp_path, "rgb"), _head_trained_on(trained, old_record=True)).head_kb_events == {}
    with caplog.at_level(logging.WARNING):  # disjoint, but without a sample the share is unknown: warned, not refused
        retriever = LVLMAwareRetriever(_kb(tmp_path, "ycm"), _head_trained_on(trained, old_record=True))
    assert "an unknown share of items shared (the head was saved without an ids sample)" in caplog.text
    assert retriever.head_kb_events["image_head"]["shared_share"] is None


def test_large_kbs_estimate_the_share_from_the_sample() -> None:
    ids = [f"case-{i:05d}" for i in range(20_000)]
    record = knowledge_base_record(_fake_kb(ids))
    rng = np.random.default_rng(0)
    kept = [ids[i] for i in sorted(rng.choice(len(ids), 12_000, replace=False))]  # 60% of the items
    overlap = compare_knowledge_base(record, _fake_kb(kept))
    assert overlap.estimated and overlap.shared_share == pytest.approx(0.6, abs=0.05)
    assert overlap.describe_share().startswith("about ")
    assert compare_knowledge_base(record, _fake_kb(ids[::-1])).same  # same ids, another order


def test_the_record_survives_save_and_load(tmp_path: Path) -> None:
    trained = _kb(tmp_path / "a", "rgb")
    _kb(tmp_path / "b", "ycm").persist(tmp_path / "other-kb")
    _head_trained_on(trained).save_pretrained(tmp_path / "head")
    with pytest.raises(KBMismatchError, match="0.0% of items shared"):
        LVLMAwareRetriever.from_persist_dir(tmp_path / "other-kb", ColourEmbedding(), image_head_dir=tmp_path / "head")
    retriever = LVLMAwareRetriever.from_persist_dir(
        tmp_path / "other-kb", ColourEmbedding(), image_head_dir=tmp_path / "head", allow_other_kb=True
    )
    assert retriever.head_kb_events["image_head"]["shared_share"] == 0.0
