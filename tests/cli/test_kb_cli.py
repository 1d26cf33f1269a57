"""``lvlm-retriever build-kb / query / info`` end to end on real images and a tiny saved CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from llama_index_lvlm_retriever.cli import main
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.heads import EncoderQueryHead, QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.schemas import load_schema
from llama_index_lvlm_retriever.testing import build_tiny_clip

IDS = ["retina-a", "retina-b", "ihc-a", "ihc-b", "ct-small"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "model")


@pytest.fixture(scope="module")
def other_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip2") / "model", seed=1)


@pytest.fixture(scope="module")
def kb_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kbfiles")
    retina, ihc = skdata.retina(), skdata.immunohistochemistry()
    crops = {
        "retina-a": retina[100:300, 100:300],
        "retina-b": retina[500:700, 400:600],
        "ihc-a": ihc[:160, :160],
        "ihc-b": ihc[300:460, 300:460],
    }
    rows = []
    for item_id, pixels in crops.items():
        Image.fromarray(pixels).save(folder / f"{item_id}.png")
        rows.append({"id": item_id, "image_path": f"{item_id}.png", "text": f"crop {item_id}", "source": "skimage"})
    ct = pydicom.data.get_testdata_file("CT_small.dcm")
    rows.append({"id": "ct-small", "image_path": ct, "text": "small CT slice", "source": "pydicom"})
    path = folder / "kb.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def kb_dir(clip_dir: Path, kb_jsonl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kb") / "kb"
    code = main(["build-kb", "--items", str(kb_jsonl), "--embed-model", str(clip_dir), "--out", str(out), "--batch-size", "2", "--no-progress"])
    assert code == 0
    return out


def _query_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["query", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_build_kb_writes_all_items_and_build_config(kb_dir: Path, clip_dir: Path) -> None:
    items_file = json.loads((kb_dir / "manifest.json").read_text())["files"]["items"]["name"]  # items.<gen>.jsonl
    items = [json.loads(line) for line in (kb_dir / items_file).read_text().splitlines() if line.strip()]
    assert [i["id"] for i in items] == IDS
    assert json.loads((kb_dir / "manifest.json").read_text())["count"] == 5
    config = json.loads((kb_dir / "build_config.json").read_text())
    assert config["encoder_dtype"] == "float32"
    assert config["batch_size"] == 2
    assert config["embed_model"] == str(clip_dir.resolve())


def test_query_json_sorted_and_self_first(kb_dir: Path, kb_jsonl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = kb_jsonl.parent / "ihc-b.png"
    rows = _query_json(capsys, "--kb", str(kb_dir), "--image", str(image), "--k-image", "3", "--k-text", "3", "--head-fusion", "none")
    scores = [r["retrieval_score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert rows[0]["kb_id"] == "ihc-b"
    assert rows[0]["retrieval_score"] == pytest.approx(1.0, abs=1e-4)
    # The neighbour vocabulary of predict and diagnose (metadata_keys), with the pair's own label.
    assert set(rows[0]) == {"kb_id", "kb_label", "source", "head", "retrieval_score", "cosine", "text", "image_path"}
    assert rows[0]["kb_label"] is None  # these pairs have no label
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the test extra) checks the output schema")
    jsonschema.validate(rows, load_schema("query"))
    assert rows[0]["cosine"]["image"] == pytest.approx(1.0, abs=1e-4)  # the raw cosine per head that found it
    assert (rows[0]["text"], rows[0]["source"]) == ("crop ihc-b", "skimage")
    assert Path(rows[0]["image_path"]).name == "ihc-b.png"


def test_query_exclude_self_scores_are_image_cosines(
    kb_dir: Path, kb_jsonl: Path, clip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(kb_jsonl.parent / "ihc-b.png")
    rows = _query_json(capsys, "--kb", str(kb_dir), "--image", image, "--k-image", "4", "--k-text", "4", "--exclude-self", "--head-fusion", "none")
    image_rows = [r for r in rows if "image" in r["head"].split("+")]
    assert "ihc-b" not in [r["kb_id"] for r in rows]
    assert len(image_rows) == 4  # the four other pairs
    # Each image-head hit scores at least its image cosine, computed here independently
    # (a pair also found by the text head keeps its better score).
    embed = CLIPEmbedding.from_pretrained(clip_dir)
    paths = {r["kb_id"]: r["image_path"] for r in image_rows}
    vectors = embed.embed_images([image, *paths.values()])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = dict(zip(paths, (vectors[1:] @ vectors[0]).tolist()))
    for r in image_rows:
        assert r["retrieval_score"] >= cosines[r["kb_id"]] - 1e-4
    image_only = [r for r in image_rows if r["head"] == "image"]
    for r in image_only:
        assert r["retrieval_score"] == pytest.approx(cosines[r["kb_id"]], abs=1e-4)


def test_query_dicom_image_and_text_table(kb_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ct = pydicom.data.get_testdata_file("CT_small.dcm")
    capsys.readouterr()
    assert main(["query", "--kb", str(kb_dir), "--image", ct, "--k-image", "1", "--k-text", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "kb_id", "head", "retrieval_score", "kb_label", "text"]
    assert lines[2].split()[:2] == ["1", "ct-small"]


def test_info_prints_counts_and_encoder(kb_dir: Path, clip_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["info", "--kb", str(kb_dir)]) == 0
    out = capsys.readouterr().out
    assert "items: 5" in out
    assert "dimension: 16" in out
    assert f"encoder: CLIPEmbedding {clip_dir.resolve()} (dtype float32" in out
    assert "source pydicom: 1" in out and "source skimage: 4" in out


@pytest.mark.parametrize("key", ["encoder_dtype", "dtype"])  # "dtype": a KB built before the option was renamed
def test_query_uses_recorded_dtype(
    kb_dir: Path, kb_jsonl: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, key: str
) -> None:
    # A KB whose build_config says bfloat16: query loads the encoder in bfloat16, whose fingerprint
    # differs from the float32 one recorded; the manifest records dtype float32, so the check falls
    # back to the probe embeddings (same model, another dtype) and the query works (issue 12).
    fake = tmp_path / "kb"
    fake.mkdir()
    for f in kb_dir.iterdir():
        (fake / f.name).write_bytes(f.read_bytes())
    config = json.loads((fake / "build_config.json").read_text())
    config.pop("encoder_dtype")
    (fake / "build_config.json").write_text(json.dumps({**config, key: "bfloat16"}))
    image = str(kb_jsonl.parent / "ihc-a.png")
    capsys.readouterr()
    assert main(["query", "--kb", str(fake), "--image", image, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["kb_id"] == "ihc-a"
    # --encoder-dtype overrides the recorded one.
    rows = _query_json(capsys, "--kb", str(fake), "--image", image, "--encoder-dtype", "float32")
    assert rows[0]["kb_id"] == "ihc-a"


def test_truncated_file_fails_naming_it_or_is_skipped(
    clip_dir: Path, kb_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = (kb_jsonl.parent / "retina-a.png").read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(png[: len(png) // 3])
    rows = [json.loads(line) for line in kb_jsonl.read_text().splitlines()]
    for r in rows:
        if not Path(r["image_path"]).is_absolute():
            r["image_path"] = str(kb_jsonl.parent / r["image_path"])
    rows.append({"id": "broken", "image_path": str(broken), "text": "truncated"})
    items = tmp_path / "kb.jsonl"
    items.write_text("\n".join(json.dumps(r) for r in rows))
    base = ["build-kb", "--items", str(items), "--embed-model", str(clip_dir), "--no-progress"]

    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "kb1")]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err
    assert not (tmp_path / "kb1").exists()

    assert main([*base, "--out", str(tmp_path / "kb2"), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "built 5 items" in out
    assert "skipped broken:" in out
    assert "skipped 1 of 6 items" in out


def test_config_supplies_defaults_and_flags_override(
    clip_dir: Path, kb_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "build.json"
    config.write_text(json.dumps({"items": str(kb_jsonl), "embed_model": str(clip_dir), "batch_size": 3, "out": str(tmp_path / "from_config")}))
    assert main(["build-kb", "--config", str(config), "--batch-size", "4", "--no-progress"]) == 0
    recorded = json.loads((tmp_path / "from_config" / "build_config.json").read_text())
    assert recorded["batch_size"] == 4  # flag wins
    assert recorded["items"] == str(kb_jsonl)  # from the config

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"top_kk": 3}))
    capsys.readouterr()
    assert main(["query", "--config", str(bad), "--kb", "x", "--image", "y"]) == 2
    assert "unknown option(s) ['top_kk']" in capsys.readouterr().err


def test_missing_model_path_errors_clearly(kb_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_model"
    capsys.readouterr()
    code = main(["build-kb", "--items", str(kb_jsonl), "--embed-model", str(missing), "--out", str(tmp_path / "kb")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model directory not found")
    assert str(missing) in err


def test_query_with_other_encoder_errors_clearly(
    kb_dir: Path, kb_jsonl: Path, other_clip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code = main(["query", "--kb", str(kb_dir), "--image", str(kb_jsonl.parent / "ihc-a.png"), "--embed-model", str(other_clip_dir)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"knowledge base {kb_dir} was built with" in err
    assert "rebuild the knowledge base" in err


def test_bad_top_k_is_a_usage_error(kb_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["query", "--kb", str(kb_dir), "--image", "x.png", "--k-image", "-1"]) == 2
    assert "--k-image must be >= 0, got -1" in capsys.readouterr().err


def test_help_explains_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["query", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--exclude-self", "--json", "--k-image", "--k-text", "--head-fusion", "--encoder-dtype", "--config", "--heads"):
        assert option in out
    assert "build_config.json" in out


def _heads_folder(folder: Path, image_head: torch.nn.Module, dim: int = 16) -> Path:
    """A folder laid out as ``RetrieverFinetuneEngine.save`` writes it (image_head/, text_head/)."""
    image_head.save_pretrained(folder / "image_head")
    QueryHead.identity(dim).save_pretrained(folder / "text_head")
    return folder


@pytest.fixture(scope="module")
def linear_heads_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    head = QueryHead(QueryHeadConfig(dim=16, kind="linear"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in head.parameters():
            param.add_(torch.randn(param.shape, generator=generator))  # move it away from the identity
    return _heads_folder(tmp_path_factory.mktemp("heads") / "linear", head)


def test_query_heads_folder_loads_both_heads(
    kb_dir: Path, kb_jsonl: Path, linear_heads_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query = ["--kb", str(kb_dir), "--image", str(kb_jsonl.parent / "retina-a.png"), "--k-image", "4", "--k-text", "4"]
    with_heads = _query_json(capsys, *query, "--heads", str(linear_heads_dir))
    separate = _query_json(
        capsys, *query,
        "--image-head", str(linear_heads_dir / "image_head"), "--text-head", str(linear_heads_dir / "text_head"),
    )
    standard = _query_json(capsys, *query)
    assert with_heads == separate
    assert with_heads != standard  # the trained image head changes the scores


def test_query_heads_folder_with_encoder_head(
    kb_dir: Path, kb_jsonl: Path, clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fresh encoder-mode head is a copy of the frozen tower: it must load from the folder, read the
    # query image, and reproduce standard RAG.
    head = EncoderQueryHead.from_embedding(CLIPEmbedding.from_pretrained(clip_dir))
    heads = _heads_folder(tmp_path / "encoder", head)
    query = ["--kb", str(kb_dir), "--image", str(kb_jsonl.parent / "ihc-a.png"), "--k-image", "3", "--k-text", "3"]
    with_heads = _query_json(capsys, *query, "--heads", str(heads))
    standard = _query_json(capsys, *query)
    assert [r["kb_id"] for r in with_heads] == [r["kb_id"] for r in standard]
    assert [r["retrieval_score"] for r in with_heads] == pytest.approx([r["retrieval_score"] for r in standard], abs=1e-4)


def test_query_heads_folder_errors(
    kb_dir: Path, linear_heads_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["query", "--kb", str(kb_dir), "--image", "x.png", "--heads", str(tmp_path / "missing")]) == 2
    assert "--heads" in (err := capsys.readouterr().err) and "folder not found" in err
    (tmp_path / "half" / "image_head").mkdir(parents=True)
    assert main(["query", "--kb", str(kb_dir), "--image", "x.png", "--heads", str(tmp_path / "half")]) == 2
    assert "no text_head/ inside" in capsys.readouterr().err
    code = main([
        "query", "--kb", str(kb_dir), "--image", "x.png",
        "--heads", str(linear_heads_dir), "--image-head", str(linear_heads_dir / "image_head"),
    ])
    assert code == 2
    assert "drop --image-head/--text-head" in capsys.readouterr().err


def test_query_refuses_heads_of_another_kb_unless_allowed(
    kb_dir: Path, kb_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from types import SimpleNamespace

    from llama_index_lvlm_retriever.heads.kb_match import knowledge_base_record

    other = SimpleNamespace(items=[SimpleNamespace(id=i) for i in ("x1", "x2", "retina-a")], dim=16)
    head = QueryHead(QueryHeadConfig(dim=16, kind="linear"))
    head.trained_on = {"knowledge_base": knowledge_base_record(other)}
    heads = _heads_folder(tmp_path / "other-kb-heads", head)
    query = ["query", "--kb", str(kb_dir), "--image", str(kb_jsonl.parent / "retina-a.png"), "--heads", str(heads)]
    capsys.readouterr()
    assert main(query) == 1
    err = capsys.readouterr().err
    assert "image_head was trained on the knowledge base of 3 items" in err and "20.0% of items shared" in err
    assert "--allow-other-kb" in err
    assert main([*query, "--allow-other-kb", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) >= 1


# ---------------------------------------------------------------------------- vector backends, live updates
def _build(kb_jsonl: Path, clip_dir: Path, out: Path, *extra: str) -> int:
    return main(["build-kb", "--items", str(kb_jsonl), "--embed-model", str(clip_dir), "--out", str(out), "--batch-size", "4", "--no-progress", *extra])


@pytest.mark.parametrize("backend", ["milvus", "qdrant", "faiss"])
def test_build_on_a_backend_then_query_add_delete(
    backend: str, kb_jsonl: Path, clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pymilvus")
    out = tmp_path / "kb"
    options = {"milvus": ["--uri", str(out / "kb.db")], "qdrant": [], "faiss": []}[backend]
    assert _build(kb_jsonl, clip_dir, out, "--backend", backend, *options) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"]["name"] == backend
    if backend == "milvus":
        assert manifest["backend"]["uri"] == "kb.db"  # relative: the folder can move
    image = kb_jsonl.parent / "ihc-b.png"
    rows = _query_json(capsys, "--kb", str(out), "--image", str(image), "--k-image", "2", "--k-text", "0")
    assert [r["kb_id"] for r in rows][0] == "ihc-b"
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "retina-c", "image_path": str(kb_jsonl.parent / "retina-a.png"), "text": "again"}) + "\n")
    assert main(["kb", "add", "--kb", str(out), "--items", str(more), "--no-progress"]) == 0
    assert main(["kb", "add", "--kb", str(out), "--items", str(more), "--no-progress"]) == 1  # the id exists
    assert "1 id(s) already in the KB" in capsys.readouterr().err
    assert main(["kb", "add", "--kb", str(out), "--items", str(more), "--upsert", "--no-progress"]) == 0
    assert main(["kb", "delete", "--kb", str(out), "--ids", "ihc-b", "nope"]) == 1  # a data error, as the add above
    assert "no knowledge-base item with id 'nope'" in capsys.readouterr().err
    assert main(["kb", "delete", "--kb", str(out), "--ids", "ihc-b"]) == 0
    rows = _query_json(capsys, "--kb", str(out), "--image", str(image), "--k-image", "5", "--k-text", "0")
    assert "ihc-b" not in [r["kb_id"] for r in rows] and "retina-c" in [r["kb_id"] for r in rows]
    assert (out / "build_config.json").is_file()  # kept across the updates' rewrites
    capsys.readouterr()
    assert main(["info", "--kb", str(out)]) == 0
    assert f"backend: {backend}" in capsys.readouterr().out


def test_backend_options_are_checked(kb_jsonl: Path, clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _build(kb_jsonl, clip_dir, tmp_path / "kb", "--backend", "faiss", "--uri", "x.db") == 2
    assert "--uri does not apply to --backend faiss" in capsys.readouterr().err
    assert _build(kb_jsonl, clip_dir, tmp_path / "kb", "--backend", "qdrant", "--path", "q", "--url", "http://q:6333") == 2
    assert "pass one of --path" in capsys.readouterr().err


def test_collect_train_evaluate_on_a_milvus_kb(tmp_path: Path) -> None:
    """The offline recipe's steps after build-kb run unchanged on a Milvus Lite knowledge base."""
    pytest.importorskip("pymilvus")
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_offline_recipe", Path(__file__).resolve().parents[2] / "training" / "run_offline_recipe.py")
    assert spec is not None and spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    root = recipe.prepare_workdir(tmp_path, n_kb=12, n_train=3, n_test=3)
    common = {"no_progress": True}
    recipe.run_command("build-kb", {**common, "items": str(root / "data" / "kb.jsonl"), "embed_model": str(root / "models" / "clip"), "out": str(root / "kb"), "backend": "milvus", "uri": str(root / "kb" / "kb.db")}, root / "1.json")
    steps = {
        "collect-feedback": {"kb": str(root / "kb"), "cases": str(root / "data" / "train.jsonl"), "reader": str(root / "models" / "reader"), "task": str(root / "data" / "task.json"), "n_candidates": 4, "k_image": 2, "k_text": 2, "out": str(root / "feedback")},
        "train-retriever": {"kb": str(root / "kb"), "feedback": str(root / "feedback"), "steps": 3, "batch_size": 2, "validation_fraction": 0.0, "out": str(root / "heads")},
        "evaluate": {"kb": str(root / "kb"), "cases": str(root / "data" / "test.jsonl"), "reader": str(root / "models" / "reader"), "task": str(root / "data" / "task.json"), "system": [f"LVLM-aware={root / 'heads'}"], "bootstrap": 10, "out": str(root / "eval")},
    }
    for i, (command, options) in enumerate(steps.items()):
        recipe.run_command(command, {**common, **options}, root / f"{i + 2}.json")
    assert (root / "heads" / "image_head").is_dir()
    assert any((root / "eval").iterdir())
