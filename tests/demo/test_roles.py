"""The miniature's roles: disjoint by content hash, stratified, and the nuisance independent of the label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llama_index_lvlm_retriever.data.images import image_content_hash
from llama_index_lvlm_retriever.demo.config import quick_config
from llama_index_lvlm_retriever.demo.data import check_disjoint, load_demo_data
from llama_index_lvlm_retriever.demo.nuisance import Nuisance, describe, render
from llama_index_lvlm_retriever.demo.roles import ROLES, assign_roles, check_roles_disjoint


def test_assign_roles_is_stratified_and_keeps_duplicates_together() -> None:
    labels = np.array([0] * 60 + [1] * 40)
    groups = [f"g{i // 2}" for i in range(100)]  # pairs of identical images
    roles = assign_roles(labels, groups, {"kb": 0.5, "retriever_train": 0.3, "test": 0.2}, seed=0)
    assert sorted(np.concatenate(list(roles.values())).tolist()) == list(range(100))  # each image once
    for role in ROLES:
        owners = {groups[i] for i in roles[role]}
        assert all(not owners & {groups[i] for i in roles[other]} for other in ROLES if other != role)
    # 30 groups of label 0 and 20 of label 1, cut 50 / 30 / 20: (15, 9, 6) and (10, 6, 4) groups, 2 images each.
    assert [int((labels[roles[r]] == 0).sum()) for r in ("kb", "retriever_train", "test")] == [30, 18, 12]
    assert [int((labels[roles[r]] == 1).sum()) for r in ("kb", "retriever_train", "test")] == [20, 12, 8]
    with pytest.raises(ValueError, match="unknown role"):
        assign_roles(labels, groups, {"kb": 0.5, "train": 0.5}, seed=0)
    with pytest.raises(ValueError, match="sum to 1"):
        assign_roles(labels, groups, {"kb": 0.5, "test": 0.2}, seed=0)


def test_render_and_describe_by_hand() -> None:
    grey = np.array([[0, 255]], dtype=np.uint8)
    nuisance = Nuisance(hue=0.0, gain=0.5, offset=0.25)  # red; value = 0.25 + 0.5 * g
    rgb = render(grey, nuisance)
    # hsv(0, 0.8, 1) = (1, 0.2, 0.2): pixel 0 -> 0.25 * (255, 51, 51), pixel 255 -> 0.75 * (255, 51, 51).
    assert rgb.tolist() == [[[64, 13, 13], [191, 38, 38]]]
    assert describe(nuisance) == "hue0 bright flat"  # offset + gain / 2 = 0.5 -> bright; gain < 0.6 -> flat
    assert describe(Nuisance(hue=0.99, gain=0.8, offset=0.0)) == "hue15 dim sharp"


def test_roles_of_the_miniature_are_disjoint_and_training_queries_unseen(tmp_path: Path) -> None:
    pytest.importorskip("elpv_dataset")
    config = quick_config(output_dir=tmp_path, limit=300)
    data = load_demo_data(config, seed=0)
    check_disjoint(data)  # raises on a shared image
    hashes = {role: {image_content_hash(p) for p in paths} for role, paths in data.role_paths().items()}
    unseen = hashes["retriever_train"]
    assert unseen and not unseen & hashes["encoder"] and not unseen & hashes["reader_sft"]
    assert not unseen & hashes["kb"] and not hashes["test"] & (hashes["encoder"] | hashes["kb"] | hashes["val"])
    # Stage A names the label only; stage B always the nuisance; the KB both.
    assert all(item.text.startswith("a picture of a ") for item in data.encoder_stage_a)
    assert all(item.metadata["nuisance"] in item.text for item in data.encoder_stage_b)
    assert all(item.metadata["nuisance"] in item.text for item in data.kb)
    words = set(data.task.verbalizers)
    assert all(item.text.rsplit(" ", 1)[-1] in words for item in data.kb)
    assert "| knowledge base |" in "\n".join(data.role_lines)
    # A shared file would be caught.
    with pytest.raises(ValueError, match="also appears"):
        check_roles_disjoint({"kb": [data.kb[0].image_path], "test": [data.kb[0].image_path]})
