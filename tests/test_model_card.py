"""write_model_card: README.md with a Hugging Face metadata header next to a saved model."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from llama_index_lvlm_retriever.heads import QueryHead, QueryHeadConfig, load_head
from llama_index_lvlm_retriever.outputs.model_card import write_model_card
from llama_index_lvlm_retriever.tasks import get_task


def test_head_card_has_the_hub_header(tmp_path: Path) -> None:
    folder = QueryHead(QueryHeadConfig(dim=8, kind="linear")).save_pretrained(tmp_path / "image_head")
    path = write_model_card(
        folder,
        kind="query-head",
        base_model="openai/clip-vit-base-patch16",
        task=get_task("retinamnist"),
        datasets=["albertvillanova/medmnist-v2"],
        training={"loss": "posterior_kl", "optim": {"lr": 1e-3, "steps": 200}},
        validation={"accuracy": 0.7125, "inconsistent_rate": 0.11},
        license="mit",
    )
    assert path == folder / "README.md"
    card = ModelCard.load(path)  # the Hub's own parser
    data = card.data.to_dict()
    assert data["base_model"] == "openai/clip-vit-base-patch16"
    assert data["pipeline_tag"] == "image-feature-extraction" and data["library_name"] == "llama-index-lvlm-retriever"
    assert data["datasets"] == ["albertvillanova/medmnist-v2"] and data["license"] == "mit"
    assert {"query-head", "medical-imaging"} <= set(data["tags"])
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"accuracy": 0.7125, "inconsistent_rate": 0.11}
    text = card.text
    assert "| optim.lr | 0.001 |" in text and "| accuracy | 0.7125 |" in text
    assert "`retinamnist`" in text and "Not a medical device" in text and "load_head(" in text
    load_head(folder)  # the card does not disturb loading


def test_reader_card_without_results(tmp_path: Path) -> None:
    path = write_model_card(tmp_path / "reader", kind="reader", base_model="Qwen/Qwen2-VL-2B-Instruct", notes="Data: CC BY 4.0.")
    card = ModelCard.load(path)
    assert card.data.pipeline_tag == "image-text-to-text" and not card.data.eval_results
    assert "HFLVLMReader.from_pretrained" in card.text and card.text.rstrip().endswith("Data: CC BY 4.0.")


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of \\['query-head', 'reader'\\], got 'head'"):
        write_model_card(tmp_path, kind="head", base_model=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="validation\\['accuracy'\\] must be a finite number, got nan"):
        write_model_card(tmp_path, kind="reader", base_model=None, validation={"accuracy": float("nan")})
