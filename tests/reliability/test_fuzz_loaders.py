"""Fuzzing the loaders (issue 12, item 5): any input loads or raises the documented error, nothing else.

Each loader gets arbitrary bytes and, more usefully, structured near-misses (valid JSON of the
wrong shape, CSV rows with missing or extra cells, manifests with fields of every JSON type). The
documented outcome: a result, a :class:`~llama_index_lvlm_retriever.errors.DataError` (the file is
malformed), or ``FileNotFoundError`` where the input names a file that does not exist. Anything
else (``KeyError``, ``AttributeError``, ``TypeError``, a bare ``UnicodeDecodeError``) fails the
test with the input hypothesis found.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from llama_index_lvlm_retriever.data.cases import load_cases_csv, load_cases_jsonl
from llama_index_lvlm_retriever.data.images import load_image
from llama_index_lvlm_retriever.data.loaders import load_kb_csv, load_kb_jsonl
from llama_index_lvlm_retriever.errors import DataError
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.tasks import TaskSpec
from llama_index_lvlm_retriever.training.feedback import FeedbackCache

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
# Keys the loaders look for, so records hit their field checks, not only "unknown key" paths.
record_keys = st.sampled_from(["id", "image_path", "image", "text", "source", "label", "metadata", "answers", "labels", "question", "x"])
records = st.dictionaries(record_keys, json_values, max_size=6)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fuzz-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _outcome(load: Callable[[], Any]) -> None:
    try:
        load()
    except (DataError, FileNotFoundError):
        pass


def _jsonl_bytes(lines: list[Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8")


@FUZZ
@given(data=st.binary(max_size=200) | st.lists(records | json_values, max_size=4).map(_jsonl_bytes))
def test_kb_and_cases_jsonl(folder: Path, data: bytes) -> None:
    path = folder / "items.jsonl"
    path.write_bytes(data)
    _outcome(lambda: load_kb_jsonl(path))
    _outcome(lambda: load_cases_jsonl(path))


cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10)


def _csv_bytes(rows: list[list[str]], bom: bool) -> bytes:
    buf = io.StringIO()
    import csv

    csv.writer(buf).writerows(rows)
    return (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8")


header = st.lists(st.sampled_from(["image", "image_path", "text", "label", "answers", "id", "labels"]) | cells, max_size=4)


@FUZZ
@given(
    data=st.binary(max_size=200)
    | st.builds(_csv_bytes, st.tuples(header).map(list) | st.lists(st.lists(cells, max_size=4), max_size=4), st.booleans())
    | st.builds(lambda h, rows, bom: _csv_bytes([h, *rows], bom), header, st.lists(st.lists(cells, max_size=5), max_size=3), st.booleans())
)
def test_kb_and_cases_csv(folder: Path, data: bytes) -> None:
    path = folder / "items.csv"
    path.write_bytes(data)
    _outcome(lambda: load_kb_csv(path, folder))
    _outcome(lambda: load_cases_csv(path, folder))


task_records = st.fixed_dictionaries(
    {},
    optional={
        "name": json_values | st.text(max_size=8),
        "labels": json_values | st.lists(st.text(max_size=4), max_size=4),
        "question": json_values,
        "verbalizers": json_values,
        "multi_label": json_values,
    },
)


@FUZZ
@given(data=st.binary(max_size=120) | task_records.map(lambda r: json.dumps(r).encode()) | json_values.map(lambda v: json.dumps(v).encode()))
def test_task_spec_json(folder: Path, data: bytes) -> None:
    path = folder / "task.json"
    path.write_bytes(data)
    _outcome(lambda: TaskSpec.from_json(path))


@pytest.fixture(scope="module")
def persisted(folder: Path, stubs: Any, world: Any) -> dict[str, Path]:
    from llama_index_lvlm_retriever.training.feedback import FeedbackConfig, collect_feedback

    kb_dir = folder / "kb"
    stubs.build_kb(folder / "kb-images").persist(kb_dir)
    cases, retriever = world
    fb_dir = folder / "feedback"
    collect_feedback(cases, retriever, stubs.FixedReader(), fb_dir, FeedbackConfig(n_candidates=2, shard_size=1), show_progress=False)
    return {"kb": kb_dir, "feedback": fb_dir}


def _mutate(manifest: dict[str, Any], key: str, value: Any, nested: str | None) -> dict[str, Any]:
    out = json.loads(json.dumps(manifest))
    target = out
    if nested is not None and isinstance(out.get(nested), dict):
        target = out[nested]
    target[key] = value
    return out


@FUZZ
@given(
    key=st.sampled_from(["encoder", "index", "backend", "files", "count", "dim", "kb_uid", "probe", "fingerprint", "kind", "name", "vectors", "hashes", "items"]),
    value=json_values,
    nested=st.none() | st.sampled_from(["encoder", "index", "backend", "files"]),
    drop=st.booleans(),
)
def test_kb_manifest(persisted: dict[str, Path], stubs: Any, key: str, value: Any, nested: str | None, drop: bool) -> None:
    kb_dir = persisted["kb"]
    path = kb_dir / "manifest.json"
    good = path.read_bytes()
    manifest = json.loads(good)
    mutated = _mutate(manifest, key, value, nested)
    if drop:
        mutated.pop(key, None)
    path.write_text(json.dumps(mutated))
    try:
        _outcome(lambda: KnowledgeBase.read_manifest(kb_dir))
        _outcome(lambda: KnowledgeBase.from_persist_dir(kb_dir, embed_model=stubs.ColourEmbedding()))
    finally:
        path.write_bytes(good)


@FUZZ
@given(
    key=st.sampled_from(["heads", "shards", "case_ids", "task", "n_candidates", "config", "retriever_k", "retriever", "reader", "name", "sha256", "labels"]),
    value=json_values,
    nested=st.none() | st.sampled_from(["task", "config", "retriever_k"]),
    in_shard=st.booleans(),
)
def test_feedback_manifest(persisted: dict[str, Path], key: str, value: Any, nested: str | None, in_shard: bool) -> None:
    fb_dir = persisted["feedback"]
    path = fb_dir / "manifest.json"
    good = path.read_bytes()
    manifest = json.loads(good)
    if in_shard:
        manifest["shards"][0][key] = value
        mutated = manifest
    else:
        mutated = _mutate(manifest, key, value, nested)
    path.write_text(json.dumps(mutated))
    try:
        _outcome(lambda: FeedbackCache.from_persist_dir(fb_dir))
    finally:
        path.write_bytes(good)


def _png_bytes(size: tuple[int, int], mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


valid_png = st.builds(_png_bytes, st.tuples(st.integers(1, 8), st.integers(1, 8)), st.sampled_from(["L", "RGB", "RGBA", "I;16", "P", "1"]))


@FUZZ
@given(
    data=st.binary(max_size=300)
    | valid_png
    # A real PNG cut short or with flipped bytes: the broken files users actually have.
    | st.builds(lambda b, n: b[:n], valid_png, st.integers(0, 80))
    | st.builds(lambda b, i, x: b[:i] + bytes([x]) + b[i + 1 :], valid_png, st.integers(0, 60), st.integers(0, 255))
    | st.builds(lambda tail: b"\0" * 128 + b"DICM" + tail, st.binary(max_size=120))
)
def test_image_decoding(data: bytes) -> None:
    _outcome(lambda: load_image(data))
