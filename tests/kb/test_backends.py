"""KnowledgeBase on faiss, Milvus Lite, a Milvus server and Qdrant local mode: parity, filters, updates, bad inputs.

``PixelEmbedding`` embeds a 4x4 RGB image as its 48 centred pixel values and a caption as a hashed
bag of words in 48 dimensions, so random images give random, well-separated vectors and the exact
top-k (and its scores) can be computed with numpy and compared on every backend.

The Milvus Lite and Qdrant stores are embedded: ``uri=<dir>/kb.db`` and ``path=<dir>/qdrant``.
``milvus-server`` is a real Milvus 2.3 standalone server (``pip install milvus``), one per test session
(the ``milvus_server_uri`` fixture), each test's collections named after its tmp folder.
"""

from __future__ import annotations

import re
import shutil
import socket
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.vector_stores.types import FilterCondition, MetadataFilter, MetadataFilters
from PIL import Image

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.errors import ServerVersionError
from llama_index_lvlm_retriever.kb import EncoderMismatchError, IndexConfig, KnowledgeBase
from llama_index_lvlm_retriever.kb.backends import (
    BACKENDS,
    FaissBackendConfig,
    MilvusBackendConfig,
    MilvusIndex,
    QdrantBackendConfig,
)
from llama_index_lvlm_retriever.kb.backends.milvus_index import check_server_version
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever

pytest.importorskip("pymilvus")
pytest.importorskip("qdrant_client")

N = 40
DIM = 48
BACKEND_NAMES = ["faiss", "milvus", "milvus-server", "qdrant"]
DATABASES = ["milvus", "milvus-server", "qdrant"]
_SERVER: dict[str, str] = {}  # the session server's uri, set by the fixtures that start it


def _server_available() -> bool:
    from llama_index_lvlm_retriever.testing.milvus_server import find_command

    return find_command() is not None


