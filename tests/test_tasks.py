from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama_index_lvlm_retriever.errors import UsageError
from llama_index_lvlm_retriever.tasks import TaskSpec, get_task, list_tasks


def test_builtins_cover_the_papers_tasks() -> None:
    assert list_tasks() == ["breastmnist", "chestmnist", "closed_vqa", "dermamnist", "retinamnist"]
    retina = get_task("retinamnist")
    assert retina.labels == ("0", "1", "2", "3", "4") and not retina.multi_label
    derma = get_task("dermamnist")
    assert derma.n_labels == 7 and derma.label_index("melanoma") == 4  # MedMNIST index 4 = mel
    breast = get_task("breastmnist")
    # MedMNIST BreastMNIST: index 0 = malignant, answered "yes" to "is it malignant?".
    assert breast.labels == ("malignant", "benign") and breast.verbalizers == ("yes", "no")
    assert get_task("closed_vqa").question == ""
    chest = get_task("chestmnist")
    assert chest.multi_label and chest.n_labels == 14
    assert chest.labels[12] == "pleural_thickening" and chest.verbalizers[12] == "pleural thickening"


def test_get_task_is_case_insensitive_and_reads_json_paths(tmp_path: Path) -> None:
    assert get_task("DermaMNIST") is get_task("dermamnist")
    path = TaskSpec(name="mine", labels=("a", "b"), question="a or b?").to_json(tmp_path / "mine.json")
    assert get_task(str(path)).name == "mine"


def test_get_task_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(KeyError, match="unknown task 'pathmnist'; built-in tasks are .*retinamnist"):
        get_task("pathmnist")


def test_verbalizers_default_to_label_names() -> None:
    task = TaskSpec(name="t", labels=("benign", "malignant"), question="?")
    assert task.verbalizers == ("benign", "malignant") == task.answer_texts


def test_render_question_fills_placeholders_and_prepends_instruction() -> None:
    task = TaskSpec(
        name="t",
        labels=("low", "high"),
        verbalizers=("L", "H"),
        instruction="L = low risk, H = high risk.",
        question="Which risk? Answer {options}.",
    )
    assert task.render_question() == "L = low risk, H = high risk.\nWhich risk? Answer L, H."
    # A case's own question replaces the default one; the instruction stays.
    assert task.render_question("Risk of this one? {options}") == (
        "L = low risk, H = high risk.\nRisk of this one? L, H"
    )


def test_multi_label_question_is_asked_per_label() -> None:
    chest = get_task("chestmnist")
    assert chest.render_question(label_index=1) == "Does this chest X-ray show cardiomegaly? Answer yes or no."
    with pytest.raises(ValueError, match=r"needs label_index in \[0, 14\), got None"):
        chest.render_question()


def test_closed_vqa_needs_the_case_question() -> None:
    vqa = get_task("closed_vqa")
    assert vqa.render_question("Is there a fracture?") == (
        "Answer the question about the image with yes or no.\nIs there a fracture?"
    )
    with pytest.raises(ValueError, match="task 'closed_vqa' has no default question"):
        vqa.render_question("")


def test_label_index_unknown_name() -> None:
    with pytest.raises(KeyError, match=r"'5' is not a label of task 'retinamnist'; labels are \['0'"):
        get_task("retinamnist").label_index("5")


def test_json_round_trip_keeps_every_field(tmp_path: Path) -> None:
    task = TaskSpec(
        name="custom",
        labels=("x_ray_normal", "x_ray_abnormal"),
        verbalizers=("normal", "abnormal"),
        question="Is this normal? {options}",
        instruction="Look carefully.",
        description="demo",
    )
    path = task.to_json(tmp_path / "sub" / "task.json")
    assert json.loads(path.read_text())["verbalizers"] == ["normal", "abnormal"]
    assert TaskSpec.from_json(path) == task
    multi = get_task("chestmnist")
    assert TaskSpec.from_json(multi.to_json(tmp_path / "chest.json")) == multi
    assert not list(tmp_path.glob("**/*.tmp"))  # the atomic write left no temp file


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": ()}, "task 'bad': labels must not be empty"),
        ({"labels": ("a", "b", "a")}, "duplicate labels 'a' at positions 0 and 2"),
        ({"labels": ("a", " ")}, r"labels\[1\] is empty"),
        ({"labels": ("a", "b"), "verbalizers": ()}, "task 'bad': verbalizers must not be empty"),
        ({"labels": ("a", "b"), "verbalizers": ("Yes", "yes ")}, "duplicate verbalizers 'yes ' at positions 0 and 1"),
        ({"labels": ("a", "b"), "verbalizers": ("x",)}, "verbalizers has 1 entries but labels has 2"),
        ({"labels": ("a",)}, "single-label task needs at least 2 labels"),
        ({"labels": ("a", "b"), "question": "is it {label}?"}, r"\{label\} is only meaningful in multi-label"),
        ({"labels": ("a", "b"), "multi_label": True, "question": "any?"}, r"must contain \{label\}"),
        ({"labels": ("a",), "multi_label": True, "yes_verbalizer": "no"}, "duplicate yes/no verbalizers"),
    ],
)
def test_invalid_tasks_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:  # documented type, one line, no pydantic dump
        TaskSpec(name="bad", **kwargs)
    assert str(info.value).startswith("invalid TaskSpec: ") and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "", "labels": ("a", "b")}, r"^invalid TaskSpec: field 'name': String should have at least 1 character \(got ''\)$"),
        ({"name": "t", "labels": "ab"}, r"field 'labels': Input should be a valid tuple \(got 'ab'\)$"),
        ({"name": "t", "labels": ("a", "b"), "multi_label": "perhaps"}, r"field 'multi_label': Input should be a valid boolean"),
        ({"labels": ("a", "b")}, r"missing field 'name' \(required: name, labels\)$"),
        ({"name": "t", "labels": ("a", "b"), "colour": 1}, r"unknown field 'colour' \(known fields: name, labels,"),
    ],
)
def test_bad_task_values_raise_one_line_usage_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        TaskSpec(**kwargs)
    assert "\n" not in str(info.value) and "[type=" not in str(info.value)


def test_from_json_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="task file not found"):
        TaskSpec.from_json(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        TaskSpec.from_json(broken)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"name": "t", "labels": ["a", "b"], "verbaliser": ["x", "y"]}))
    with pytest.raises(ValueError, match=r"invalid task in .*typo.json: unknown field 'verbaliser' \(known fields: name, labels, verbalizers,"):
        TaskSpec.from_json(typo)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"labels": ["a", "b"]}, r"invalid task in .*task.json: missing field 'name' \(required: name, labels\)$"),
        ({"name": "t"}, r"missing field 'labels' \(required: name, labels\)$"),
        ({}, r"missing field 'name' \(required: name, labels\); missing field 'labels'"),
        ({"name": "t", "labels": "ab"}, r"field 'labels': Input should be a valid tuple \(got 'ab'\)$"),
        ({"name": "t", "labels": ["a", "a"]}, r"task 't': duplicate labels 'a' at positions 0 and 1"),
    ],
)
def test_task_file_errors_are_one_line(tmp_path: Path, record: dict, message: str) -> None:
    path = tmp_path / "task.json"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=message) as info:
        TaskSpec.from_json(path)
    text = str(info.value)
    assert "\n" not in text and "pydantic" not in text and "[type=" not in text


def test_tasks_are_immutable() -> None:
    task = get_task("retinamnist")
    with pytest.raises(ValueError, match="frozen"):
        task.labels = ("a", "b")  # type: ignore[misc]
