"""``lvlm-retriever train-reader`` end to end: tiny CLIP KB, tiny LLaVA reader, LoRA and full modes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from llama_index_lvlm_retriever.cli import main, reader_training
from llama_index_lvlm_retriever.cli._common import CLIError
from llama_index_lvlm_retriever.cli._loading import load_cases
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.tasks import TaskSpec
from llama_index_lvlm_retriever.testing import build_tiny_clip, build_tiny_llava
from llama_index_lvlm_retriever.training.reader_sft import SFT_CONFIG_NAME

TASK = TaskSpec(name="toy-grade", labels=("low", "high"), question="Is the grade low or high? Answer {options}.")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _noise_png(path: Path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(36, 36, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train_reader")
    rows = []
    for j in range(5):
        _noise_png(root / f"kb{j}.png", 200 + j)
        rows.append({"id": f"kb-{j}", "image_path": f"kb{j}.png", "text": f"grade {'low' if j % 2 else 'high'} tissue {j}"})
    (root / "kb.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cases = []
    for i in range(2):
        _noise_png(root / f"case{i}.png", 300 + i)
        cases.append({"id": f"case-{i}", "image_path": f"case{i}.png", "answers": TASK.labels[i]})
    (root / "cases.jsonl").write_text("\n".join(json.dumps(c) for c in cases) + "\n")
    TASK.to_json(root / "task.json")
    clip = build_tiny_clip(root / "clip")
    code = main(["build-kb", "--items", str(root / "kb.jsonl"), "--embed-model", str(clip), "--out", str(root / "kb"), "--no-progress"])
    assert code == 0
    return {"root": root, "kb": root / "kb", "cases": root / "cases.jsonl", "task": root / "task.json",
            "reader": build_tiny_llava(root / "llava", extra_corpus=list(TASK.answer_texts))}


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    reader_training.register(sub)
    args = parser.parse_args(argv)
    return args.handler(args)


def _base(inputs: dict[str, Path], out: Path) -> list[str]:
    return ["train-reader", "--kb", str(inputs["kb"]), "--cases", str(inputs["cases"]), "--reader", str(inputs["reader"]),
            "--task", str(inputs["task"]), "--out", str(out), "--no-progress"]


def test_lora_run_writes_a_loadable_reader_samples_and_config(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "reader"
    code = _run([*_base(inputs, out), "--mode", "lora", "--lora-r", "2", "--epochs", "1", "--batch-size", "4", "--lr", "5e-3"])
    assert code == 0
    # 2 cases x 2 heads x 2 pairs.
    records = [json.loads(line) for line in (out / reader_training.SAMPLES_FILE).read_text().splitlines()]
    assert len(records) == 8
    assert {r["case_id"] for r in records} == {"case-0", "case-1"}
    assert [r["messages"][-1]["content"][0]["text"] for r in records] == ["low"] * 4 + ["high"] * 4
    config = json.loads((out / reader_training.TRAIN_READER_CONFIG_FILE).read_text())
    assert config["sft_config"]["mode"] == "lora" and config["sft_config"]["lora_r"] == 2
    assert config["sft_config"]["target_modules"] == ["q_proj", "v_proj"]
    assert (config["k_image"], config["k_text"]) == (2, 2) and len(config["history"]) == 1
    assert (out / SFT_CONFIG_NAME).is_file()
    # LoRA saves the adapters alone by default; the folder loads on top of its base model.
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert not out.with_name("reader.checkpoints").exists()  # default checkpoints go after a good save
    reader = HFLVLMReader.from_pretrained(out)
    assert reader.task == TASK
    base = HFLVLMReader.from_pretrained(inputs["reader"], TASK)
    case = load_cases(inputs["cases"])[:1]
    assert not np.allclose(reader.score(case, [[None]]).log_probs, base.score(case, [[None]]).log_probs)

    merged = tmp_path / "merged"
    code = _run([*_base(inputs, merged), "--mode", "lora", "--merge", "--lora-r", "2", "--epochs", "1", "--batch-size", "4",
                 "--lr", "5e-3"])
    assert code == 0 and (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    tuned = dict(HFLVLMReader.from_pretrained(merged).model.named_parameters())
    changed = [n for n, p in base.model.named_parameters() if not torch.equal(p, tuned[n])]
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)


def test_validation_accumulation_bf16_and_resume_reach_the_run(inputs: dict[str, Path], tmp_path: Path) -> None:
    out, checkpoints = tmp_path / "reader", tmp_path / "ckpt"
    argv = [*_base(inputs, out), "--mode", "full", "--epochs", "2", "--batch-size", "2", "--gradient-accumulation-steps",
            "2", "--bf16", "--validation-cases", str(inputs["cases"]), "--checkpoint-dir", str(checkpoints)]
    assert _run(argv) == 0
    config = json.loads((out / reader_training.TRAIN_READER_CONFIG_FILE).read_text())
    assert config["sft_config"]["gradient_accumulation_steps"] == 2 and config["sft_config"]["bf16"] is True
    # 8 samples, 2 per pass, 2 passes per step: 2 optimiser steps per epoch; validation every epoch.
    assert [h["steps"] for h in config["history"]] == [2.0, 2.0]
    assert all(np.isfinite(h["eval_loss"]) for h in config["history"])
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]  # kept: named by the user
    # Resuming a finished run trains nothing more and saves the same weights.
    again = tmp_path / "again"
    argv[argv.index(str(out))] = str(again)
    assert _run([*argv, "--resume"]) == 0
    first, second = HFLVLMReader.from_pretrained(out), HFLVLMReader.from_pretrained(again)
    assert all(torch.equal(p, dict(second.model.named_parameters())[n]) for n, p in first.model.named_parameters())


def test_full_mode_with_task_from_the_reader_folder(inputs: dict[str, Path], tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert _run([*_base(inputs, first), "--mode", "full", "--epochs", "1", "--lr", "1e-3"]) == 0
    # A reader folder carries its task: --task may be left out.
    second = tmp_path / "second"
    argv = [a for a in _base(inputs, second) if a not in ("--task", str(inputs["task"]))]
    argv[argv.index("--reader") + 1] = str(first)
    assert _run([*argv, "--mode", "full", "--epochs", "2", "--max-grad-norm", "0"]) == 0
    config = json.loads((second / reader_training.TRAIN_READER_CONFIG_FILE).read_text())
    assert config["sft_config"]["max_grad_norm"] is None and config["sft_config"]["epochs"] == 2
    assert HFLVLMReader.from_pretrained(second).task == TASK


def test_bad_options_name_the_fix(inputs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CLIError, match="--k-image and --k-text are both 0"):
        _run([*_base(inputs, tmp_path / "x"), "--k-image", "0", "--k-text", "0"])
    with pytest.raises(CLIError, match=r"invalid train-reader options: epochs: Input should be greater than 0 \(got 0\)"):
        _run([*_base(inputs, tmp_path / "x"), "--epochs", "0"])
    with pytest.raises(CLIError, match="--kb .*missing: folder not found"):
        _run([*_base(inputs, tmp_path / "x")[:1], "--kb", str(tmp_path / "missing"), *_base(inputs, tmp_path / "x")[3:]])


def test_report_to_reaches_the_config(inputs: dict[str, Path], tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    reader_training.register(parser.add_subparsers(dest="command"))
    base = _base(inputs, tmp_path / "reader")
    assert reader_training.sft_config_from_args(parser.parse_args(base)).report_to == ("none",)
    args = parser.parse_args([*base, "--report-to", "tensorboard", "--report-dir", str(tmp_path / "tb")])
    config = reader_training.sft_config_from_args(args)
    assert (config.report_to, config.report_dir) == (("tensorboard",), str(tmp_path / "tb"))
    with pytest.raises(CLIError, match="report_to"):
        reader_training.sft_config_from_args(parser.parse_args([*base, "--report-to", "none", "mlflow"]))


def test_tensorboard_gets_the_epoch_losses(inputs: dict[str, Path], tmp_path: Path, tensorboard_scalars: Any) -> None:
    base = _base(inputs, tmp_path / "reader")
    assert _run([*base, "--mode", "lora", "--lora-r", "2", "--epochs", "2", "--batch-size", "4", "--lr", "5e-3",
                 "--report-to", "tensorboard", "--report-dir", str(tmp_path / "tb")]) == 0
    history = json.loads((tmp_path / "reader" / reader_training.TRAIN_READER_CONFIG_FILE).read_text())["history"]
    losses = tensorboard_scalars(tmp_path / "tb")["train/loss"]
    assert [value for _, value in losses] == pytest.approx([record["loss"] for record in history], rel=1e-5)