@pytest.fixture(autouse=True)
def _milvus_server(request: pytest.FixtureRequest) -> None:
    """A test parametrized with ``name="milvus-server"`` gets the session's server (skips if not installed)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("name") == "milvus-server":
        _SERVER["uri"] = request.getfixturevalue("milvus_server_uri")


@pytest.fixture(scope="module")
def backend_names(request: pytest.FixtureRequest) -> list[str]:
    """Every backend this run can test: the Milvus server only where ``milvus-server`` is installed
    (``test_the_milvus_server_runs`` reports the skip)."""
    if not _server_available():
        return [name for name in BACKEND_NAMES if name != "milvus-server"]
    _SERVER["uri"] = request.getfixturevalue("milvus_server_uri")
    return list(BACKEND_NAMES)


class PixelEmbedding(MultiModalEmbedding):
    """Image -> centred pixels (48-d); text -> hashed bag of words (48-d, salted per model)."""

    model_name: str = "pixel-stub"
    salt: str = ""
    dim: int = DIM

    @classmethod
    def class_name(cls) -> str:
        return "PixelEmbedding"

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        with Image.open(img_file_path) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1) / 255.0 - 0.5  # (48,)
        if self.salt:
            pixels = np.roll(pixels, 1)
        return pixels[: self.dim].tolist()

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._get_image_embedding(img_file_path)

    def _get_text_embedding(self, text: str) -> list[float]:
        vector = [0.0] * self.dim
        for word in text.split():
            vector[zlib.crc32((self.salt + word).encode()) % self.dim] += 1.0
        return vector

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


def _items(folder: Path, n: int = N, start: int = 0, seed: int = 0) -> list[KBItem]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(start, start + n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(path)
        metadata: dict[str, Any] = {"patient_id": f"p{i % 7}", "modality": "CT" if i % 2 else "MR", "age": 20 + i}
        if i % 5 == 0:
            del metadata["patient_id"]  # pairs without a patient id: kept by "!=" filters
        caption = " ".join(f"w{x}" for x in rng.integers(0, 60, 6))
        items.append(KBItem(id=f"r{i}", image_path=str(path), text=caption, source="roco" if i % 3 else "mimic",
                            label=None if i % 4 == 0 else f"c{i % 3}", metadata=metadata))
    return items


def _config(name: str, folder: Path, collection: str = "lvlm_kb") -> Any:
    if name == "milvus":
        return MilvusBackendConfig(uri=str(folder / "kb.db"), collection=collection)
    if name == "milvus-server":
        # One server for the session: names unique per test folder, stable within a test.
        return MilvusBackendConfig(uri=_SERVER["uri"], collection=f"{collection}_{zlib.crc32(str(folder).encode()):08x}")
    if name == "qdrant":
        return QdrantBackendConfig(path=str(folder / "qdrant"), collection=collection)
    return FaissBackendConfig()


def _ranking(hits: list[Any]) -> list[tuple[str, float]]:
    return [(h.item.id, h.score) for h in hits]


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[KBItem]:
    return _items(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def kbs(items: list[KBItem], backend_names: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, KnowledgeBase]:
    """One knowledge base per backend over the same items (built once: Milvus Lite starts in ~1 s)."""
    out = {}
    for name in backend_names:
        out[name] = KnowledgeBase.build(items, PixelEmbedding(), backend=_config(name, tmp_path_factory.mktemp(name)), show_progress=False)
    yield out
    for kb in out.values():
        kb.close()


def _expected(kb: KnowledgeBase, queries: np.ndarray, modality: str, k: int, allowed: list[bool] | None = None) -> list[list[tuple[str, float]]]:
    vectors = kb.image_vectors if modality == "image" else kb.text_vectors
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ vectors.T  # (n, N)
    if allowed is not None:
        scores = np.where(np.array(allowed)[None, :], scores, -np.inf)
    out = []
    for row in scores:
        order = [int(j) for j in np.argsort(-row, kind="stable") if np.isfinite(row[j])][:k]
        out.append([(kb.items[j].id, float(row[j])) for j in order])
    return out


def _assert_same(got: list[list[Any]], expected: list[list[tuple[str, float]]]) -> None:
    assert [[i for i, _ in r] for r in map(_ranking, got)] == [[i for i, _ in r] for r in expected]
    np.testing.assert_allclose(
        [s for r in map(_ranking, got) for _, s in r], [s for r in expected for _, s in r], atol=1e-5
    )


# ---------------------------------------------------------------------------- parity
@pytest.mark.parametrize("modality", ["image", "text"])
def test_exact_search_is_the_same_on_every_backend(kbs: dict[str, KnowledgeBase], modality: str) -> None:
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(6, DIM)).astype(np.float32)  # (6, 48)
    expected = _expected(kbs["faiss"], queries, modality, 5)
    assert len(kbs) >= 3
    for name in kbs:
        _assert_same(kbs[name].search(queries, modality, 5), expected)


# ---------------------------------------------------------------------------- filters
def _f(*filters: Any, condition: str = "and") -> MetadataFilters:
    return MetadataFilters(filters=list(filters), condition=FilterCondition(condition))


FILTER_CASES = {
    # name: (filters, which items pass, by hand from _items' rules)
    "modality == CT": (_f(MetadataFilter(key="modality", value="CT")), lambda it: it.metadata["modality"] == "CT"),
    "patient != p1 keeps pairs without one": (
        _f(MetadataFilter(key="patient_id", operator="!=", value="p1")),
        lambda it: it.metadata.get("patient_id") != "p1",
    ),
    "age range and source": (
        _f(MetadataFilter(key="age", operator=">=", value=30), MetadataFilter(key="age", operator="<", value=45.5),
           MetadataFilter(key="source", value="roco")),
        lambda it: 30 <= it.metadata["age"] < 45.5 and it.source == "roco",
    ),
    "label in / nin, null label": (
        _f(MetadataFilter(key="label", operator="in", value=["c1", "c2"]),
           MetadataFilter(key="patient_id", operator="nin", value=["p2", "p3"])),
        lambda it: it.label in ("c1", "c2") and it.metadata.get("patient_id") not in ("p2", "p3"),
    ),
    "nested or + not": (
        _f(_f(MetadataFilter(key="modality", value="MR"), MetadataFilter(key="id", value="r7"), condition="or"),
           _f(MetadataFilter(key="label", value="c0"), condition="not")),
        lambda it: (it.metadata["modality"] == "MR" or it.id == "r7") and it.label != "c0",
    ),
}


@pytest.mark.parametrize("case", list(FILTER_CASES))
def test_filters_are_pushed_down_with_the_same_answers(kbs: dict[str, KnowledgeBase], case: str) -> None:
    filters, rule = FILTER_CASES[case]
    allowed = [rule(it) for it in kbs["faiss"].items]
    assert 0 < sum(allowed) < N  # the case really filters
    queries = np.random.default_rng(4).normal(size=(3, DIM)).astype(np.float32)
    expected = _expected(kbs["faiss"], queries, "image", 8, allowed)
    for name in kbs:
        _assert_same(kbs[name].search(queries, "image", 8, filters=filters), expected)


def test_per_query_filters_exclude_each_querys_own_patient(kbs: dict[str, KnowledgeBase]) -> None:
    kb = kbs["faiss"]
    queries = kb.image_vectors[[1, 2]]  # r1 (patient p1), r2 (patient p2)
    per_query = [_f(MetadataFilter(key="patient_id", operator="!=", value=f"p{i}")) for i in (1, 2)]
    for name in kbs:
        hits = kbs[name].search(queries, "image", N, filters=per_query)
        for i, patient in ((0, "p1"), (1, "p2")):
            assert hits[i] and all(h.item.metadata.get("patient_id") != patient for h in hits[i])
            assert len(hits[i]) == sum(it.metadata.get("patient_id") != patient for it in kb.items)


def test_self_and_duplicate_exclusion_on_every_backend(kbs: dict[str, KnowledgeBase], items: list[KBItem]) -> None:
    for name in kbs:
        kb = kbs[name]
        query = kb.image_vectors[[5]]
        assert kb.search(query, "image", 1)[0][0].item.id == "r5"
        by_hash = kb.search(query, "image", 3, exclude_hashes=[[kb.content_hash_of(items[5].image_path)]])
        by_id = kb.search(query, "image", 3, exclude_ids=[{"r5"}])
        assert "r5" not in [h.item.id for h in by_hash[0]] and len(by_hash[0]) == 3
        assert _ranking(by_id[0]) == _ranking(by_hash[0])


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (_f(MetadataFilter(key="patient", value="p1")), "filter on unknown field 'patient'"),
        (_f(MetadataFilter(key="modality", operator="text_match", value="C")), "operator 'text_match'"),
        (_f(MetadataFilter(key="age", value="30")), "the value is a str but 'age' holds ['number']"),
        (_f(MetadataFilter(key="modality", operator=">", value=3)), "compares numbers, but 'modality' holds ['str']"),
    ],
)
def test_bad_filters_name_the_field(kbs: dict[str, KnowledgeBase], filters: MetadataFilters, message: str) -> None:
    for name in kbs:
        with pytest.raises(ValueError, match=re.escape(message)):
            kbs[name].search(kbs[name].image_vectors[:1], "image", 2, filters=filters)
    with pytest.raises(ValueError, match="filters has 2 entries for 1 queries"):
        kbs["faiss"].search(kbs["faiss"].image_vectors[:1], "image", 2, filters=[None, None])


def test_faiss_filter_keeps_approximate_indexes_filtered(items: list[KBItem]) -> None:
    only_ct = _f(MetadataFilter(key="modality", value="CT"))
    for config in (IndexConfig(kind="ivf", nlist=4, nprobe=4), IndexConfig(kind="hnsw", hnsw_m=8, ef_search=64)):
        kb = KnowledgeBase.build(items, PixelEmbedding(), index_config=config, show_progress=False)
        hits = kb.search(kb.image_vectors[:4], "image", 5, filters=only_ct)
        assert all(h.item.metadata["modality"] == "CT" for row in hits for h in row)
        assert all(len(row) == 5 for row in hits)


# ---------------------------------------------------------------------------- tie order
CAPTIONS = ["w1 w2 w3", "w4 w5 w6", "w7 w8 w9", "w10 w11 w12"]


@pytest.fixture(scope="module")
def tie_kbs(backend_names: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, KnowledgeBase]:
    """24 pairs with 4 captions (6 pairs each: text-head ties), 2 copies of t03's image with captions
    0 and 1 (image-head ties; caption 0 now has 7 pairs) and "zz", one more pair, on every backend."""
    folder = tmp_path_factory.mktemp("ties")
    rng = np.random.default_rng(11)
    items = []
    for i in range(24):
        path = folder / f"t{i}.png"
        Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(path)
        items.append(KBItem(id=f"t{i:02d}", image_path=str(path), text=CAPTIONS[i % 4]))
    items += [KBItem(id=f"t{j}", image_path=items[3].image_path, text=CAPTIONS[j % 4]) for j in (24, 25)]
    Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(folder / "zz.png")
    items.append(KBItem(id="zz", image_path=str(folder / "zz.png"), text="w13 w14"))
    out = {}
    for name in backend_names:
        config = _config(name, tmp_path_factory.mktemp(f"ties-{name}"), "ties")
        out[name] = KnowledgeBase.build(items, PixelEmbedding(), backend=config, show_progress=False)
    yield out
    for kb in out.values():
        kb.close()


def _tie_expected(kb: KnowledgeBase, queries: np.ndarray, modality: str, k: int) -> list[list[str]]:
    """The documented order by hand: score (ties within 1e-6), the other modality's cosine, the id."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    own, other = (kb.image_vectors, kb.text_vectors) if modality == "image" else (kb.text_vectors, kb.image_vectors)
    ids = [it.id for it in kb.items]
    out = []
    for row in q:
        scores, second = own @ row, other @ row  # (N,), (N,)
        out.append(sorted(range(len(ids)), key=lambda j: (-round(float(scores[j]), 5), -float(second[j]), ids[j]))[:k])
    return [[ids[j] for j in row] for row in out]


