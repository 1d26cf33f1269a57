"""Tests of the Fashion-MNIST idx loader (small idx files written here; the real files if present)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from llama_index_lvlm_retriever.data.fashion_mnist import (
    FASHION_MNIST_DEBIAN_DIR,
    FASHION_MNIST_FILES,
    FASHION_MNIST_LABEL_NAMES,
    FashionMnistFormatError,
    FashionMnistNotFoundError,
    load_fashion_mnist,
)


def _idx_bytes(values: np.ndarray) -> bytes:
    """The idx encoding: 0x00 0x00, dtype 0x08 (ubyte), ndim, big-endian uint32 sizes, data."""
    header = bytes([0, 0, 0x08, values.ndim])
    sizes = b"".join(int(size).to_bytes(4, "big") for size in values.shape)
    return header + sizes + values.astype(np.uint8).tobytes()


def _write(path: Path, data: bytes, *, gzipped: bool) -> None:
    if gzipped:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def _write_dataset(root: Path, *, gzipped: bool) -> dict[str, np.ndarray]:
    train_images, train_labels = _fake_split(7, seed=0)
    test_images, test_labels = _fake_split(3, seed=1)
    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    for key, values in arrays.items():
        _write(root / FASHION_MNIST_FILES[key], _idx_bytes(values), gzipped=gzipped)
    return arrays


@pytest.mark.parametrize("gzipped", [True, False], ids=["gzip", "plain"])
def test_loads_idx_files(tmp_path: Path, gzipped: bool) -> None:
    expected = _write_dataset(tmp_path, gzipped=gzipped)
    data = load_fashion_mnist(tmp_path)
    assert data.data_root == tmp_path
    assert data.label_names == FASHION_MNIST_LABEL_NAMES
    assert len(data.label_names) == 10
    for key in ("train_images", "test_images"):
        got = getattr(data, key)
        assert got.dtype == np.uint8 and got.shape == expected[key].shape
        np.testing.assert_array_equal(got, expected[key])
    for key in ("train_labels", "test_labels"):
        got = getattr(data, key)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected[key].astype(np.int64))


def test_accepts_str_path_and_mixed_compression(tmp_path: Path) -> None:
    expected = _write_dataset(tmp_path, gzipped=True)
    # A plain copy of one file next to the .gz ones is read in its place.
    (tmp_path / FASHION_MNIST_FILES["test_labels"]).write_bytes(
        _idx_bytes(expected["test_labels"])
    )
    data = load_fashion_mnist(str(tmp_path))
    np.testing.assert_array_equal(data.test_labels, expected["test_labels"])


def test_missing_folder_names_both_ways_to_get_the_data(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FashionMnistNotFoundError, match="does not exist") as info:
        load_fashion_mnist(missing)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-root" in message
    assert str(missing) in message
    assert isinstance(info.value, ValueError)


def test_missing_file_is_named(tmp_path: Path) -> None:
    _write_dataset(tmp_path, gzipped=True)
    (tmp_path / (FASHION_MNIST_FILES["train_labels"] + ".gz")).unlink()
    with pytest.raises(FashionMnistNotFoundError, match="lacks train-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path)


def test_corrupt_header_is_reported(tmp_path: Path) -> None:
    expected = _write_dataset(tmp_path, gzipped=False)
    data = bytearray(_idx_bytes(expected["train_images"]))
    data[3] = 1  # ndim 1: magic 2049 (a labels file) where 2051 (images) is expected
    (tmp_path / FASHION_MNIST_FILES["train_images"]).write_bytes(bytes(data))
    with pytest.raises(
        FashionMnistFormatError, match=r"magic number 2049 .*expected 2051"
    ) as info:
        load_fashion_mnist(tmp_path)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("key", "corrupt", "match"),
    [
        ("train_images", lambda b: b[:-5], r"header promises shape \(7, 28, 28\) = 5488 bytes"),
        ("test_labels", lambda b: b + b"\x00", r"promises shape \(3,\) = 3 bytes.*holds 4"),
        ("test_labels", lambda b: b[:2], "too short for an idx header"),
        ("train_labels", lambda b: b[:6], "shorter than its 8-byte idx header"),
    ],
    ids=["truncated-images", "overlong-labels", "no-magic", "cut-header"],
)
def test_wrong_sizes_are_reported(tmp_path: Path, key: str, corrupt, match: str) -> None:
    expected = _write_dataset(tmp_path, gzipped=False)
    path = tmp_path / FASHION_MNIST_FILES[key]
    path.write_bytes(corrupt(_idx_bytes(expected[key])))
    with pytest.raises(FashionMnistFormatError, match=match):
        load_fashion_mnist(tmp_path)


def test_wrong_image_size_is_reported(tmp_path: Path) -> None:
    _write_dataset(tmp_path, gzipped=False)
    small = np.zeros((7, 27, 28), dtype=np.uint8)
    (tmp_path / FASHION_MNIST_FILES["train_images"]).write_bytes(_idx_bytes(small))
    with pytest.raises(FashionMnistFormatError, match="27x28 pixels, expected 28x28"):
        load_fashion_mnist(tmp_path)


def test_count_mismatch_and_bad_label_are_reported(tmp_path: Path) -> None:
    expected = _write_dataset(tmp_path, gzipped=False)
    labels_path = tmp_path / FASHION_MNIST_FILES["test_labels"]
    labels_path.write_bytes(_idx_bytes(expected["test_labels"][:2]))
    with pytest.raises(FashionMnistFormatError, match="holds 3 images but .* holds 2 labels"):
        load_fashion_mnist(tmp_path)
    labels_path.write_bytes(_idx_bytes(np.array([1, 10, 2], dtype=np.uint8)))
    with pytest.raises(FashionMnistFormatError, match="holds label 10; expected labels 0..9"):
        load_fashion_mnist(tmp_path)


def test_bad_gzip_is_reported(tmp_path: Path) -> None:
    _write_dataset(tmp_path, gzipped=True)
    (tmp_path / (FASHION_MNIST_FILES["test_images"] + ".gz")).write_bytes(b"not gzip at all")
    with pytest.raises(FashionMnistFormatError, match="not a readable gzip file"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(
    not FASHION_MNIST_DEBIAN_DIR.is_dir(),
    reason=f"Debian's Fashion-MNIST files are not in {FASHION_MNIST_DEBIAN_DIR}; "
    "apt-get install dataset-fashion-mnist (as root) to run this test",
)
def test_loads_real_debian_files() -> None:
    data = load_fashion_mnist()  # None = the Debian location
    assert data.train_images.shape == (60000, 28, 28)
    assert data.test_images.shape == (10000, 28, 28)
    assert data.train_images.dtype == np.uint8
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
    np.testing.assert_array_equal(np.bincount(data.train_labels, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(data.test_labels, minlength=10), [1000] * 10)
