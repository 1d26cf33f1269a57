"""The JSON Schemas shipped in the package: valid, complete, named in the one output vocabulary.

The outputs themselves are validated against them where they are produced (tests/evaluation/
test_predict.py, test_report.py; tests/cli/test_diagnose.py, test_kb_cli.py).
"""

from __future__ import annotations

import pytest

from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.schemas import SCHEMA_NAMES, load_schema, schema_path

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the test extra) validates the schemas")

_NEIGHBOUR_KEYS = {
    keys.NEIGHBOUR_KB_ID, keys.NEIGHBOUR_KB_LABEL, keys.NEIGHBOUR_HEAD, keys.NEIGHBOUR_RETRIEVAL_SCORE,
    keys.NEIGHBOUR_TEXT, keys.NEIGHBOUR_IMAGE_PATH,
}
_READ_KEYS = {keys.NEIGHBOUR_PREDICTION, keys.NEIGHBOUR_PROBABILITY}
_CASE_KEYS = {keys.CASE_ID, keys.IMAGE_PATH, keys.QUESTION}
_ANSWER_KEYS = set(keys.RESPONSE_KEYS) - {keys.NEIGHBOURS}


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_schema_is_a_valid_draft_2020_12_schema_in_the_package(name: str) -> None:
    path = schema_path(name)
    assert path.is_file() and path.parent.name == "schemas" and path.parent.parent.name == "llama_index_lvlm_retriever"
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == f"{name}.schema.json"


def test_predictions_and_diagnose_share_the_answer_and_neighbour_names() -> None:
    predictions, diagnose = load_schema("predictions"), load_schema("diagnose")
    assert set(predictions["required"]) == _CASE_KEYS | _ANSWER_KEYS | {keys.GOLD, keys.CORRECT, keys.ERROR, keys.NEIGHBOURS}
    assert set(diagnose["required"]) == _CASE_KEYS | _ANSWER_KEYS | {keys.NEIGHBOURS, "response"}
    neighbour = predictions["properties"][keys.NEIGHBOURS]["items"]
    assert set(neighbour["required"]) == _NEIGHBOUR_KEYS | _READ_KEYS
    assert set(diagnose["properties"][keys.NEIGHBOURS]["items"]["required"]) == (
        _NEIGHBOUR_KEYS | _READ_KEYS | {keys.NEIGHBOUR_RERANK_SCORE, keys.NEIGHBOUR_COSINE, keys.NEIGHBOUR_SOURCE}
    )
    assert set(load_schema("query")["items"]["required"]) == (
        _NEIGHBOUR_KEYS | {keys.NEIGHBOUR_COSINE, keys.NEIGHBOUR_SOURCE}
    )


def test_csv_and_evaluation_rows_use_the_same_names() -> None:
    csv_schema = load_schema("predictions_csv")
    assert set(csv_schema["required"]) == (
        _CASE_KEYS | _ANSWER_KEYS | {keys.GOLD, keys.CORRECT, keys.ERROR}
    ) - {keys.DISTRIBUTION}
    validator = jsonschema.Draft202012Validator(csv_schema)
    row = {key: "" for key in csv_schema["required"]}
    assert validator.is_valid({**row, "neighbour1_kb_id": "kb3", "neighbour12_prediction": "yes"})
    assert not validator.is_valid({**row, "neighbour1_id": "kb3"})  # the old column name
    evaluation = load_schema("evaluation_row")
    assert (_ANSWER_KEYS - {keys.ABSTAIN}) | {keys.CASE_ID, keys.GOLD, keys.CORRECT} <= set(evaluation["required"])
    assert {f"neighbour_{key}s" for key in (keys.NEIGHBOUR_KB_ID, keys.NEIGHBOUR_KB_LABEL, keys.NEIGHBOUR_HEAD,
                                              keys.NEIGHBOUR_RETRIEVAL_SCORE, keys.NEIGHBOUR_PREDICTION)} <= set(evaluation["required"])


def test_a_row_with_an_old_field_name_fails_validation() -> None:
    neighbour = {"kb_id": "kb1", "kb_label": "yes", "head": "image", "retrieval_score": 0.9, "text": "t",
                 "image_path": None, "prediction": "yes", "probability": 0.8}
    row = {"case_id": "c", "image_path": "q.png", "question": "", "gold": None, "correct": None, "error": None,
           "answer": "yes", "probability": 0.8, "distribution": {"yes": 0.8, "no": 0.2}, "support": 1.0,
           "weighted_support": 1.0, "consistent": True, "agreement": 1.0, "vote_entropy": 0.0, "n_distinct": 1,
           "abstain": False, "neighbours": [neighbour]}
    schema = load_schema("predictions")
    jsonschema.validate(row, schema)
    renamed = {("label" if key == "answer" else key): value for key, value in row.items()}
    with pytest.raises(jsonschema.ValidationError, match="'answer' is a required property"):
        jsonschema.validate(renamed, schema)


def test_unknown_schema_name_raises() -> None:
    with pytest.raises(KeyError, match=r"no schema named 'predict'; the package ships \['predictions'"):
        schema_path("predict")