def test_duplicate_captions_give_the_same_text_neighbours_on_every_backend(tie_kbs: dict[str, KnowledgeBase]) -> None:
    faiss_kb = tie_kbs["faiss"]
    caption0 = faiss_kb.text_vectors[0]  # the caption of t00, t04, ..., t20 and t24
    group = [it.id for it in faiss_kb.items if it.text == CAPTIONS[0]]
    assert len(group) == 7
    # Four queries near caption 0, each nudged towards the image of another pair of that caption.
    queries = np.stack([caption0 + 0.5 * faiss_kb.image_vectors[faiss_kb.position(i)] for i in group[:4]])  # (4, 48)
    expected = _tie_expected(faiss_kb, queries, "text", 3)
    assert all(set(row) <= set(group) for row in expected)  # the 3 hits are inside the 7-way tie
    assert len({row[0] for row in expected}) == 4  # different queries get different text-head pairs
    assert [row[0] for row in expected] == group[:4]  # ... each the pair whose image it is nearest
    assert len(tie_kbs) >= 3
    for name, kb in tie_kbs.items():
        got = [[h.item.id for h in row] for row in kb.search(queries, "text", 3)]
        assert got == expected, name
        for row in kb.search(queries, "text", 3):
            assert max(h.score for h in row) - min(h.score for h in row) < 1e-5  # really tied


