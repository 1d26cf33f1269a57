"""Tests of the ELPV knowledge-base / case split (real elpv images, a stratified subset)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llama_index_lvlm_retriever.data.elpv import (
    ELPV_CITATION,
    ELPV_LABEL_NAMES,
    ELPV_LICENSE,
    ElpvArrays,
    ElpvSplits,
    _check_disjoint,
    elpv_caption,
    load_elpv_splits,
)
from llama_index_lvlm_retriever.data.images import image_content_hash

FRACTIONS = (0.5, 0.2, 0.05, 0.25)
LIMIT = 400


@pytest.fixture(scope="module")
def elpv_arrays() -> ElpvArrays:
    load_dataset = pytest.importorskip("elpv_dataset.utils").load_dataset
    images, probabilities, cell_types = load_dataset()
    return np.asarray(images), np.asarray(probabilities), np.asarray(cell_types)


@pytest.fixture(scope="module")
def splits(elpv_arrays: ElpvArrays, tmp_path_factory: pytest.TempPathFactory) -> ElpvSplits:
    return load_elpv_splits(
        tmp_path_factory.mktemp("elpv"), limit=LIMIT, seed=0, dataset=elpv_arrays
    )


def _parts(splits: ElpvSplits) -> dict[str, list]:
    return {"kb": splits.kb, "train": splits.train, "val": splits.val, "test": splits.test}


def _stratum(record_metadata: dict) -> tuple[int, str]:
    return record_metadata["grade"], record_metadata["cell_type"]


def test_sizes_follow_fractions(splits: ElpvSplits) -> None:
    sizes = {name: len(part) for name, part in _parts(splits).items()}
    assert sum(sizes.values()) == LIMIT
    # 8 strata, each cut with a rounding error under one image per boundary.
    for name, fraction in zip(sizes, FRACTIONS, strict=True):
        assert abs(sizes[name] - fraction * LIMIT) <= 8, (name, sizes)
    assert splits.label_names == ("0", "1", "2", "3")


def test_split_is_stratified_by_grade_and_cell_type(
    splits: ElpvSplits, elpv_arrays: ElpvArrays
) -> None:
    per_split = {
        name: Counter(_stratum(r.metadata) for r in part) for name, part in _parts(splits).items()
    }
    total = sum(per_split.values(), Counter())
    assert len(total) == 8  # 4 grades x 2 cell types, all present in the subset
    # The subset keeps the full dataset's stratum shares (largest remainder: error < 1 image).
    _, probabilities, cell_types = elpv_arrays
    full = Counter(
        zip(np.rint(probabilities * 3).astype(int).tolist(), cell_types.tolist(), strict=True)
    )
    for key, count in total.items():
        assert abs(count - full[key] * LIMIT / len(probabilities)) < 1, key
    for key, n in total.items():
        for name, fraction in zip(per_split, FRACTIONS, strict=True):
            # Midpoint rule: each split gets its share of the stratum within one image.
            assert abs(per_split[name][key] - fraction * n) <= 1, (name, key, n)


def test_no_image_in_two_splits(splits: ElpvSplits) -> None:
    hashes = {
        name: {image_content_hash(r.image_path) for r in part}
        for name, part in _parts(splits).items()
    }
    ids = {name: {r.id for r in part} for name, part in _parts(splits).items()}
    names = list(hashes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not hashes[a] & hashes[b], (a, b)
            assert not ids[a] & ids[b], (a, b)


def test_records_match_the_raw_metadata(splits: ElpvSplits, elpv_arrays: ElpvArrays) -> None:
    _, probabilities, cell_types = elpv_arrays
    words = {"mono": "monocrystalline", "poly": "polycrystalline"}
    for item in splits.kb:
        index = item.metadata["elpv_index"]
        probability = float(probabilities[index])
        grade = round(probability * 3)
        assert item.source == "elpv"
        assert item.label == str(grade)
        assert item.metadata["cell_type"] == str(cell_types[index])
        assert item.metadata["probability"] == probability
        assert item.text == (
            f"Electroluminescence image of a {words[str(cell_types[index])]} solar cell; "
            f"expert defect grade {grade} of 3 (defect probability {probability:.2f})."
        )
    for case in splits.train + splits.val + splits.test:
        index = case.metadata["elpv_index"]
        assert case.question == ""
        assert case.labels == (str(round(float(probabilities[index]) * 3)),)


def test_pngs_are_resized_greyscale_copies(splits: ElpvSplits, elpv_arrays: ElpvArrays) -> None:
    images, _, _ = elpv_arrays
    item = splits.kb[0]
    with Image.open(item.image_path) as png:
        assert png.size == (48, 48) and png.mode == "L"
        pixels = np.asarray(png, dtype=float)
    raw = np.asarray(
        Image.fromarray(images[item.metadata["elpv_index"]]).resize((48, 48)), dtype=float
    )
    # Same image up to the resampling filter: strongly correlated with the raw cell.
    assert np.corrcoef(pixels.ravel(), raw.ravel())[0, 1] > 0.9


def test_caption_examples() -> None:
    assert elpv_caption("mono", 1 / 3) == (
        "Electroluminescence image of a monocrystalline solar cell; expert defect grade 1 of 3 "
        "(defect probability 0.33)."
    )
    assert elpv_caption("poly", 1.0).endswith("grade 3 of 3 (defect probability 1.00).")
    assert "polycrystalline" in elpv_caption("poly", 0.0)


def test_deterministic_under_seed(elpv_arrays: ElpvArrays, tmp_path: Path) -> None:
    def ids(s: ElpvSplits) -> list[list[str]]:
        return [[r.id for r in part] for part in _parts(s).values()]

    a = load_elpv_splits(tmp_path / "a", limit=120, seed=3, dataset=elpv_arrays)
    b = load_elpv_splits(tmp_path / "b", limit=120, seed=3, dataset=elpv_arrays)
    c = load_elpv_splits(tmp_path / "c", limit=120, seed=4, dataset=elpv_arrays)
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_pngs_are_written_once(elpv_arrays: ElpvArrays, tmp_path: Path) -> None:
    first = load_elpv_splits(tmp_path, limit=40, seed=0, dataset=elpv_arrays)
    paths = sorted(Path(r.image_path) for r in first.kb + first.train + first.val + first.test)
    assert len(paths) == 40 and all(p.parent == tmp_path for p in paths)
    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    damaged = paths[0]
    damaged.write_bytes(b"not a png")
    mtime_damaged = damaged.stat().st_mtime_ns
    load_elpv_splits(tmp_path, limit=40, seed=0, dataset=elpv_arrays)
    for p in paths[1:]:
        assert p.stat().st_mtime_ns == mtimes[p], p
    assert damaged.read_bytes().startswith(b"\x89PNG")  # only the damaged file was rewritten
    assert damaged.stat().st_mtime_ns >= mtime_damaged
    assert sorted(tmp_path.iterdir()) == paths  # no temp files left behind


def test_duplicate_images_share_a_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 64, 64), dtype=np.uint8)
    # Ten planted copies: image 30 + i repeats image i (same labels, as in real duplicates).
    images[30:40] = images[0:10]
    probabilities = np.array([(i % 30 % 4) / 3 for i in range(60)])
    cell_types = np.array(["mono" if i % 30 < 15 else "poly" for i in range(60)])
    splits = load_elpv_splits(
        tmp_path, image_size=16, dataset=(images, probabilities, cell_types), seed=1
    )
    where = {r.metadata["elpv_index"]: name for name, part in _parts(splits).items() for r in part}
    assert len(where) == 60
    for i in range(10):
        assert where[i] == where[30 + i], i


def test_disjointness_check_raises_on_a_leak() -> None:
    with pytest.raises(RuntimeError, match=r"ELPV images 1 \(kb\) and 2 \(test\) have identical"):
        _check_disjoint({1: "kb", 2: "test", 3: "kb"}, {1: "h", 2: "h", 3: "g"})


def test_licence_and_citation() -> None:
    assert "CC BY-NC-SA 4.0" in ELPV_LICENSE
    assert "10.4229/35thEUPVSEC20182018-5CV.3.15" in ELPV_CITATION
    assert ELPV_LABEL_NAMES == ("0", "1", "2", "3")


def _tiny_dataset() -> ElpvArrays:
    images = np.zeros((4, 20, 20), dtype=np.uint8)
    return images, np.array([0.0, 1 / 3, 2 / 3, 1.0]), np.array(["mono", "poly", "mono", "poly"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fractions": (0.5, 0.5)}, ValueError, r"fractions must have 4 entries"),
        ({"fractions": (0.5, 0.2, 0.2, 0.2)}, ValueError, r"fractions must sum to 1"),
        ({"fractions": (0.0, 0.5, 0.25, 0.25)}, ValueError, r"kb > 0"),
        ({"image_size": 4}, ValueError, r"image_size must be an int >= 8, got 4"),
        ({"limit": 2}, ValueError, r"limit must be None or an int >= 4, got 2"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_elpv_splits(tmp_path, dataset=_tiny_dataset(), **kwargs)


def test_bad_dataset_values(tmp_path: Path) -> None:
    images, probabilities, cell_types = _tiny_dataset()
    with pytest.raises(
        ValueError, match=r"ELPV image 1 defect probability 0\.5 is not one of 0, 1/3, 2/3, 1"
    ):
        load_elpv_splits(tmp_path, dataset=(images, np.array([0.0, 0.5, 1.0, 1.0]), cell_types))
    with pytest.raises(ValueError, match=r"ELPV image 2 has cell type 'thin-film'"):
        load_elpv_splits(
            tmp_path,
            dataset=(images, probabilities, np.array(["mono", "poly", "thin-film", "mono"])),
        )
    with pytest.raises(ValueError, match=r"dataset arrays differ in length: 4 images, 3"):
        load_elpv_splits(tmp_path, dataset=(images, probabilities[:3], cell_types))
    with pytest.raises(ValueError, match=r"\(n, height, width\) uint8 array"):
        load_elpv_splits(tmp_path, dataset=(images.astype(float), probabilities, cell_types))
    with pytest.raises(ValueError, match=r"unknown ELPV cell type 'cdte'"):
        elpv_caption("cdte", 0.0)
