"""Knowledge-base loaders: JSONL, CSV + image folder, MedMNIST .npz and plain Python records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llama_index_lvlm_retriever.data import loaders
from llama_index_lvlm_retriever.data.loaders import (
    kb_items_from_records,
    load_kb_csv,
    load_kb_jsonl,
    load_medmnist_npz,
)
from llama_index_lvlm_retriever.data.records import KBItem


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- JSONL
def test_jsonl_fields_metadata_relative_paths_and_line_ids(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "kb.jsonl",
        [
            json.dumps(
                {"image_path": "img/a.png", "text": "Cardiomegaly.", "id": "a", "source": "roco",
                 "label": "abnormal", "modality": "xray", "metadata": {"year": 2020}}
            ),
            "",
            json.dumps({"image_path": "/data/b.png", "text": "No acute findings.", "label": 3}),
        ],
    )
    first, second = load_kb_jsonl(path)
    assert first == KBItem(
        id="a", image_path=str(tmp_path / "img" / "a.png"), text="Cardiomegaly.", source="roco",
        label="abnormal", metadata={"year": 2020, "modality": "xray"},
    )
    # No id: "<stem>-<line number>" (line 3: the blank line 2 still counts).
    assert second == KBItem(id="kb-3", image_path="/data/b.png", text="No acute findings.", label="3")


def test_jsonl_reads_back_what_to_dict_writes(tmp_path: Path) -> None:
    items = [
        KBItem(id="x1", image_path=str(tmp_path / "x1.png"), text="t", source="s", label="L", metadata={"k": [1, 2]}),
        KBItem(id="x2", image_path=str(tmp_path / "x2.png"), text="u"),
    ]
    path = _write_lines(tmp_path / "items.jsonl", [json.dumps(it.to_dict()) for it in items])
    assert load_kb_jsonl(path) == items


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([json.dumps({"image_path": "a.png"}), json.dumps({"text": "no image"})], r"kb\.jsonl:2: record has no 'image_path'"),
        ([json.dumps({"image_path": "a.png"}), "{not json"], r"kb\.jsonl:2: not valid JSON"),
        (["[1, 2]"], r"kb\.jsonl:1: expected a JSON object, got list"),
        ([json.dumps({"image_path": "a.png", "text": 5})], r"kb\.jsonl:1: 'text' must be a string, got int"),
        ([json.dumps({"image_path": "a.png", "label": ["a", "b"]})], r"kb\.jsonl:1: 'label' must be a single string"),
        (
            [json.dumps({"image_path": "a.png", "id": "p"}), json.dumps({"image_path": "b.png"}),
             json.dumps({"image_path": "c.png", "id": "p"})],
            r"duplicate id 'p' at line 3 \(first seen at line 1\)",
        ),
        (
            # An explicit id may not collide with the id generated for another line.
            [json.dumps({"image_path": "a.png"}), json.dumps({"image_path": "b.png", "id": "kb-1"})],
            r"duplicate id 'kb-1' at line 2",
        ),
    ],
)
def test_jsonl_bad_lines_name_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = _write_lines(tmp_path / "kb.jsonl", lines)
    with pytest.raises(ValueError, match=message):
        load_kb_jsonl(path)


def test_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="knowledge-base JSONL not found: .*nope.jsonl"):
        load_kb_jsonl(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------- CSV
def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_csv_columns_metadata_labels_and_row_ids(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "pairs.csv",
        ["image,caption,finding,site", "a.png,Left effusion.,effusion,A", '"sub/b.png","Clear, no effusion.",,B'],
    )
    items = load_kb_csv(path, tmp_path / "images", text_column="caption", label_column="finding")
    assert items == [
        KBItem(id="pairs-1", image_path=str(tmp_path / "images" / "a.png"), text="Left effusion.",
               source="pairs", label="effusion", metadata={"site": "A"}),
        KBItem(id="pairs-2", image_path=str(tmp_path / "images" / "sub" / "b.png"), text="Clear, no effusion.",
               source="pairs", label=None, metadata={"site": "B"}),
    ]


def test_csv_id_column_source_and_default_image_dir(tmp_path: Path) -> None:
    path = _csv(tmp_path / "pairs.csv", ["uid,image,text", "u7,a.png,cap"])
    (item,) = load_kb_csv(path, None, id_column="uid", source="mimic")
    assert (item.id, item.source, item.image_path, item.metadata) == ("u7", "mimic", str(tmp_path / "a.png"), {})


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        (["image,caption", "a.png,x"], {},
         re.escape("no column 'text' (from text_column=); available columns: ['image', 'caption']")),
        (["img,text", "a.png,x"], {}, re.escape("no column 'image' (from image_column=); available columns: ['img', 'text']")),
        (["image,text", "a.png,x"], {"label_column": "dx"}, r"no column 'dx' \(from label_column=\)"),
        (["image,text", "a.png,x", ",y"], {}, r"pairs\.csv row 2: empty 'image' cell"),
        (["uid,image,text", "u1,a.png,x", "u1,b.png,y"], {"id_column": "uid"}, r"duplicate id 'u1' at row 2 \(first seen at row 1\)"),
    ],
)
def test_csv_errors(tmp_path: Path, rows: list[str], kwargs: dict, message: str) -> None:
    path = _csv(tmp_path / "pairs.csv", rows)
    with pytest.raises(ValueError, match=message):
        load_kb_csv(path, tmp_path, **kwargs)


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="knowledge-base CSV not found"):
        load_kb_csv(tmp_path / "none.csv", tmp_path)


# ---------------------------------------------------------------------------- MedMNIST
NAMES = ["adipose", "background", "debris"]


@pytest.fixture()
def npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "toymnist.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 256, (4, 6, 7), dtype=np.uint8),  # grey (n, h, w)
        train_labels=np.array([[2], [0], [1], [2]], dtype=np.uint8),
        val_images=rng.integers(0, 256, (2, 6, 7, 3), dtype=np.uint8),  # RGB (n, h, w, 3)
        val_labels=np.array([[1], [0]]),
        test_images=rng.integers(0, 256, (3, 5, 5), dtype=np.uint8),
        test_labels=np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]]),  # multi-label (n, L)
    )
    return path


def test_medmnist_single_label_grey(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "png"
    items = load_medmnist_npz(
        npz, split="train", image_dir=out, label_names=NAMES, caption_template="A patch of {label_name} ({label})."
    )
    with np.load(npz) as data:
        images = data["train_images"]
    assert [it.id for it in items] == ["toymnist-train-0", "toymnist-train-1", "toymnist-train-2", "toymnist-train-3"]
    assert [it.label for it in items] == ["debris", "adipose", "background", "debris"]
    assert items[0].text == "A patch of debris (2)."
    assert items[1].metadata == {"split": "train", "index": 1, "label_index": 0}
    assert {it.source for it in items} == {"medmnist"}
    for i, item in enumerate(items):
        assert item.image_path == str(out / f"toymnist_train_{i:06d}.png")
        with Image.open(item.image_path) as img:
            assert img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), images[i])


def test_medmnist_rgb_split_dict_names_limit(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "png"
    items = load_medmnist_npz(npz, split="val", image_dir=out, label_names={"0": "tumour", "1": "stroma"}, limit=1, source="path")
    assert [(it.id, it.label, it.text, it.source) for it in items] == [("toymnist-val-0", "stroma", "stroma", "path")]
    assert sorted(p.name for p in out.iterdir()) == ["toymnist_val_000000.png"]
    with np.load(npz) as data, Image.open(items[0].image_path) as img:
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), data["val_images"][0])


def test_medmnist_multi_label_and_index_names(npz: Path, tmp_path: Path) -> None:
    items = load_medmnist_npz(npz, split="test", image_dir=tmp_path / "png", label_names=NAMES, caption_template="Findings: {label_name}.")
    assert [it.text for it in items] == ["Findings: adipose, debris.", "Findings: none.", "Findings: background."]
    assert [it.label for it in items] == [None, None, None]
    assert items[0].metadata == {"split": "test", "index": 0, "label_index": [0, 2], "labels": ["adipose", "debris"]}
    # Without names, classes are named by their index.
    plain = load_medmnist_npz(npz, split="train", image_dir=tmp_path / "png2")
    assert [it.label for it in plain] == ["2", "0", "1", "2"]


def test_medmnist_rerun_skips_identical_files_and_rewrites_changed_ones(
    npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "png"
    first = load_medmnist_npz(npz, split="train", image_dir=out)
    writes: list[Path] = []
    real_write = loaders._write_png_atomic

    def counting_write(path: Path, pixels: np.ndarray) -> None:
        writes.append(path)
        real_write(path, pixels)

    monkeypatch.setattr(loaders, "_write_png_atomic", counting_write)
    assert load_medmnist_npz(npz, split="train", image_dir=out) == first
    assert writes == []
    Image.new("L", (7, 6), 0).save(first[2].image_path)  # same size, other pixels
    load_medmnist_npz(npz, split="train", image_dir=out)
    assert writes == [Path(first[2].image_path)]
    with np.load(npz) as data, Image.open(first[2].image_path) as img:
        np.testing.assert_array_equal(np.asarray(img), data["train_images"][2])


def test_medmnist_errors(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "png"
    with pytest.raises(ValueError, match=re.escape("split 'valid' needs arrays 'valid_images' and 'valid_labels'; the file has ['test_images'")):
        load_medmnist_npz(npz, split="valid", image_dir=out)
    with pytest.raises(ValueError, match="sample 0: label index 2 has no name in label_names"):
        load_medmnist_npz(npz, split="train", image_dir=out, label_names=["a", "b"])
    with pytest.raises(ValueError, match="available placeholders: {label_name}"):
        load_medmnist_npz(npz, split="train", image_dir=out, caption_template="{diagnosis}")
    with pytest.raises(ValueError, match="limit must be >= 0"):
        load_medmnist_npz(npz, image_dir=out, limit=-1)
    with pytest.raises(FileNotFoundError, match="MedMNIST file not found"):
        load_medmnist_npz(tmp_path / "none.npz", image_dir=out)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"train_images": np.zeros((2, 4, 4), np.float32), "train_labels": np.zeros((2, 1))}, "must be uint8 pixels, got float32"),
        ({"train_images": np.zeros((2, 4, 4, 4), np.uint8), "train_labels": np.zeros((2, 1))}, "3-D MedMNIST volumes are not supported"),
        ({"train_images": np.zeros((2, 4, 4), np.uint8), "train_labels": np.zeros((3, 1))}, r"must have shape \(n, 1\) or \(n, L\) with n = 2"),
    ],
)
def test_medmnist_bad_arrays(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_medmnist_npz(path, image_dir=tmp_path / "png")


def test_medmnist_never_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, train_images=np.array([object()], dtype=object), train_labels=np.zeros((1, 1)))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_medmnist_npz(path, image_dir=tmp_path / "png")


# ---------------------------------------------------------------------------- records
def test_records_dicts_and_items(tmp_path: Path) -> None:
    ready = KBItem(id="b", image_path="/x/b.png", text="no acute findings")
    items = kb_items_from_records(
        [{"id": "a", "image_path": "a.png", "text": "cardiomegaly", "view": "PA"}, ready, {"image": "c.png"}],
        base_dir=tmp_path,
        default_source="demo",
    )
    assert items == [
        KBItem(id="a", image_path=str(tmp_path / "a.png"), text="cardiomegaly", source="demo", metadata={"view": "PA"}),
        ready,
        KBItem(id="record-2", image_path=str(tmp_path / "c.png"), text="", source="demo"),
    ]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"image_path": "a.png"}, {"text": "t"}], "record 1: record has no 'image_path'"),
        ([{"image_path": "a.png", "id": "d"}, KBItem(id="d", image_path="b.png", text="")], r"duplicate id 'd' at record 1 \(first seen at record 0\)"),
        ([("a.png", "text")], "record 0: expected a dict or a KBItem, got tuple"),
        ([{"image_path": 3}], "record 0: 'image_path' must be a path string, got int"),
        ([{"image_path": "a.png", "metadata": [1]}], "record 0: 'metadata' must be a JSON object"),
    ],
)
def test_records_errors(records: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kb_items_from_records(records)


# ---------------------------------------------------------------------------- encodings
_JSONL_ROWS = ['{"image_path": "a.png", "text": "Fibrose"}', '{"image_path": "b.png", "text": "Befund: Ödem"}']
_CSV_ROWS = ["image,text", "a.png,Fibrose", "b.png,Befund: Ödem"]


@pytest.mark.parametrize(
    ("name", "rows", "load"),
    [
        ("kb.jsonl", _JSONL_ROWS, load_kb_jsonl),
        ("kb.csv", _CSV_ROWS, lambda p: load_kb_csv(p, None)),
    ],
    ids=["jsonl", "csv"],
)
def test_utf8_bom_is_accepted(tmp_path: Path, name: str, rows: list[str], load) -> None:
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")  # what Excel and Notepad write
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    items = load(path)
    assert [i.image_path for i in items] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert items[1].text == "Befund: Ödem"


@pytest.mark.parametrize(
    ("name", "rows", "load", "line"),
    [
        ("kb.jsonl", _JSONL_ROWS, load_kb_jsonl, 2),
        ("kb.csv", _CSV_ROWS, lambda p: load_kb_csv(p, None), 3),
    ],
    ids=["jsonl", "csv"],
)
def test_non_utf8_file_names_file_line_and_fix(tmp_path: Path, name: str, rows: list[str], load, line: int) -> None:
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n", encoding="latin-1")  # "Ö" is the single byte 0xd6
    message = rf"{re.escape(str(path))}:{line}: not valid UTF-8 \(byte 0xd6\).*Save it as UTF-8"
    with pytest.raises(ValueError, match=message):
        load(path)
