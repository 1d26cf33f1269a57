"""``lvlm-retriever diagnose`` end to end: tiny saved CLIP knowledge base, tiny saved LLaVA reader."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from llama_index_lvlm_retriever.cli import diagnose
from llama_index_lvlm_retriever.cli._common import CLIError
from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.schemas import load_schema
from llama_index_lvlm_retriever.tasks import TaskSpec, get_task
from llama_index_lvlm_retriever.testing import build_tiny_clip, build_tiny_llava


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("diagnose")
    retina = skdata.retina()
    crops = {"r0": retina[100:260, 100:260], "r1": retina[500:660, 400:560], "r2": retina[300:460, 600:760]}
    items = []
    for (item_id, pixels), label in zip(crops.items(), ("benign", "malignant", "benign")):
        Image.fromarray(pixels).save(root / f"{item_id}.png")
        items.append(KBItem(id=item_id, image_path=str(root / f"{item_id}.png"), text=f"fundus crop {item_id}", label=label))
    Image.fromarray(retina[200:360, 250:410]).save(root / "query.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clip_dir = build_tiny_clip(root / "clip")
        kb = KnowledgeBase.build(items, CLIPEmbedding.from_pretrained(clip_dir), show_progress=False)
        kb.persist(root / "kb")
        llava_dir = build_tiny_llava(root / "llava")
    finally:
        torch.set_num_threads(threads)
    task_json = get_task("breastmnist").model_copy(update={"name": "custom-breast"}).to_json(root / "task.json")
    return {"kb": str(root / "kb"), "reader": str(llava_dir), "image": str(root / "query.png"), "task_json": str(task_json)}


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    diagnose.register(sub)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return args.handler(args)
    finally:
        torch.set_num_threads(threads)


def test_diagnose_json(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(
        ["diagnose", "--kb", setup["kb"], "--reader", setup["reader"], "--task", "breastmnist",
         "--image", setup["image"], "--k-image", "1", "--k-text", "1", "--min-support", "0.5", "--json"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out[keys.ANSWER] in get_task("breastmnist").labels
    assert sum(out[keys.DISTRIBUTION].values()) == pytest.approx(1.0)
    assert out[keys.PROBABILITY] == pytest.approx(max(out[keys.DISTRIBUTION].values()))
    evidence = out[keys.NEIGHBOURS]
    assert 1 <= len(evidence) <= 2 and {row[keys.NEIGHBOUR_KB_ID] for row in evidence} <= {"r0", "r1", "r2"}
    assert [row["rerank_score"] for row in evidence] == sorted((row["rerank_score"] for row in evidence), reverse=True)
    # Each neighbour names its head(s) and its own KB label; abstention follows the answer's support.
    assert {row[keys.NEIGHBOUR_HEAD] for row in evidence} <= {"image", "text", "image+text"}
    assert all(row[keys.NEIGHBOUR_KB_LABEL] in get_task("breastmnist").labels for row in evidence)
    assert all(row[keys.NEIGHBOUR_PREDICTION] in get_task("breastmnist").labels for row in evidence)
    assert 0.0 <= out[keys.SUPPORT] <= 1.0 and 0.0 <= out[keys.WEIGHTED_SUPPORT] <= 1.0
    assert out[keys.ABSTAIN] == (out[keys.SUPPORT] < 0.5)
    assert out["response"].startswith(out[keys.ANSWER]) or out["response"].startswith("Inconclusive")
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the test extra) checks the output schema")
    jsonschema.validate(out, load_schema("diagnose"))


def test_diagnose_text_with_task_file(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(
        ["diagnose", "--kb", setup["kb"], "--reader", setup["reader"], "--task", setup["task_json"],
         "--image", setup["image"], "--question", "Is the lesion benign or malignant?", "--aggregation", "majority"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("answer: ")
    assert "probability:" in out and "support:" in out and "consistent (all neighbours agree):" in out
    assert "evidence:" in out
    assert "prediction" in out and "fundus crop" in out and "kb_label" in out
    assert TaskSpec.from_json(setup["task_json"]).name == "custom-breast"


def test_diagnose_bad_inputs(setup: dict[str, str], tmp_path: Path) -> None:
    base = ["diagnose", "--kb", setup["kb"], "--reader", setup["reader"]]
    with pytest.raises(CLIError, match="--task nosuchtask: unknown task .nosuchtask."):
        _run([*base, "--task", "nosuchtask", "--image", setup["image"]])
    with pytest.raises(CLIError, match="--image .*missing.png: file not found"):
        _run([*base, "--task", "breastmnist", "--image", str(tmp_path / "missing.png")])
    with pytest.raises(CLIError, match="--k-image and --k-text are both 0"):
        _run([*base, "--task", "breastmnist", "--image", setup["image"], "--k-image", "0", "--k-text", "0"])
    with pytest.raises(CLIError, match="--k-text must be >= 0, got -1"):
        _run([*base, "--task", "breastmnist", "--image", setup["image"], "--k-text", "-1"])
    with pytest.raises(CLIError, match=r"--min-support must be in \(0, 1\], got 0.0"):
        _run([*base, "--task", "breastmnist", "--image", setup["image"], "--min-support", "0"])
    (tmp_path / "t.json").write_text('{"kind": "other"}')
    with pytest.raises(CLIError, match="--threshold-file: .*t.json' is not a threshold file"):
        _run([*base, "--task", "breastmnist", "--image", setup["image"], "--threshold-file", str(tmp_path / "t.json")])


def test_diagnose_reads_the_task_from_a_reader_folder(setup: dict[str, str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # A reader saved with its task (as train-reader writes it) needs no --task, like evaluate.
    from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader

    folder = HFLVLMReader.from_pretrained(setup["reader"], get_task("breastmnist")).save_pretrained(tmp_path / "reader")
    code = _run(["diagnose", "--kb", setup["kb"], "--reader", str(folder), "--image", setup["image"], "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)[keys.ANSWER] in get_task("breastmnist").labels


def test_diagnose_writes_the_evidence_viewer(setup: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    viewer = tmp_path / "review" / "case.html"
    code = _run(
        ["diagnose", "--kb", setup["kb"], "--reader", setup["reader"], "--task", "breastmnist", "--image", setup["image"],
         "--k-image", "1", "--k-text", "1", "--json", "--viewer", str(viewer), "--viewer-images", "embed"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["viewer"] == str(viewer)
    page = viewer.read_text(encoding="utf-8")
    assert page.count('<article class="case"') == 1 and '<h2 title="query.png">' in page
    # The query and each neighbour are embedded images, each neighbour with the reader's prediction.
    assert page.count('class="neighbour"') == len(out[keys.NEIGHBOURS]) >= 1
    assert page.count("data-img=") == 1 + len(out[keys.NEIGHBOURS]) and 1 <= page.count("data:image/jpeg;base64,") <= 1 + len(out[keys.NEIGHBOURS])
    names = {"malignant": "malignant (yes)", "benign": "benign (no)"}  # breastmnist's labels and verbalizers
    for row in out[keys.NEIGHBOURS]:
        assert "<b>#" in page and row[keys.NEIGHBOUR_KB_ID] in page and f"reader given it alone: <b>{names[row[keys.NEIGHBOUR_PREDICTION]]}</b>" in page
    assert f"answer: <b>{names[out[keys.ANSWER]]}</b>" in page
    # Review aids: the notice, provenance and the answer's distribution, each neighbour's KB label.
    assert "Research use only. Not a medical device" in page and "<dt>reader</dt>" in page
    assert "<dt>knowledge base</dt>" in page and "fingerprint" in page and "<dt>task</dt><dd>breastmnist</dd>" in page
    assert '<table class="dist"' in page and page.count("KB label: <b>") == len(out[keys.NEIGHBOURS])


def test_diagnose_takes_the_threshold_file_of_evaluate(setup: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from llama_index_lvlm_retriever.evaluation.risk_control import (
        choose_min_support,
        save_threshold_file,
    )

    control = choose_min_support(np.array([1.0] * 30 + [0.5] * 10), np.array([True] * 30 + [True, False] * 5), 0.1, 0.1)
    threshold = save_threshold_file(tmp_path / "threshold.json", control)  # min_support 0.51
    assert _run(["diagnose", "--kb", setup["kb"], "--reader", setup["reader"], "--task", "breastmnist", "--image",
                 setup["image"], "--k-image", "1", "--k-text", "1", "--threshold-file", str(threshold), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[keys.ABSTAIN] == (out[keys.SUPPORT] < 0.51)