def test_identical_images_are_ordered_by_caption_the_same_on_every_backend(tie_kbs: dict[str, KnowledgeBase]) -> None:
    faiss_kb = tie_kbs["faiss"]
    query = faiss_kb.image_vectors[[faiss_kb.position("t03")]]  # t03, t24, t25: one image
    expected = _tie_expected(faiss_kb, query, "image", 2)
    assert set(expected[0]) < {"t03", "t24", "t25"}
    for name, kb in tie_kbs.items():
        assert [h.item.id for h in kb.search(query, "image", 2)[0]] == expected[0], name


def test_an_identical_image_comes_first_under_max_fusion(tie_kbs: dict[str, KnowledgeBase]) -> None:
    faiss_kb = tie_kbs["faiss"]
    # A query image from the KB whose text-head top is another pair with a smaller id: ordering a
    # fused tie by id (the old rule) would put that caption hit before the identical image.
    text_tops = faiss_kb.search(faiss_kb.image_vectors, "text", 1)
    query = next(it.id for it, top in zip(faiss_kb.items, text_tops) if top[0].item.id < it.id)
    for name, kb in tie_kbs.items():
        retriever = LVLMAwareRetriever(kb, k_image=2, k_text=2, head_fusion="max")
        nodes = retriever.retrieve_batch([kb.get(query).image_path])[0]
        text_top = kb.search(kb.image_vectors[[kb.position(query)]], "text", 1)[0][0].item.id
        assert text_top < query
        assert [n.node.node_id for n in nodes[:2]] == [query, text_top], name
        assert nodes[0].score == nodes[1].score == 1.0  # a fused tie, broken by raw cosine
        assert nodes[0].node.metadata["image_score"] == pytest.approx(1.0, abs=1e-5)
        assert nodes[1].node.metadata["text_score"] < 0.9


