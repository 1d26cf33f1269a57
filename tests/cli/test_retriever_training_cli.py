"""collect-feedback and train-retriever, and the offline recipe end to end (collect -> train -> query)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from llama_index_lvlm_retriever.cli import main, retriever_training
from llama_index_lvlm_retriever.cli._common import CLIError
from llama_index_lvlm_retriever.heads import QueryHead
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache
from llama_index_lvlm_retriever.training.losses import EMDRLoss, LSRLoss, PosteriorKLLoss

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "training" / "offline_tiny.json"


def _recipe_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_offline_recipe", REPO / "training" / "run_offline_recipe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    retriever_training.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    recipe = _recipe_module()
    workdir = tmp_path_factory.mktemp("offline-recipe")
    recipe.prepare_workdir(workdir)
    outputs = recipe.run_recipe(RECIPE, workdir)
    return {"workdir": workdir, "outputs": outputs}


def test_offline_recipe_collects_trains_and_queries_with_the_trained_heads(recipe_run: dict[str, Any]) -> None:
    workdir: Path = recipe_run["workdir"]
    assert list(recipe_run["outputs"]) == ["build-kb", "collect-feedback", "train-retriever", "query", "evaluate"]

    cache = FeedbackCache.from_persist_dir(workdir / "feedback")
    assert len(cache) == 12  # prepare_workdir's n_train
    assert set(cache.heads) == {"image", "text"} and cache.n_candidates == 6
    assert cache.labels == ["defective", "functional"]
    collect_record = json.loads((workdir / "feedback" / retriever_training.COLLECT_CONFIG_FILE).read_text())
    assert collect_record["n_candidates"] == 6 and collect_record["image_head"] is None

    # Both heads were trained and saved as linear residual heads; whether they move the embedding
    # follows the no-regression decision recorded next to them (3 validation cases rarely give a
    # significant gain, so the initial, identity-equivalent heads are usually kept, and said so).
    # The decision reads the held-out part of them (adoption_holdout 0.5: round(3 * 0.5) = 2 cases).
    decision = json.loads((workdir / "heads" / "trainer_config.json").read_text())["adoption"]
    assert decision["message"] and decision["n_cases"] == 2
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    for name in ("image_head", "text_head"):
        head = QueryHead.from_pretrained(workdir / "heads" / name)
        assert not head.is_identity and head.dim == 16
        moved = not np.allclose(head.encode(x), x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-4)
        assert moved == decision["adopted"]
    record = json.loads((workdir / "heads" / retriever_training.TRAIN_CONFIG_FILE).read_text())
    assert record["loss"] == "posterior_kl" and record["steps"] == 20
    history = json.loads((workdir / "heads" / "training_history.json").read_text())
    assert any(entry["event"] == "train" and entry["step"] == 20 for entry in history)

    # The query step ran with the trained heads and printed KB neighbours with finite scores.
    rows = json.loads(recipe_run["outputs"]["query"])
    assert 2 <= len(rows) <= 4  # top_k=2 per head, merged
    kb_ids = {json.loads(line)["id"] for line in (workdir / "data" / "kb.jsonl").read_text().splitlines()}
    assert all(row["kb_id"] in kb_ids and math.isfinite(row["retrieval_score"]) for row in rows)


def test_train_retriever_continues_from_the_heads_the_feedback_was_collected_with(
    recipe_run: dict[str, Any], tmp_path: Path
) -> None:
    workdir: Path = recipe_run["workdir"]
    heads = workdir / "heads"
    feedback = tmp_path / "feedback-round2"
    args = _parse([
        "collect-feedback", "--kb", str(workdir / "kb"), "--cases", str(workdir / "data" / "train.jsonl"),
        "--reader", str(workdir / "models" / "reader"), "--task", str(workdir / "data" / "task.json"),
        "--image-head", str(heads / "image_head"), "--text-head", str(heads / "text_head"),
        "--n-candidates", "4", "--feedback-heads", "text", "--out", str(feedback), "--no-progress",
    ])
    assert args.handler(args) == 0
    assert FeedbackCache.from_persist_dir(feedback).heads == ("text",)
    out = tmp_path / "heads-round2"
    # No --image-head/--text-head: they come from the cache's collect_config.json (else the
    # cache's retriever check would refuse the identity-head retriever).
    args = _parse([
        "train-retriever", "--kb", str(workdir / "kb"), "--feedback", str(feedback), "--out", str(out),
        "--loss", "lsr", "--head", "text", "--steps", "3", "--validation-fraction", "0", "--no-progress",
    ])
    assert args.handler(args) == 0
    record = json.loads((out / retriever_training.TRAIN_CONFIG_FILE).read_text())
    assert record["text_head"] == str((heads / "text_head").resolve())
    # The untrained image head is saved as the retriever had it: the round-1 head.
    x = np.random.default_rng(1).normal(size=(2, 16)).astype(np.float32)
    round1 = QueryHead.from_pretrained(heads / "image_head").encode(x)
    np.testing.assert_allclose(QueryHead.from_pretrained(out / "image_head").encode(x), round1, atol=1e-6)


def test_train_retriever_encoder_mode_trains_tower_copies_that_query_loads(
    recipe_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir: Path = recipe_run["workdir"]
    common = ["train-retriever", "--kb", str(workdir / "kb"), "--feedback", str(workdir / "feedback"),
              "--mode", "encoder", "--cases", str(workdir / "data" / "train.jsonl"), "--head", "image",
              "--steps", "3", "--lr", "0.01", "--alpha", "0.5", "--validation-fraction", "0", "--no-progress"]
    out = tmp_path / "encoder-heads"
    assert main([*common, "--out", str(out)]) == 0
    config = json.loads((out / "image_head" / "config.json").read_text())
    assert config["class_name"] == "EncoderQueryHead"
    head = QueryHead.from_pretrained(out / "image_head")
    assert head.config.alpha == 0.5 and head.config.train_last_n_blocks == 1
    record = json.loads((out / retriever_training.TRAIN_CONFIG_FILE).read_text())
    assert record["mode"] == "encoder" and record["encoder_lora_r"] is None

    # The trained tower copy moves the scores of the plain query.
    image = next((workdir / "data").rglob("*.png"))
    query = ["query", "--kb", str(workdir / "kb"), "--image", str(image), "--k-image", "3", "--k-text", "3", "--json"]
    capsys.readouterr()
    assert main(query) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*query, "--heads", str(out)]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert len(trained) == len(plain) >= 3
    assert [round(r["retrieval_score"], 5) for r in trained if r["head"] == "image"] != [
        round(r["retrieval_score"], 5) for r in plain if r["head"] == "image"]

    lora = tmp_path / "lora-heads"
    assert main([*common, "--encoder-lora-r", "2", "--out", str(lora)]) == 0
    saved = json.loads((lora / "image_head" / "config.json").read_text())
    assert json.dumps(saved).count('"lora_r": 2') == 1 and '"lora_merged": true' in json.dumps(saved)


def test_train_retriever_encoder_mode_needs_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fb").mkdir()
    base = ["train-retriever", "--kb", str(tmp_path), "--feedback", str(tmp_path / "fb"), "--out", str(tmp_path / "o")]
    assert main([*base, "--mode", "encoder"]) == 2
    assert "--mode encoder reads the query images: pass --cases" in capsys.readouterr().err
    assert main([*base, "--encoder-lora-r", "4"]) == 2
    assert "--encoder-lora-r needs --mode encoder" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "cls"), [("posterior_kl", PosteriorKLLoss), ("lsr", LSRLoss), ("emdr", EMDRLoss)])
def test_build_loss_maps_names_to_classes(name: str, cls: type) -> None:
    loss = retriever_training.build_loss(name, 0.1, only_inconsistent=True)
    assert isinstance(loss, cls)


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CLIError, match="--loss 'kl': choose one of"):
        retriever_training.build_loss("kl", 0.05)
    args = _parse(["train-retriever", "--kb", str(tmp_path), "--feedback", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    with pytest.raises(CLIError, match="--feedback .*none: folder not found; run collect-feedback first"):
        args.handler(args)
    args = _parse(["collect-feedback", "--kb", "kb", "--cases", "c.jsonl", "--reader", "r", "--out", "o",
                   "--k-image", "0", "--k-text", "0"])
    with pytest.raises(CLIError, match="--k-image and --k-text are both 0"):
        args.handler(args)
    (tmp_path / retriever_training.COLLECT_CONFIG_FILE).write_text("{not json")
    with pytest.raises(CLIError, match="collect_config.json is not valid JSON"):
        retriever_training.collected_heads(str(tmp_path))


def test_parsers_default_to_the_papers_settings() -> None:
    collect = _parse(["collect-feedback", "--kb", "kb", "--cases", "c.jsonl", "--reader", "r", "--out", "o"])
    assert (collect.n_candidates, collect.feedback_heads) == (50, ["image", "text"])
    train = _parse(["train-retriever", "--kb", "kb", "--feedback", "f", "--out", "o"])
    assert (train.loss, train.head, train.schedule, train.gamma) == ("posterior_kl", "both", "joint", 1.0)
    assert (train.rounds, train.adoption, train.reader, train.weight_decay) == (1, "no_regression", None, 0.01)
    assert (train.steps, train.lr) == (600, None)  # None: TrainerConfig's rate per mode
    assert _parse(["train-retriever", "--kb", "kb", "--feedback", "f", "--out", "o", "--gamma", "0.02"]).gamma == 0.02


def test_gamma_auto_builds_a_loss_factory_and_bad_gammas_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    factory = retriever_training.build_loss("lsr", "auto", only_inconsistent=True)
    loss = factory(0.01)
    assert isinstance(loss, LSRLoss) and loss.gamma == 0.01 and loss.only_inconsistent
    with pytest.raises(SystemExit):
        _parse(["train-retriever", "--kb", "kb", "--feedback", "f", "--out", "o", "--gamma", "-1"])
    assert "expected a float > 0 or 'auto'" in capsys.readouterr().err


def test_train_retriever_rounds_need_the_reader_and_cases(tmp_path: Path) -> None:
    (tmp_path / "fb").mkdir()
    args = _parse(["train-retriever", "--kb", str(tmp_path), "--feedback", str(tmp_path / "fb"), "--out",
                   str(tmp_path / "o"), "--rounds", "2"])
    with pytest.raises(CLIError, match="--rounds 2 .*pass --reader and --cases"):
        args.handler(args)


def test_train_retriever_validates_on_real_retrieval_with_rounds(recipe_run: dict[str, Any], tmp_path: Path) -> None:
    workdir: Path = recipe_run["workdir"]
    out = tmp_path / "heads"
    args = _parse([
        "train-retriever", "--kb", str(workdir / "kb"), "--feedback", str(workdir / "feedback"), "--out", str(out),
        "--cases", str(workdir / "data" / "train.jsonl"), "--reader", str(workdir / "models" / "reader"),
        "--task", str(workdir / "data" / "task.json"), "--rounds", "2", "--steps", "4", "--eval-every", "2",
        "--batch-size", "8", "--validation-fraction", "0.25", "--no-progress", "--gamma", "auto",
    ])
    assert args.handler(args) == 0
    record = json.loads((out / "trainer_config.json").read_text())
    assert record["config"]["rounds"] == 2 and record["config"]["gamma"] == "auto"
    assert set(record["gamma"]) == {"image", "text"} and all(g > 0 for g in record["gamma"].values())
    assert record["adoption"]["message"].startswith(("adopted the trained heads", "kept the initial heads"))
    history = json.loads((out / "training_history.json").read_text())
    assert [r["round"] for r in history if r["event"] == "round"] == [2]
    vals = [r for r in history if r["event"] == "validation"]
    assert all("val_rag_accuracy" in r and "val_outside_pool/image" in r for r in vals)


@pytest.mark.parametrize("name", ["retinamnist", "dermamnist", "breastmnist", "offline_tiny"])
def test_every_recipe_step_parses_with_its_command(name: str, tmp_path: Path) -> None:
    from llama_index_lvlm_retriever.cli import evaluate, kb
    from llama_index_lvlm_retriever.cli._common import apply_config_defaults

    recipe = json.loads((REPO / "training" / f"{name}.json").read_text())
    commands = [step["command"] for step in recipe["steps"]]
    assert commands[:1] == ["build-kb"] and "collect-feedback" in commands and "train-retriever" in commands
    for i, step in enumerate(recipe["steps"]):
        parser = argparse.ArgumentParser()
        registry: dict[str, argparse.ArgumentParser] = {}
        subparsers = parser.add_subparsers(dest="command")
        for module in (kb, retriever_training, evaluate):
            registry.update(module.register(subparsers))
        config = tmp_path / f"{i}.json"
        config.write_text(json.dumps(step["options"]))
        apply_config_defaults(registry[step["command"]], str(config))  # unknown option names raise
        args = parser.parse_args([step["command"], "--config", str(config)])
        for key, value in step["options"].items():
            assert getattr(args, key) == value, (name, step["command"], key)
    if name != "offline_tiny":
        train = next(s["options"] for s in recipe["steps"] if s["command"] == "train-retriever")
        assert train["loss"] == "posterior_kl" and train["head"] == "both"
        assert "ESTIMATES" in recipe["estimates"]["note"]


def test_prepare_medmnist_writes_kb_train_and_test_files(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("prepare_medmnist", REPO / "training" / "prepare_medmnist.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 5), ("val", 3), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    paths = module.prepare_medmnist(tmp_path / "breastmnist.npz", "breastmnist", tmp_path / "out", caption="An ultrasound: {label_name}.")
    kb_lines = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    assert len(kb_lines) == 5 and kb_lines[1]["text"] == "An ultrasound: benign." and kb_lines[0]["label"] == "malignant"
    train = [json.loads(line) for line in paths["val"].read_text().splitlines()]
    test = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    # MedMNIST index 0 = malignant, 1 = benign; labels alternate 0, 1, 0.
    assert [c["answers"] for c in train] == ["malignant", "benign", "malignant"] and len(test) == 2
    with pytest.raises(ValueError, match="'chestmnist' is multi-label"):
        module.prepare_medmnist(tmp_path / "breastmnist.npz", "chestmnist", tmp_path / "out2")


def test_train_retriever_report_to_tensorboard_writes_the_logged_steps(recipe_run: dict[str, Any], tmp_path: Path, tensorboard_scalars: Any
) -> None:

    workdir: Path = recipe_run["workdir"]
    out = tmp_path / "heads"
    args = _parse([
        "train-retriever", "--kb", str(workdir / "kb"), "--feedback", str(workdir / "feedback"), "--out", str(out),
        "--head", "text", "--steps", "4", "--validation-fraction", "0", "--no-progress",
        "--report-to", "tensorboard", "--report-dir", str(tmp_path / "tb"),
    ])
    assert args.handler(args) == 0
    config = json.loads((out / "trainer_config.json").read_text())
    assert json.dumps(config).count('"report_to": ["tensorboard"]') == 1  # the flag reached TrainerConfig
    history = json.loads((out / "training_history.json").read_text())
    logged = [r for r in history if r.get("event") == "train"]
    scalars = tensorboard_scalars(tmp_path / "tb")
    series = scalars[f"train/{logged[0]['phase']}/loss/text"]
    assert [step for step, _ in series] == [r["step"] for r in logged]
    assert [value for _, value in series] == pytest.approx([r["loss/text"] for r in logged], rel=1e-5)
