from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llama_index_lvlm_retriever.data.cases import (
    cases_from_records,
    load_cases_csv,
    load_cases_jsonl,
    write_cases_jsonl,
)
from llama_index_lvlm_retriever.data.records import Case


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_accepts_both_paper_layouts(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "cases.jsonl",
        [
            {"id": "a", "image_path": "img/a.png", "answers": ["2"], "split": "train"},
            {"image_path": "/abs/b.png", "question": "Is there a nodule?", "answer": "yes"},
            {"id": "c", "image_path": "c.png", "answers": 3},
        ],
    )
    cases = load_cases_jsonl(path)
    assert [c.id for c in cases] == ["a", "cases-2", "c"]
    assert cases[0].image_path == str(tmp_path / "img/a.png")
    assert cases[0].labels == ("2",) and cases[0].metadata == {"split": "train"}
    assert cases[1].image_path == "/abs/b.png"
    assert cases[1].question == "Is there a nodule?" and cases[1].label == "yes"
    assert cases[2].labels == ("3",)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    cases = [
        Case(id="x", image_path=str(tmp_path / "x.png"), labels=("1", "4")),
        Case(id="y", image_path=str(tmp_path / "y.png"), question="Malignant?", labels=("no",)),
    ]
    back = load_cases_jsonl(write_cases_jsonl(cases, tmp_path / "out.jsonl"))
    assert back == cases


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"answers": ["1"]}', r"bad\.jsonl:2: record has no 'image_path'"),
        ("{not json", r"bad\.jsonl:2: not valid JSON"),
        ('["a"]', r"bad\.jsonl:2: expected a JSON object"),
    ],
)
def test_jsonl_bad_lines_name_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image_path": "a.png", "answers": "0"}\n' + line + "\n")
    with pytest.raises(ValueError, match=match):
        load_cases_jsonl(path)


def test_jsonl_duplicate_ids(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "image_path": "1.png"}, {"id": "a", "image_path": "2.png"}])
    with pytest.raises(ValueError, match="duplicate case id 'a'"):
        load_cases_jsonl(path)


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="cases file not found"):
        load_cases_jsonl("/nonexistent/cases.jsonl")


def test_csv_loader_single_and_multi_label(tmp_path: Path) -> None:
    csv_path = tmp_path / "cases.csv"
    csv_path.write_text("file,grade,site\nc1.png,2,left\nc2.png,0|3,right\n")
    cases = load_cases_csv(csv_path, tmp_path / "imgs", image_column="file", label_column="grade", label_separator="|")
    assert [c.id for c in cases] == ["c1", "c2"]
    assert cases[0].labels == ("2",) and cases[1].labels == ("0", "3")
    assert cases[0].image_path == str(tmp_path / "imgs" / "c1.png")
    assert cases[1].metadata == {"site": "right"}


def test_csv_missing_column_lists_columns(tmp_path: Path) -> None:
    csv_path = tmp_path / "cases.csv"
    csv_path.write_text("file,grade\nc1.png,2\n")
    with pytest.raises(ValueError, match=r"no column 'label'; the columns are \['file', 'grade'\]"):
        load_cases_csv(csv_path, tmp_path, image_column="file")


def test_records() -> None:
    cases = cases_from_records([{"image_path": "a.png", "label": "yes"}, Case(id="b", image_path="b.png")])
    assert cases[0].id == "case-0" and cases[0].labels == ("yes",)
    assert cases[1].id == "b"
    with pytest.raises(ValueError, match="single-label task needs exactly one"):
        _ = cases[1].label


_JSONL_ROWS = ['{"image_path": "a.png", "answers": "Fibrose"}', '{"image_path": "b.png", "answers": "Ödem"}']
_CSV_ROWS = ["image,label", "a.png,Fibrose", "b.png,Ödem"]
_LOADERS = [
    ("cases.jsonl", _JSONL_ROWS, load_cases_jsonl, 2),
    ("cases.csv", _CSV_ROWS, lambda p: load_cases_csv(p, p.parent), 3),
]


@pytest.mark.parametrize(("name", "rows", "load", "line"), _LOADERS, ids=["jsonl", "csv"])
def test_utf8_bom_is_accepted(tmp_path: Path, name: str, rows: list[str], load, line: int) -> None:
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")  # what Excel and Notepad write
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    cases = load(path)
    assert [c.image_path for c in cases] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert cases[1].labels == ("Ödem",)


@pytest.mark.parametrize(("name", "rows", "load", "line"), _LOADERS, ids=["jsonl", "csv"])
def test_non_utf8_file_names_file_line_and_fix(tmp_path: Path, name: str, rows: list[str], load, line: int) -> None:
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n", encoding="latin-1")  # "Ö" is the single byte 0xd6
    message = rf"{re.escape(str(path))}:{line}: not valid UTF-8 \(byte 0xd6\).*Save it as UTF-8"
    with pytest.raises(ValueError, match=message):
        load(path)