# ---------------------------------------------------------------------------- updates + persistence
@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_add_delete_upsert_persist_reopen_after_a_move(name: str, items: list[KBItem], tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    extra = _items(tmp_path / "more", n=3, start=100, seed=9)
    kb = KnowledgeBase.build(items[:20], PixelEmbedding(), backend=_config(name, folder), show_progress=False)
    assert kb.add(extra, show_progress=False) == ["r100", "r101", "r102"]
    assert kb.delete(["r3", "r101"]) == ["r3", "r101"]
    replaced = KBItem(id="r4", image_path=items[30].image_path, text="w1 w2", metadata={"modality": "CT", "age": 1})
    assert kb.upsert([replaced, items[25]], show_progress=False) == ["r4", "r25"]
    ids = [it.id for it in kb.items]
    assert ids == [f"r{i}" for i in range(20) if i != 3] + ["r100", "r102", "r25"]
    assert kb.position("r4") == 3  # replaced in place
    hits = kb.search(kb.image_vectors[[kb.position("r4"), kb.position("r100")]], "image", 1)
    assert [h[0].item.id for h in hits] == ["r4", "r100"]
    assert "r3" not in {h.item.id for h in kb.search(kb.image_vectors, "image", 3)[0]}
    with pytest.raises(KeyError, match="no knowledge-base item with id 'r3'"):
        kb.delete(["r3"])
    kb.persist(folder)
    before = _ranking(kb.search(kb.image_vectors[:4], "text", 4, filters=_f(MetadataFilter(key="modality", value="CT")))[0])
    kb.close()
    moved = tmp_path / "moved"
    shutil.move(str(folder), str(moved))  # a Milvus Lite / Qdrant store inside the folder moves with it
    again = KnowledgeBase.from_persist_dir(moved, PixelEmbedding())
    try:
        assert again.backend.name == name.split("-")[0] and [it.id for it in again.items] == ids
        assert again.get("r4") == replaced
        after = _ranking(again.search(again.image_vectors[:4], "text", 4, filters=_f(MetadataFilter(key="modality", value="CT")))[0])
        assert [i for i, _ in after] == [i for i, _ in before]
        np.testing.assert_allclose([s for _, s in after], [s for _, s in before], atol=1e-5)
        manifest = KnowledgeBase.read_manifest(moved)
        assert manifest["backend"]["name"] == name.split("-")[0]
        if name in ("milvus", "qdrant"):  # an embedded store inside the folder: recorded relative to it
            assert not Path(manifest["backend"]["uri" if name == "milvus" else "path"]).is_absolute()
    finally:
        again.close()


@pytest.mark.parametrize("name", DATABASES)
def test_unpersisted_change_is_detected_on_reopen(name: str, items: list[KBItem], tmp_path: Path) -> None:
    kb = KnowledgeBase.build(items[:10], PixelEmbedding(), backend=_config(name, tmp_path / "kb"), show_progress=False)
    kb.persist(tmp_path / "kb")
    kb.delete(["r1"])  # the collections change now; the folder is not persisted again
    kb.close()
    with pytest.raises(ValueError, match=r"holds 9 rows but .* lists 10 items; it was changed"):
        KnowledgeBase.from_persist_dir(tmp_path / "kb", PixelEmbedding())


# ---------------------------------------------------------------------------- bad inputs
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_servers_are_named(items: list[KBItem]) -> None:
    port = _closed_port()
    with pytest.raises(ConnectionError, match=rf"cannot reach Milvus at 'http://127.0.0.1:{port}'"):
        KnowledgeBase.build(items[:2], PixelEmbedding(), backend=MilvusBackendConfig(uri=f"http://127.0.0.1:{port}", timeout=2), show_progress=False)
    with pytest.raises(ConnectionError, match=rf"cannot reach Qdrant at 'http://127.0.0.1:{port}'"):
        KnowledgeBase.build(items[:2], PixelEmbedding(), backend=QdrantBackendConfig(url=f"http://127.0.0.1:{port}", timeout=2), show_progress=False)


@pytest.mark.parametrize("name", DATABASES)
def test_collections_of_another_encoder_or_dimension_are_refused(name: str, items: list[KBItem], tmp_path: Path) -> None:
    store = tmp_path / "store"
    kb_a = KnowledgeBase.build(items[:6], PixelEmbedding(), backend=_config(name, store, "kb_a"), show_progress=False)
    kb_a.persist(tmp_path / "a")
    with pytest.raises(FileExistsError, match=r"kb_a(_[0-9a-f]{8})?_image' already exists"):
        KnowledgeBase.build(items[:6], PixelEmbedding(), backend=_config(name, store, "kb_a"), show_progress=False)
    other = PixelEmbedding(salt="x", model_name="pixel-other")
    kb_b = KnowledgeBase.build(items[:6], other, backend=_config(name, store, "kb_b"), show_progress=False)
    kb_b.persist(tmp_path / "b")
    small = PixelEmbedding(dim=24, model_name="pixel-24")
    kb_c = KnowledgeBase.build(items[:6], small, backend=_config(name, store, "kb_c"), show_progress=False)
    kb_c.persist(tmp_path / "c")
    # KB b's folder pointed at KB a's collections: same dim, another encoder.
    with pytest.raises(EncoderMismatchError, match="was built with PixelEmbedding, model 'pixel-stub'"):
        KnowledgeBase.from_persist_dir(tmp_path / "b", other, backend=_config(name, store, "kb_a"))
    with pytest.raises(ValueError, match="holds 48-d vectors but the knowledge base is 24-d"):
        KnowledgeBase.from_persist_dir(tmp_path / "c", small, backend=_config(name, store, "kb_a"))
    with pytest.raises(FileNotFoundError, match=r"kb_z(_[0-9a-f]{8})?_image' not found"):
        KnowledgeBase.from_persist_dir(tmp_path / "a", PixelEmbedding(), backend=_config(name, store, "kb_z"))
    kb_a.close()


@pytest.mark.parametrize("name", ["milvus"])  # the server's collections take ~3 s each to create: Lite suffices here
def test_failed_build_leaves_no_collection(name: str, items: list[KBItem], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_add = MilvusIndex.add

    def text_add_fails(self: MilvusIndex, vectors: np.ndarray, batch: Any, hashes: Any) -> None:
        real_add(self, vectors, batch, hashes)
        if self._modality == "text":
            raise RuntimeError("server went away mid-build")

    monkeypatch.setattr(MilvusIndex, "add", text_add_fails)
    config = _config(name, tmp_path)
    with pytest.raises(RuntimeError, match="mid-build"):
        KnowledgeBase.build(items[:5], PixelEmbedding(), backend=config, show_progress=False)
    assert [c for c in config.connect().list_collections() if c.startswith(config.collection)] == []
    monkeypatch.setattr(MilvusIndex, "add", real_add)
    kb = KnowledgeBase.build(items[:5], PixelEmbedding(), backend=config, show_progress=False)  # the name is free again
    assert len(kb) == 5
    kb.close()


def test_backend_configs_validate_and_record_no_secrets(tmp_path: Path) -> None:
    assert sorted(BACKENDS) == ["faiss", "milvus", "qdrant"]
    with pytest.raises(ValueError, match="pass exactly one of path="):
        QdrantBackendConfig()
    with pytest.raises(ValueError, match="collection 'my kb'"):
        MilvusBackendConfig(collection="my kb")
    with pytest.raises(ValueError, match="Qdrant has no IVF index"):
        KnowledgeBase(PixelEmbedding(), index_config=IndexConfig(kind="ivf"), backend=_config("qdrant", tmp_path))
    record = MilvusBackendConfig(uri="http://milvus:19530", token="root:secret").for_manifest(tmp_path)
    assert "token" not in record and record["uri"] == "http://milvus:19530"
    assert "api_key" not in QdrantBackendConfig(url="http://q:6333", api_key="k").for_manifest(tmp_path)


# ---------------------------------------------------------------------------- the Milvus server
def test_the_milvus_server_runs(milvus_server_uri: str) -> None:
    """Reports, as a skip with its reason, a run without the server; else checks it is a 2.3+ server."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_server_uri, timeout=10)
    version = str(client.get_server_version())
    client.close()
    assert re.match(r"v2\.(\d+)", version) and int(version.split(".")[1]) >= 3, version


def test_servers_below_the_minimum_version_are_refused(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    check_server_version("v2.3.5-lite", "http://m:19530")
    check_server_version("v2.5.0", "http://m:19530")
    with pytest.raises(ServerVersionError, match=r"Milvus at 'http://m:19530' is version v2\.2\.16; the Milvus backend needs a server >= 2\.3"):
        check_server_version("v2.2.16", "http://m:19530")
    if not _server_available():
        return
    from pymilvus import MilvusClient

    uri = request.getfixturevalue("milvus_server_uri")
    monkeypatch.setattr(MilvusClient, "get_server_version", lambda self, **kwargs: "v2.2.9")
    with pytest.raises(ServerVersionError, match="is version v2.2.9"):
        MilvusBackendConfig(uri=uri, db_name="default").connect()  # another db: not the cached client


def test_collections_of_an_earlier_version_with_a_nullable_label_still_filter(
    items: list[KBItem], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Milvus Lite KBs built before has_label (a nullable label) keep their filter semantics."""
    real_create = MilvusIndex._create

    def legacy_create(self: MilvusIndex, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=256)
        schema.add_field("label", DataType.VARCHAR, max_length=512, nullable=True)
        schema.add_field("source", DataType.VARCHAR, max_length=512)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index_params = self._client.prepare_index_params()
        index_params.add_index("vector", index_type="FLAT", metric_type="IP")
        self._client.create_collection(self._name, schema=schema, index_params=index_params, properties=self._properties(), consistency_level="Strong")
        self._dim, self._legacy_label = dim, True

    monkeypatch.setattr(MilvusIndex, "_create", legacy_create)
    kb = KnowledgeBase.build(items, PixelEmbedding(), backend=_config("milvus", tmp_path / "kb"), show_progress=False)
    kb.persist(tmp_path / "kb")
    kb.close()
    monkeypatch.setattr(MilvusIndex, "_create", real_create)
    again = KnowledgeBase.from_persist_dir(tmp_path / "kb", PixelEmbedding())  # detects the old schema
    filters, rule = FILTER_CASES["label in / nin, null label"]
    allowed = [rule(it) for it in again.items]
    queries = np.random.default_rng(4).normal(size=(3, DIM)).astype(np.float32)
    _assert_same(again.search(queries, "image", 8, filters=filters), _expected(again, queries, "image", 8, allowed))
    again.add(_items(tmp_path / "more", n=2, start=200, seed=5), show_progress=False)  # rows written the old way
    assert again.search(again.image_vectors[[-1]], "image", 1)[0][0].item.id == "r201"
    again.close()


def test_milvus_searches_wait_for_consistency_only_after_this_processs_writes(
    items: list[KBItem], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb = KnowledgeBase.build(items[:6], PixelEmbedding(), backend=_config("milvus", tmp_path), show_progress=False)
    levels: list[str] = []
    real_call = MilvusIndex._call

    def recording(self: MilvusIndex, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "search" and self._modality == "image":
            levels.append(kwargs["consistency_level"])
        return real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(MilvusIndex, "_call", recording)
    for _ in range(2):
        kb.search(kb.image_vectors[:1], "image", 2)
    kb.delete(["r0"])
    hits = kb.search(kb.image_vectors[:1], "image", 6)
    assert "r0" not in [h.item.id for h in hits[0]] and len(hits[0]) == 5
    assert levels == ["Strong", "Bounded", "Strong"]  # after the build, later, after the delete
    kb.close()
