"""KnowledgeBase with a small deterministic embedding class that is not ours.

``QuadrantEmbedding`` embeds an image as the mean RGB of its four quadrants (12 numbers) and a
text as a hashed bag of words where the word ``wK`` always lands in dimension ``K``. A solid-colour
image therefore embeds as its colour repeated four times, so image cosines are colour cosines.

Hand-computable KB (colour -> image cosine with the query colour (200, 100, 0); caption -> text
cosine with the query text "w0 w0 w1" = (2, 1, 0)/sqrt5):

    id      colour           image cosine                           caption      text cosine
    red     (255, 0, 0)      200/sqrt(50000) = 2/sqrt5 = 0.894427   "w2"         0
    yellow  (255, 255, 0)    300/(sqrt(50000)*sqrt2)  = 0.948683    "w1"         1/sqrt5 = 0.447214
    blue    (0, 0, 255)      0                                      "w0 w0 w1"   1
    white   (255, 255, 255)  300/(sqrt(50000)*sqrt3)  = 0.774597    "w0 w1 w2"   3/sqrt15 = 0.774597
    green   (0, 255, 0)      100/sqrt(50000) = 1/sqrt5 = 0.447214   "w0"         2/sqrt5 = 0.894427

Image ranking: yellow, red, white, green, blue.  Text ranking: blue, green, white, yellow, red.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.embeddings import MultiModalEmbedding
from PIL import Image

from llama_index_lvlm_retriever.data.images import ImageLoadError, image_content_hash, load_image
from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import DataError, UsageError
from llama_index_lvlm_retriever.kb import (
    EncoderMismatchError,
    IndexConfig,
    KnowledgeBase,
    SearchHit,
)
from llama_index_lvlm_retriever.kb.backends import FaissIndex
from llama_index_lvlm_retriever.storage import files as storage_files
from llama_index_lvlm_retriever.version import __version__

S2, S3, S5, S15 = math.sqrt(2), math.sqrt(3), math.sqrt(5), math.sqrt(15)
DIM = 12


class QuadrantEmbedding(MultiModalEmbedding):
    """Image -> mean RGB of each quadrant; text -> hashed bag of words ("wK" -> dimension K)."""

    model_name: str = "quadrant-stub"
    salt: str = ""
    repeat: int = 1
    text_dim: int = DIM

    @classmethod
    def class_name(cls) -> str:
        return "QuadrantEmbedding"

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        with Image.open(img_file_path) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0  # (h, w, 3)
        h, w = pixels.shape[0] // 2 or 1, pixels.shape[1] // 2 or 1
        quadrants = [pixels[:h, :w], pixels[:h, w:], pixels[h:, :w], pixels[h:, w:]]
        vector = np.concatenate([q.reshape(-1, 3).mean(axis=0) for q in quadrants])  # (12,)
        return np.tile(vector, self.repeat).tolist()

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._get_image_embedding(img_file_path)

    def _get_text_embedding(self, text: str) -> list[float]:
        vector = [0.0] * self.text_dim
        for word in text.lower().split():
            if re.fullmatch(r"w\d+", word) and not self.salt:
                vector[int(word[1:]) % self.text_dim] += 1.0
            else:
                vector[zlib.crc32((self.salt + word).encode()) % self.text_dim] += 1.0
        return vector * self.repeat

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


class ArrayQuadrantEmbedding(QuadrantEmbedding):
    """Same numbers, through the array methods a fast encoder offers; records its batch sizes."""

    image_calls: list[tuple[int, int | None]] = []
    text_calls: list[tuple[int, int | None]] = []
    image_inputs: list[Any] = []

    def embed_images(self, images: list[Any], batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
        self.image_calls.append((len(images), batch_size))
        self.image_inputs.extend(images)
        return np.array([self._get_image_embedding(i) for i in images], dtype=np.float32)

    def embed_texts(self, texts: list[str], batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
        self.text_calls.append((len(texts), batch_size))
        return np.array([self._get_text_embedding(t) for t in texts], dtype=np.float32)

    def _get_image_embeddings(self, img_file_paths: list[Any]) -> list[list[float]]:
        raise AssertionError("the array method should have been used")


class FingerprintedEmbedding(QuadrantEmbedding):
    weights_id: str = "weights-a"

    def fingerprint(self) -> str:
        return self.weights_id


COLOURS = {
    "red": ((255, 0, 0), "w2"),
    "yellow": ((255, 255, 0), "w1"),
    "blue": ((0, 0, 255), "w0 w0 w1"),
    "white": ((255, 255, 255), "w0 w1 w2"),
    "green": ((0, 255, 0), "w0"),
}
QUERY_COLOUR = (200, 100, 0)
QUERY_TEXT = "w0 w0 w1"
IMAGE_RANKING = [("yellow", 3 / math.sqrt(10)), ("red", 2 / S5), ("white", 3 / (S5 * S3)), ("green", 1 / S5), ("blue", 0.0)]
TEXT_RANKING = [("blue", 1.0), ("green", 2 / S5), ("white", 3 / S15), ("yellow", 1 / S5), ("red", 0.0)]


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (4, 4)) -> str:
    Image.new("RGB", size, colour).save(path)
    return str(path)


def _items(folder: Path) -> list[KBItem]:
    return [
        KBItem(id=name, image_path=_png(folder / f"{name}.png", colour), text=caption, source="stub", label=name)
        for name, (colour, caption) in COLOURS.items()
    ]


def _query(model: MultiModalEmbedding, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    image = np.array([model.get_image_embedding(_png(folder / "query.png", QUERY_COLOUR))], dtype=np.float32)
    text = np.array([model.get_text_embedding(QUERY_TEXT)], dtype=np.float32)
    return image, text  # (1, 12) each


def _ranking(hits: list[SearchHit]) -> list[tuple[str, float]]:
    return [(h.item.id, round(h.score, 5)) for h in hits]


def _rounded(ranking: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(i, round(s, 5)) for i, s in ranking]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kb")


@pytest.fixture(scope="module")
def kb(folder: Path) -> KnowledgeBase:
    return KnowledgeBase.build(_items(folder), QuadrantEmbedding(), show_progress=False)


# ---------------------------------------------------------------------------- build + search
def test_search_ranks_and_scores_by_hand(kb: KnowledgeBase, folder: Path) -> None:
    image_q, text_q = _query(kb.embed_model, folder)
    assert _ranking(kb.search(image_q, "image", 5)[0]) == _rounded(IMAGE_RANKING)
    assert _ranking(kb.search(text_q, "text", 5)[0]) == _rounded(TEXT_RANKING)
    # Two queries in one call; the second is the text query searched against image vectors
    # (cross-modal): (2, 1, 0, 0, ...)/sqrt5 . yellow (1, 1, 0)*4/(2*sqrt2) = 3/(2*sqrt10) = 0.474342,
    # red (1, 0, 0)*4/2 = 1/sqrt5 = 0.447214.
    top2 = kb.search(np.concatenate([image_q, text_q]), "image", 2)
    assert [_ranking(hits) for hits in top2] == [
        _rounded(IMAGE_RANKING[:2]),
        _rounded([("yellow", 3 / (2 * math.sqrt(10))), ("red", 1 / S5)]),
    ]
    hit = top2[0][0]
    assert hit.position == kb.position("yellow") == 1 and hit.item == kb.get("yellow")


def test_vectors_are_normalised_and_hashes_are_of_pixels(kb: KnowledgeBase, folder: Path) -> None:
    assert kb.dim == DIM and len(kb) == 5 and "red" in kb and "pink" not in kb
    assert kb.image_vectors.dtype == np.float32 and kb.image_vectors.shape == (5, DIM)
    np.testing.assert_allclose(np.linalg.norm(kb.text_vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(kb.image_vectors[0], [0.5, 0, 0] * 4, atol=1e-7)  # red, (1, 0, 0)*4 / 2
    assert kb.image_hashes == [image_content_hash(folder / f"{name}.png") for name in COLOURS]
    with pytest.raises(ValueError, match="read-only"):
        kb.image_vectors[0, 0] = 3.0
    assert [it.id for it in kb.items] == list(COLOURS)


def test_batched_build_equals_item_by_item_add(kb: KnowledgeBase, folder: Path) -> None:
    one_by_one = KnowledgeBase(QuadrantEmbedding())
    added = [one_by_one.add([item], show_progress=False) for item in kb.items]
    assert added == [[name] for name in COLOURS]
    batched = KnowledgeBase.build(kb.items, QuadrantEmbedding(), batch_size=2, show_progress=False)
    for other in (one_by_one, batched):
        np.testing.assert_array_equal(other.image_vectors, kb.image_vectors)
        np.testing.assert_array_equal(other.text_vectors, kb.text_vectors)
        assert other.image_hashes == kb.image_hashes and other.items == kb.items
    image_q, _ = _query(kb.embed_model, folder)
    assert _ranking(one_by_one.search(image_q, "image", 5)[0]) == _rounded(IMAGE_RANKING)


def test_constructor_from_ready_vectors_equals_build(kb: KnowledgeBase, folder: Path) -> None:
    raw = kb.image_vectors * 7.0  # normalised again by the constructor
    rebuilt = KnowledgeBase(QuadrantEmbedding(), kb.items, image_vectors=raw, text_vectors=kb.text_vectors)
    assert rebuilt.image_hashes == kb.image_hashes  # computed from the files
    image_q, _ = _query(kb.embed_model, folder)
    assert _ranking(rebuilt.search(image_q, "image", 3)[0]) == _rounded(IMAGE_RANKING[:3])


def test_array_methods_are_used_in_batches_with_progress(kb: KnowledgeBase, capsys: pytest.CaptureFixture[str]) -> None:
    model = ArrayQuadrantEmbedding()
    model.image_calls.clear()
    model.text_calls.clear()
    built = KnowledgeBase.build(kb.items, model, batch_size=2, show_progress=True)
    # Each of our batches is one call, run as one forward pass (batch_size = its length).
    assert model.image_calls == [(2, 2), (2, 2), (1, 1)] and model.text_calls == [(2, 2), (2, 2), (1, 1)]
    np.testing.assert_allclose(built.image_vectors, kb.image_vectors, atol=1e-7)
    assert "Embedding knowledge base" in capsys.readouterr().err


def test_exclusion_by_id_and_by_content_hash(kb: KnowledgeBase, folder: Path) -> None:
    image_q, _ = _query(kb.embed_model, folder)
    queries = np.repeat(image_q, 3, axis=0)  # (3, 12): same vector, three exclusion settings
    # A re-encoded copy of the KB's yellow image (BMP, other size on disk) has the same pixels.
    copy = folder / "yellow_copy.bmp"
    Image.open(folder / "yellow.png").save(copy)
    assert copy.read_bytes() != (folder / "yellow.png").read_bytes()
    hits = kb.search(
        queries, "image", 3,
        exclude_ids=[{"yellow", "not-in-kb"}, None, ["red"]],
        exclude_hashes=[None, [kb.content_hash_of(copy), "0" * 64], {kb.content_hash_of(Image.open(folder / "white.png"))}],
    )
    # Still 3 hits each: excluded items are replaced by the next ones.
    assert [h.item.id for h in hits[0]] == ["red", "white", "green"]
    assert [h.item.id for h in hits[1]] == ["red", "white", "green"]
    assert [h.item.id for h in hits[2]] == ["yellow", "green", "blue"]


def test_hash_exclusion_removes_every_pixel_duplicate(folder: Path) -> None:
    items = _items(folder) + [KBItem(id="yellow-again", image_path=str(folder / "yellow.png"), text="w5")]
    dup_kb = KnowledgeBase.build(items, QuadrantEmbedding(), show_progress=False)
    image_q, _ = _query(dup_kb.embed_model, folder)
    plain = dup_kb.search(image_q, "image", 3)[0]
    assert [h.item.id for h in plain] == ["yellow", "yellow-again", "red"]  # tie broken by position
    hits = dup_kb.search(image_q, "image", 3, exclude_hashes=[[dup_kb.content_hash_of(folder / "yellow.png")]])[0]
    assert [h.item.id for h in hits] == ["red", "white", "green"]
    # Asking for more than remains returns what remains.
    assert len(dup_kb.search(image_q, "image", 10, exclude_ids=[{"red"}])[0]) == 5


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda kb, q: kb.search(q, "audio", 1), UsageError, r"modality must be one of \['image', 'text'\], got 'audio'"),
        (lambda kb, q: kb.search(q, "image", -1), UsageError, "^k must be a non-negative int, got -1"),
        (lambda kb, q: kb.search(q[0], "image", 1), UsageError, r"queries must have shape \(n, dim\), got \(12,\)"),
        (lambda kb, q: kb.search(q[:, :5], "image", 1), UsageError, "queries are 5-d but the knowledge base is 12-d"),
        (lambda kb, q: kb.search(q, "image", 1, exclude_ids=[{"a"}, {"b"}]), ValueError, "exclude_ids has 2 entries for 1 queries"),
        (lambda kb, q: kb.search(q, "image", 1, exclude_hashes=["abc"]), ValueError, r"exclude_hashes\[0\] is the string 'abc'"),
        (lambda kb, q: kb.get("pink"), KeyError, "no knowledge-base item with id 'pink'"),
    ],
)
def test_bad_search_inputs(kb: KnowledgeBase, folder: Path, call: Any, error: type, message: str) -> None:
    image_q, _ = _query(kb.embed_model, folder)
    with pytest.raises(error, match=message):
        call(kb, image_q)
    assert kb.search(image_q, "image", 0) == [[]]


# ---------------------------------------------------------------------------- index kinds
@pytest.fixture(scope="module")
def random_items(tmp_path_factory: pytest.TempPathFactory) -> list[KBItem]:
    folder = tmp_path_factory.mktemp("random")
    rng = np.random.default_rng(7)
    items = []
    for i in range(40):
        pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        path = folder / f"r{i}.png"
        Image.fromarray(pixels).save(path)
        words = " ".join(f"w{j}" for j in rng.integers(0, DIM, 4))
        items.append(KBItem(id=f"r{i}", image_path=str(path), text=words, source="random"))
    return items


def test_ivf_and_hnsw_agree_with_flat(random_items: list[KBItem], caplog: pytest.LogCaptureFixture) -> None:
    model = QuadrantEmbedding()
    flat = KnowledgeBase.build(random_items, model, show_progress=False)
    with caplog.at_level(logging.WARNING):
        ivf_all = KnowledgeBase.build(random_items, model, index_config=IndexConfig(kind="ivf", nlist=100, nprobe=100), show_progress=False)
    assert "IVF nlist capped from 100 to 40" in caplog.text
    ivf_one = KnowledgeBase.build(random_items, model, index_config=IndexConfig(kind="ivf", nlist=4, nprobe=1), show_progress=False)
    hnsw = KnowledgeBase.build(random_items, model, index_config=IndexConfig(kind="hnsw", hnsw_m=4, ef_search=16), show_progress=False)
    rng = np.random.default_rng(1)
    for modality, vectors in (("image", flat.image_vectors), ("text", flat.text_vectors)):
        noisy = vectors + rng.normal(0, 0.01, vectors.shape).astype(np.float32)  # (40, 12)
        expected = flat.search(noisy, modality, 3)
        # Every list probed: exact up to float rounding (which may swap tied captions).
        got = ivf_all.search(noisy, modality, 3)
        assert [h[0].item.id for h in got] == [h[0].item.id for h in expected]
        np.testing.assert_allclose([[h.score for h in hits] for hits in got], [[h.score for h in hits] for hits in expected], atol=1e-6)
        assert [h[0].item.id for h in hnsw.search(noisy, modality, 1)] == [h[0].item.id for h in expected]
        # One probed list still holds a vector's own list, so each KB vector finds itself.
        assert [h[0].score for h in ivf_one.search(vectors, modality, 1)] == pytest.approx([1.0] * 40, abs=1e-5)


def test_ivf_add_uses_the_trained_lists(random_items: list[KBItem]) -> None:
    kb = KnowledgeBase.build(random_items[:30], QuadrantEmbedding(), index_config=IndexConfig(kind="ivf", nlist=4, nprobe=4), show_progress=False)
    assert kb.add(random_items[30:], show_progress=False) == [f"r{i}" for i in range(30, 40)]
    hits = kb.search(kb.image_vectors[30:], "image", 1)
    assert [h[0].item.id for h in hits] == [f"r{i}" for i in range(30, 40)]


# ---------------------------------------------------------------------------- persistence
def test_persist_round_trip_on_hnsw_with_metadata(random_items: list[KBItem], tmp_path: Path) -> None:
    items = [
        KBItem(id=it.id, image_path=it.image_path, text=it.text, source="roco", label=f"c{i % 3}",
               metadata={"year": 2000 + i, "tags": ["a", str(i)], "nested": {"view": "PA"}})
        for i, it in enumerate(random_items)
    ]
    config = IndexConfig(kind="hnsw", hnsw_m=6, ef_search=12)
    kb = KnowledgeBase.build(items, QuadrantEmbedding(), index_config=config, show_progress=False)
    kb.persist(tmp_path / "kb")
    assert sorted(os.listdir(tmp_path)) == ["kb"]  # no temp directories left behind
    manifest = KnowledgeBase.read_manifest(tmp_path / "kb")
    gen = manifest["files"]["items"]["name"].split(".")[1]  # one generation tag per write
    assert sorted(os.listdir(tmp_path / "kb")) == [
        f"image.{gen}.faiss", f"image_hashes.{gen}.json", f"items.{gen}.jsonl", "manifest.json", f"text.{gen}.faiss",
        f"vectors.{gen}.safetensors",
    ]
    assert sorted(manifest["files"]) == ["hashes", "image", "items", "text", "vectors"]
    assert all(len(entry["sha256"]) == 64 and entry["size"] > 0 for entry in manifest["files"].values())
    assert manifest["package_version"] == __version__ and manifest["dim"] == DIM and manifest["count"] == 40
    assert manifest["index"] == config.model_dump()
    assert manifest["counts"]["sources"] == {"roco": 40}
    assert manifest["encoder"]["class_name"] == "QuadrantEmbedding"
    assert manifest["encoder"]["model_name"] == "quadrant-stub" and manifest["encoder"]["fingerprint"] is None
    assert len(manifest["encoder"]["probe"]["image"]) == DIM

    loaded = KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding())
    assert loaded.items == items and loaded.index_config == config and loaded.image_hashes == kb.image_hashes
    np.testing.assert_array_equal(loaded.image_vectors, kb.image_vectors)
    np.testing.assert_array_equal(loaded.text_vectors, kb.text_vectors)
    queries = kb.text_vectors[::3] + 0.05  # (14, 12)
    exclusions = [{items[i].id} for i in range(0, 40, 3)]
    for modality in ("image", "text"):
        assert loaded.search(queries, modality, 5, exclude_ids=exclusions) == kb.search(queries, modality, 5, exclude_ids=exclusions)

    # A loaded KB grows and can replace its own directory.
    extra = KBItem(id="extra", image_path=items[0].image_path, text="w3 w4", metadata={"added": True})
    assert loaded.add([extra], show_progress=False) == ["extra"]
    loaded.persist(tmp_path / "kb")
    again = KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding())
    assert len(again) == 41 and again.get("extra") == extra
    assert sorted(os.listdir(tmp_path)) == ["kb"]


def test_mismatched_encoder_is_refused(kb: KnowledgeBase, tmp_path: Path) -> None:
    kb.persist(tmp_path / "kb")
    KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding())  # a fresh instance of the same model
    with pytest.raises(
        EncoderMismatchError,
        match=r"built with QuadrantEmbedding, model 'quadrant-stub', but the given embed model is "
        r"QuadrantEmbedding, model 'salted' \(probe text embedding cosine 0\.\d+ < 0\.999\)",
    ):
        KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding(model_name="salted", salt="x"))
    with pytest.raises(EncoderMismatchError, match="probe image embedding is 24-d, the knowledge base's is 12-d"):
        KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding(repeat=2))


def test_fingerprints_decide_when_both_have_one(folder: Path, tmp_path: Path) -> None:
    KnowledgeBase.build(_items(folder), FingerprintedEmbedding(), show_progress=False).persist(tmp_path / "kb")
    assert KnowledgeBase.read_manifest(tmp_path / "kb")["encoder"]["fingerprint"] == "weights-a"
    assert len(KnowledgeBase.from_persist_dir(tmp_path / "kb", FingerprintedEmbedding())) == 5
    # Same numbers, other weights id: the fingerprint wins over the (matching) probe.
    with pytest.raises(EncoderMismatchError, match="fingerprint weights-a.*weights fingerprint weights-b != weights-a"):
        KnowledgeBase.from_persist_dir(tmp_path / "kb", FingerprintedEmbedding(weights_id="weights-b"))
    # A model without a fingerprint is checked by the probe instead.
    assert len(KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding())) == 5


def test_missing_directory_manifest_or_files(kb: KnowledgeBase, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="knowledge-base directory not found: .*nowhere"):
        KnowledgeBase.from_persist_dir(tmp_path / "nowhere", QuadrantEmbedding())
    kb.persist(tmp_path / "kb")
    vectors_file = KnowledgeBase.read_manifest(tmp_path / "kb")["files"]["vectors"]["name"]
    (tmp_path / "kb" / vectors_file).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"is missing ['{vectors_file}']")):
        KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding())
    (tmp_path / "kb" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding())
    (tmp_path / "kb" / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a knowledge-base manifest"):
        KnowledgeBase.read_manifest(tmp_path / "kb")


def test_manifest_versions_and_unknown_index_settings(kb: KnowledgeBase, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kb.persist(tmp_path / "kb")
    path = tmp_path / "kb" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["index"]["pq_bits"] = 8  # a setting this version does not know
    path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        assert len(KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding())) == 5
    assert "ignoring unknown index settings ['pq_bits']" in caplog.text
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="has format version 99; this package reads versions \\[1, 2\\]"):
        KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_interrupted_persist_leaves_nothing_half_written(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hnsw = IndexConfig(kind="hnsw", hnsw_m=4)  # an index with files of its own (a flat one has none)
    kb = KnowledgeBase.build(_items(folder), QuadrantEmbedding(), index_config=hnsw, show_progress=False)
    real_write = FaissIndex.write
    calls: list[Path] = []

    def write_then_crash(self: FaissIndex, path: Path) -> None:
        calls.append(path)
        if len(calls) == 2:  # the image index is on disk, the text index is not
            raise OSError("disk full")
        real_write(self, path)

    monkeypatch.setattr(FaissIndex, "write", write_then_crash)
    with pytest.raises(OSError, match="disk full"):
        kb.persist(tmp_path / "new" / "kb")
    assert not (tmp_path / "new" / "kb").exists() and os.listdir(tmp_path / "new") == []

    monkeypatch.setattr(FaissIndex, "write", real_write)
    kb.persist(tmp_path / "kb")
    before = _snapshot(tmp_path / "kb")
    bigger = KnowledgeBase.build(_items(folder)[:3], QuadrantEmbedding(), index_config=hnsw, show_progress=False)
    calls.clear()
    monkeypatch.setattr(FaissIndex, "write", write_then_crash)
    with pytest.raises(OSError, match="disk full"):
        bigger.persist(tmp_path / "kb")
    assert _snapshot(tmp_path / "kb") == before
    assert sorted(os.listdir(tmp_path)) == ["kb", "new"]


def test_a_flat_kb_holds_each_vector_once(kb: KnowledgeBase, folder: Path, tmp_path: Path) -> None:
    # In memory: the knowledge base's matrices are the flat indexes' own (no second copy).
    for name in ("image", "text"):
        assert np.shares_memory(kb.image_vectors if name == "image" else kb.text_vectors, kb._indexes[name].matrix)
    # On disk: the vectors file only; the flat index is rebuilt from it, sharing its bytes.
    kb.persist(tmp_path / "kb")
    assert set(KnowledgeBase.read_manifest(tmp_path / "kb")["files"]) == {"items", "vectors", "hashes"}
    assert not list((tmp_path / "kb").glob("*.faiss"))
    loaded = KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding())
    assert np.shares_memory(loaded.image_vectors, loaded._indexes["image"].matrix)
    image_q, _ = _query(kb.embed_model, folder)
    assert _ranking(loaded.search(image_q, "image", 5)[0]) == _ranking(kb.search(image_q, "image", 5)[0])
    # Changes keep one copy too, and search what they changed.
    loaded.delete(["red"])
    assert np.shares_memory(loaded.image_vectors, loaded._indexes["image"].matrix) and len(loaded) == 4
    assert "red" not in [h.item.id for h in loaded.search(image_q, "image", 5)[0]]


def test_a_flat_kb_of_an_older_version_with_index_files_still_loads(kb: KnowledgeBase, folder: Path, tmp_path: Path) -> None:
    import hashlib

    kb.persist(tmp_path / "kb")
    manifest_path = tmp_path / "kb" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in ("image", "text"):  # what versions before "one copy of the vectors" wrote
        path = tmp_path / "kb" / f"{name}.0123456789ab.faiss"
        kb._indexes[name].write(path)
        manifest["files"][name] = {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                   "size": path.stat().st_size}
    manifest_path.write_text(json.dumps(manifest))
    loaded = KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding())
    image_q, _ = _query(kb.embed_model, folder)
    assert _ranking(loaded.search(image_q, "image", 5)[0]) == _ranking(kb.search(image_q, "image", 5)[0])
    loaded.persist(tmp_path / "kb")  # the next write drops the old index files
    assert not list((tmp_path / "kb").glob("*.faiss"))


def test_failed_commit_keeps_the_old_version(kb: KnowledgeBase, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kb.persist(tmp_path / "kb")
    before = _snapshot(tmp_path / "kb")

    def replace_fails(src: Any, dst: Any) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(storage_files.os, "replace", replace_fails)  # the manifest's replace is the commit point
    other = KnowledgeBase.build(_items(folder)[:2], QuadrantEmbedding(), show_progress=False)
    with pytest.raises(OSError, match="rename failed"):
        other.persist(tmp_path / "kb")
    assert _snapshot(tmp_path / "kb") == before and os.listdir(tmp_path) == ["kb"]
    monkeypatch.undo()
    assert len(KnowledgeBase.from_persist_dir(tmp_path / "kb", QuadrantEmbedding())) == 5


def test_persist_refuses_a_folder_that_is_not_a_knowledge_base(kb: KnowledgeBase, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is a non-empty directory that is not a knowledge base"):
        kb.persist(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        bad = KnowledgeBase(kb.embed_model, [KBItem(id="o", image_path=kb.items[0].image_path, text="", metadata={"x": object()})],
                            image_vectors=kb.image_vectors[:1], text_vectors=kb.text_vectors[:1])
        bad.persist(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------- bad input
def test_empty_knowledge_base(folder: Path) -> None:
    with pytest.raises(UsageError, match="^knowledge base is empty: build\\(\\) got no items; pass at least one KBItem"):
        KnowledgeBase.build([], QuadrantEmbedding())
    empty = KnowledgeBase(QuadrantEmbedding())
    assert len(empty) == 0 and empty.add([], show_progress=False) == []
    with pytest.raises(UsageError, match="knowledge base is empty; add items before searching"):
        empty.search(np.ones((1, DIM), np.float32), "image", 1)
    with pytest.raises(ValueError, match="knowledge base is empty; nothing to persist"):
        empty.persist(folder / "empty-kb")
    with pytest.raises(ValueError, match="knowledge base is empty; its dimension is set by the first add"):
        _ = empty.dim


def _bad_files(folder: Path) -> list[KBItem]:
    good = _png(folder / "good.png", (255, 0, 0))
    truncated = folder / "truncated.png"
    truncated.write_bytes(Path(good).read_bytes()[:40])
    not_image = folder / "report.png"
    not_image.write_text("FINDINGS: none")
    return [
        KBItem(id="ok", image_path=good, text="w0"),
        KBItem(id="gone", image_path=str(folder / "missing.png"), text="w1"),
        KBItem(id="cut", image_path=str(truncated), text="w2"),
        KBItem(id="text", image_path=str(not_image), text="w3"),
    ]


@pytest.mark.parametrize(
    ("bad_id", "file_name", "message"),
    [("gone", "missing.png", "image file not found"), ("cut", "truncated.png", "cannot read image"), ("text", "report.png", "cannot read image")],
)
def test_unreadable_images_name_the_item_and_file(tmp_path: Path, bad_id: str, file_name: str, message: str) -> None:
    items = [it for it in _bad_files(tmp_path) if it.id in ("ok", bad_id)]
    pattern = f"knowledge-base item '{bad_id}': {message}:? {re.escape(str(tmp_path / file_name))}.*pass skip_bad=True"
    with pytest.raises(ImageLoadError, match=pattern):
        KnowledgeBase.build(items, QuadrantEmbedding(), show_progress=False)


def test_skip_bad_skips_and_reports(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    items = _bad_files(tmp_path)
    with caplog.at_level(logging.WARNING):
        kb = KnowledgeBase.build(items, QuadrantEmbedding(), batch_size=3, show_progress=False, skip_bad=True)
    assert [it.id for it in kb.items] == ["ok"]
    assert [item_id for item_id, _ in kb.skipped] == ["gone", "cut", "text"]
    assert "missing.png" in kb.skipped[0][1] and "skipping knowledge-base item 'cut'" in caplog.text
    assert kb.add([KBItem(id="ok2", image_path=items[0].image_path, text="w1")], show_progress=False) == ["ok2"]
    assert kb.skipped == []  # reports the last call only
    with pytest.raises(DataError, match="knowledge base is empty: all 3 items were skipped as unreadable \\(first: 'gone'"):
        KnowledgeBase.build(items[1:], QuadrantEmbedding(), show_progress=False, skip_bad=True)


def test_inconsistent_inputs(kb: KnowledgeBase, folder: Path) -> None:
    items = kb.items
    with pytest.raises(ValueError, match="item id 'red' appears twice in the input"):
        KnowledgeBase.build(items + items[:1], QuadrantEmbedding(), show_progress=False)
    with pytest.raises(ValueError, match="item id 'blue' is already in the knowledge base"):
        KnowledgeBase.build(items, QuadrantEmbedding(), show_progress=False).add(items[2:3])
    with pytest.raises(ValueError, match="returns 12-d image embeddings but 8-d text embeddings"):
        KnowledgeBase.build(items, QuadrantEmbedding(text_dim=8), show_progress=False)
    twelve = KnowledgeBase.build(items[:2], QuadrantEmbedding(), show_progress=False)
    with pytest.raises(ValueError, match="returns 24-d vectors but the knowledge base is 12-d"):
        KnowledgeBase(QuadrantEmbedding(repeat=2), twelve.items, twelve.image_vectors, twelve.text_vectors).add(items[2:3], show_progress=False)
    with pytest.raises(ValueError, match="got 5 items but no image_vectors/text_vectors"):
        KnowledgeBase(QuadrantEmbedding(), items)
    with pytest.raises(ValueError, match=re.escape("text_vectors must have shape (5, dim) for 5 items, got (4, 12)")):
        KnowledgeBase(QuadrantEmbedding(), items, kb.image_vectors, kb.text_vectors[:4])
    with pytest.raises(TypeError, match="embed_model must be a LlamaIndex MultiModalEmbedding"):
        KnowledgeBase(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"items\[0\] is a dict, not a KBItem"):
        KnowledgeBase.build([{"image_path": "a.png"}], QuadrantEmbedding())  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        KnowledgeBase.build(items, QuadrantEmbedding(), batch_size=0)


# ---------------------------------------------------------------------------- real images
def test_real_images_and_dicom(tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data")
    pydicom_data = pytest.importorskip("pydicom.data")
    retina = tmp_path / "retina.png"
    Image.fromarray(skdata.retina()).save(retina)
    ihc = tmp_path / "ihc.jpg"
    Image.fromarray(skdata.immunohistochemistry()).save(ihc, quality=90)
    ct = Path(pydicom_data.get_testdata_file("CT_small.dcm"))
    items = [
        KBItem(id="fundus", image_path=str(retina), text="w0 fundus photograph"),
        KBItem(id="ihc", image_path=str(ihc), text="w1 immunohistochemistry"),
        KBItem(id="ct", image_path=str(ct), text="w2 computed tomography"),
    ]
    model = ArrayQuadrantEmbedding()
    model.image_inputs.clear()
    kb = KnowledgeBase.build(items, model, show_progress=False)
    # PIL cannot open the DICOM, so the encoder got its decoded pixels as an in-memory PNG.
    assert model.image_inputs[:2] == [str(retina), str(ihc)] and isinstance(model.image_inputs[2], io.BytesIO)
    expected_ct = np.array(model._get_image_embedding(_to_png_bytes(load_image(ct))), dtype=np.float32)
    np.testing.assert_allclose(kb.image_vectors[2], expected_ct / np.linalg.norm(expected_ct), atol=1e-6)
    assert kb.image_hashes[2] == image_content_hash(ct)
    hits = kb.search(kb.image_vectors, "image", 1)
    assert [h[0].item.id for h in hits] == ["fundus", "ihc", "ct"]
    # The hash is of the 16-bit source values: its 8-bit rendering is another image, the DICOM itself
    # (or a copy) is excluded by hash.
    ct_png = tmp_path / "ct.png"
    load_image(ct).save(ct_png)
    assert kb.content_hash_of(ct_png) != kb.image_hashes[2]
    hits = kb.search(kb.image_vectors[2:], "image", 2, exclude_hashes=[[kb.content_hash_of(ct)]])
    assert [h.item.id for h in hits[0]] != [] and "ct" not in [h.item.id for h in hits[0]]
    shutil.copy(ct, tmp_path / "copy.dcm")
    assert kb.content_hash_of(tmp_path / "copy.dcm") == kb.image_hashes[2]


def _to_png_bytes(img: Image.Image) -> io.BytesIO:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    buffer.seek(0)
    return buffer
