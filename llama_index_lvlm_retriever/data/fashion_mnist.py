"""Fashion-MNIST from its idx files, as Debian's ``dataset-fashion-mnist`` package ships them.

Fashion-MNIST (Zalando Research, MIT licence) holds 70,000 greyscale 28x28 images of clothing in
10 classes: 60,000 for training and 10,000 for testing. Debian packages the four original files,
gzipped, under :data:`FASHION_MNIST_DEBIAN_DIR`; :func:`load_fashion_mnist` reads them (or the
same files, gzipped or not, from any folder) into numpy arrays, checking every header, so the
offline miniature can use a dataset larger than ELPV without a download.

The idx layout (http://yann.lecun.com/exdb/mnist/): a 4-byte big-endian magic number
``0x00 0x00 <dtype> <ndim>`` (dtype ``0x08`` = unsigned byte), then ``ndim`` big-endian uint32
sizes, then the values in C order. Images have magic 2051 (``ndim`` 3: n, 28, 28), labels 2049
(``ndim`` 1: n).
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llama_index_lvlm_retriever.errors import DataError, InputFormatError

logger = logging.getLogger(__name__)

__all__ = [
    "FASHION_MNIST_DEBIAN_DIR",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_LABEL_NAMES",
    "FashionMnist",
    "FashionMnistFormatError",
    "FashionMnistNotFoundError",
    "load_fashion_mnist",
]

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where ``apt-get install dataset-fashion-mnist`` puts the four gzipped idx files."""

FASHION_MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The four idx file names (each may also be present with a ``.gz`` suffix)."""

FASHION_MNIST_LABEL_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names in label order (label ``i`` is ``FASHION_MNIST_LABEL_NAMES[i]``)."""

_IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IMAGE_SIDE = 28
_HOW_TO_GET = (
    "install Debian's package as root (apt-get install dataset-fashion-mnist, which puts the "
    f"files in {FASHION_MNIST_DEBIAN_DIR}), or pass data_root / --data-root pointing at a folder "
    "holding the four idx files (" + ", ".join(FASHION_MNIST_FILES.values()) + ", each plain or "
    ".gz)"
)


class FashionMnistNotFoundError(DataError):
    """The Fashion-MNIST folder or one of its four idx files is missing."""


class FashionMnistFormatError(InputFormatError):
    """An idx file has a wrong magic number, shape or length, or labels out of range."""


@dataclass(frozen=True)
class FashionMnist:
    """Fashion-MNIST as numpy arrays, returned by :func:`load_fashion_mnist`.

    Args:
        train_images: ``(n_train, 28, 28)`` uint8 pixels (0 = background).
        train_labels: ``(n_train,)`` int64 class indices in ``[0, 10)``.
        test_images: ``(n_test, 28, 28)`` uint8 pixels.
        test_labels: ``(n_test,)`` int64 class indices.
        label_names: The 10 class names, :data:`FASHION_MNIST_LABEL_NAMES`.
        data_root: The folder the files were read from.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: tuple[str, ...]
    data_root: Path


def load_fashion_mnist(data_root: str | Path | None = None) -> FashionMnist:
    """Read the four Fashion-MNIST idx files (gzipped or plain) and check them.

    For each file, ``<name>`` is read if present, else ``<name>.gz``. Headers are checked
    (magic number, 28x28 images, byte length = header sizes), image and label counts must agree
    per split, and labels must lie in ``[0, 10)``.

    Args:
        data_root: Folder holding the idx files; ``None`` = :data:`FASHION_MNIST_DEBIAN_DIR`
            (Debian's ``dataset-fashion-mnist`` package).

    Returns:
        The :class:`FashionMnist` arrays (60,000 training and 10,000 test images for the real
        data set).

    Raises:
        FashionMnistNotFoundError: The folder or one of the files is missing; the message says
            how to get them (``apt-get install dataset-fashion-mnist`` as root, or a
            ``data_root`` / ``--data-root`` folder with the idx files). A ``ValueError``.
        FashionMnistFormatError: A file is not a valid idx file of the expected kind (wrong
            magic number, image size, truncated or over-long data, a count mismatch between
            images and labels, or a label outside ``[0, 10)``). A ``ValueError``.

    Example:
        >>> data = load_fashion_mnist()  # doctest: +SKIP
        >>> data.train_images.shape, data.test_labels.shape, data.label_names[9]  # doctest: +SKIP
        ((60000, 28, 28), (10000,), 'Ankle boot')
    """
    root = FASHION_MNIST_DEBIAN_DIR if data_root is None else Path(data_root)
    if not root.is_dir():
        raise FashionMnistNotFoundError(
            f"Fashion-MNIST folder {str(root)!r} does not exist; {_HOW_TO_GET}"
        )
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for key, name in FASHION_MNIST_FILES.items():
        found = _find(root, name)
        if found is None:
            missing.append(name)
        else:
            paths[key] = found
    if missing:
        raise FashionMnistNotFoundError(
            f"Fashion-MNIST folder {str(root)!r} lacks {', '.join(missing)} (plain or .gz); "
            f"{_HOW_TO_GET}"
        )

    arrays = {
        key: _read_idx(path, _IMAGE_MAGIC if key.endswith("images") else _LABEL_MAGIC)
        for key, path in paths.items()
    }
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise FashionMnistFormatError(
                f"Fashion-MNIST {split} split: {paths[f'{split}_images'].name} holds "
                f"{len(images)} images but {paths[f'{split}_labels'].name} holds {len(labels)} "
                "labels; the files must come from the same release"
            )
        if len(labels) and int(labels.max()) >= len(FASHION_MNIST_LABEL_NAMES):
            raise FashionMnistFormatError(
                f"{paths[f'{split}_labels']} holds label {int(labels.max())}; expected labels "
                f"0..{len(FASHION_MNIST_LABEL_NAMES) - 1}"
            )
    logger.info(
        "Fashion-MNIST from %s: %d training, %d test images",
        root,
        len(arrays["train_images"]),
        len(arrays["test_images"]),
    )
    return FashionMnist(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
        label_names=FASHION_MNIST_LABEL_NAMES,
        data_root=root,
    )


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as err:  # BadGzipFile is an OSError; a cut stream is an EOFError
        raise FashionMnistFormatError(
            f"{path} is not a readable gzip file ({err}); re-install or re-download it"
        ) from err


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one idx file of unsigned bytes whose header must carry ``magic``."""
    data = _read_bytes(path)
    expected_ndim = magic & 0xFF
    kind = "images" if magic == _IMAGE_MAGIC else "labels"
    if len(data) < 4:
        raise FashionMnistFormatError(
            f"{path} is {len(data)} bytes long, too short for an idx header; expected the "
            f"{kind} file (magic number {magic})"
        )
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise FashionMnistFormatError(
            f"{path} has idx magic number {got} (0x{got:08x}), expected {magic} (0x{magic:08x}) "
            f"for an unsigned-byte {kind} file with {expected_ndim} dimension(s); is it the "
            "right file, and not corrupt?"
        )
    header_end = 4 + 4 * expected_ndim
    if len(data) < header_end:
        raise FashionMnistFormatError(
            f"{path} is {len(data)} bytes long, shorter than its {header_end}-byte idx header"
        )
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_ndim)
    )
    if kind == "images" and shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
        raise FashionMnistFormatError(
            f"{path} holds images of {shape[1]}x{shape[2]} pixels, expected "
            f"{_IMAGE_SIDE}x{_IMAGE_SIDE} (Fashion-MNIST)"
        )
    n_values = int(np.prod(shape))
    if len(data) - header_end != n_values:
        raise FashionMnistFormatError(
            f"{path}: header promises shape {shape} = {n_values} bytes of data, but the file "
            f"holds {len(data) - header_end}; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_end).reshape(shape).copy()
