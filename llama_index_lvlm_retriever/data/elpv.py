"""The ELPV solar-cell dataset as a knowledge base and labelled train/val/test cases, offline.

ELPV (electroluminescence images of photovoltaic cells) ships inside the ``elpv-dataset`` pip
package: 2,624 greyscale 300x300 cell images, each with an expert defect probability in
{0, 1/3, 2/3, 1} (four grades) and a cell type (monocrystalline or polycrystalline). It is small
enough to run the whole retrieve-then-read pipeline on a CPU, which makes it the data of the
offline miniature (``make demo``).

:func:`load_elpv_splits` resizes the images, writes them once as PNGs, and makes a seeded split
stratified by (grade, cell type). Images with identical pixels (by :func:`image_content_hash` of the
resized image) always land in the same split, so no query can retrieve a copy of itself.

Licence: the images and labels are CC BY-NC-SA 4.0 (see :data:`ELPV_LICENSE` and
:data:`ELPV_CITATION`); this module only reads them from the installed package.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from llama_index_lvlm_retriever.data.images import image_content_hash
from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.storage.files import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "ELPV_CITATION",
    "ELPV_LABEL_NAMES",
    "ELPV_LICENSE",
    "ELPV_SOURCE",
    "ElpvArrays",
    "ElpvSplits",
    "elpv_caption",
    "load_elpv_arrays",
    "load_elpv_splits",
]

ELPV_SOURCE = "elpv"
"""Value of ``KBItem.source`` for every ELPV item."""

ELPV_LABEL_NAMES: tuple[str, ...] = ("0", "1", "2", "3")
"""Label names: the expert defect grade ``round(3 * probability)``, 0 (intact) to 3 (defective)."""

ELPV_LICENSE = (
    "The ELPV dataset (images and labels) is licensed under the Creative Commons "
    "Attribution-NonCommercial-ShareAlike 4.0 International licence (CC BY-NC-SA 4.0), "
    "https://creativecommons.org/licenses/by-nc-sa/4.0/. Derived files (resized PNGs, splits) "
    "inherit it: non-commercial use only, with attribution, shared under the same licence."
)
"""The dataset's licence, to print next to any artifact derived from it."""

ELPV_CITATION = (
    "Buerhop-Lutz, C.; Deitsch, S.; Maier, A.; Gallwitz, F.; Berger, S.; Doll, B.; Hauch, J.; "
    "Camus, C. & Brabec, C. J. A Benchmark for Visual Identification of Defective Solar Cells in "
    "Electroluminescence Imagery. European PV Solar Energy Conference and Exhibition (EU PVSEC), "
    "2018. DOI: 10.4229/35thEUPVSEC20182018-5CV.3.15\n"
    "Deitsch, S.; Christlein, V.; Berger, S.; Buerhop-Lutz, C.; Maier, A.; Gallwitz, F. & Riess, C. "
    "Automatic classification of defective photovoltaic module cells in electroluminescence "
    "images. Solar Energy, 2019, 185, 455-468. DOI: 10.1016/j.solener.2019.02.067\n"
    "Deitsch, S., Buerhop-Lutz, C., Sovetkin, E., Steland, A., Maier, A., Gallwitz, F., & Riess, "
    "C. (2021). Segmentation of photovoltaic module cells in uncalibrated electroluminescence "
    "images. Machine Vision and Applications, 32(4). DOI: 10.1007/s00138-021-01191-9"
)
"""The publications the dataset's authors ask users to cite."""

_CELL_TYPE_WORDS = {"mono": "monocrystalline", "poly": "polycrystalline"}
_SPLIT_NAMES = ("kb", "train", "val", "test")
_N_GRADES = len(ELPV_LABEL_NAMES) - 1  # probabilities are multiples of 1/3

ElpvArrays = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(images (n, h, w) uint8, probabilities (n,), cell types (n,))`` as ``load_dataset`` returns."""


@dataclass(frozen=True)
class ElpvSplits:
    """The ELPV knowledge base and labelled cases produced by :func:`load_elpv_splits`.

    Args:
        kb: Knowledge-base pairs (image + metadata caption), ``label`` = grade name.
        train: Training cases (question ``""``, labels ``(grade,)``).
        val: Validation cases.
        test: Test cases.
        label_names: The class names, ``("0", "1", "2", "3")``.
        image_dir: Folder holding every split's PNGs.
    """

    kb: list[KBItem]
    train: list[Case]
    val: list[Case]
    test: list[Case]
    label_names: tuple[str, ...]
    image_dir: Path


@dataclass(frozen=True)
class _Record:
    index: int
    stem: str
    grade: int
    probability: float
    cell_type: str


def elpv_caption(cell_type: str, probability: float) -> str:
    """Describe an ELPV image honestly from its metadata (no invented findings).

    Args:
        cell_type: ``"mono"`` or ``"poly"``.
        probability: The expert defect probability, a multiple of 1/3 in [0, 1].

    Returns:
        The caption.

    Raises:
        ValueError: Unknown cell type, or a probability that is not one of the four grades.

    Example:
        >>> elpv_caption("mono", 1 / 3)
        'Electroluminescence image of a monocrystalline solar cell; expert defect grade 1 of 3 (defect probability 0.33).'
    """
    if cell_type not in _CELL_TYPE_WORDS:
        raise ValueError(
            f"unknown ELPV cell type {cell_type!r}; expected one of {sorted(_CELL_TYPE_WORDS)}"
        )
    grade = _grade(probability)
    return (
        f"Electroluminescence image of a {_CELL_TYPE_WORDS[cell_type]} solar cell; expert defect "
        f"grade {grade} of {_N_GRADES} (defect probability {probability:.2f})."
    )


def load_elpv_splits(
    image_dir: str | Path,
    *,
    image_size: int = 48,
    seed: int = 0,
    fractions: Sequence[float] = (0.5, 0.2, 0.05, 0.25),
    limit: int | None = None,
    dataset: ElpvArrays | None = None,
) -> ElpvSplits:
    """Write resized ELPV PNGs and split them into a knowledge base and train/val/test cases.

    The split is seeded and stratified by (defect grade, cell type): inside each stratum the
    images are shuffled and cut at the cumulative ``fractions``. Images whose resized pixels are
    identical form one group that goes to a single split (the raw data has duplicates). PNGs are
    written atomically and only when missing or different, so a second call rewrites nothing.

    Args:
        image_dir: Folder for the PNGs (created if missing); paths in the records point into it.
        image_size: Side of the square, resized greyscale images, in pixels.
        seed: Seed of the subset choice and the split.
        fractions: Shares of (kb, train, val, test); non-negative, summing to 1, kb > 0.
        limit: Use a stratified subset of about this many images (fast tests); ``None`` = all.
        dataset: The ``(images, probabilities, cell types)`` triple of
            ``elpv_dataset.utils.load_dataset()``; loaded from the installed package when
            ``None`` (pass it to avoid re-reading 2,624 files on every call).

    Returns:
        The :class:`ElpvSplits`.

    Raises:
        ValueError: Bad ``image_size``, ``fractions`` or ``limit``, or malformed ``dataset``.
        ImportError: ``dataset`` is ``None`` and ``elpv-dataset`` is not installed.
        RuntimeError: The finished split has the same image (by content hash) in two splits.

    Example:
        >>> import tempfile
        >>> splits = load_elpv_splits(tempfile.mkdtemp(), limit=40)  # doctest: +SKIP
        >>> splits.kb[0].source, splits.label_names  # doctest: +SKIP
        ('elpv', ('0', '1', '2', '3'))
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    shares = _check_fractions(fractions)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 4):
        raise ValueError(f"limit must be None or an int >= 4, got {limit!r}")
    images, records = _records(dataset if dataset is not None else _load_dataset())

    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(records):
        records = _stratified_subset(records, limit, rng)

    image_dir = Path(image_dir)
    hashes: dict[int, str] = {}
    paths: dict[int, Path] = {}
    n_written = 0
    for record in records:
        png = _png_bytes(images[record.index], image_size)
        hashes[record.index] = image_content_hash(png)
        paths[record.index] = image_dir / f"{record.stem}.png"
        n_written += _write_if_changed(paths[record.index], png)
    logger.info("ELPV: %d PNGs in %s (%d written)", len(records), image_dir, n_written)

    assignment = _split(records, hashes, shares, rng)
    _check_disjoint(assignment, hashes)
    by_split: dict[str, list[_Record]] = {name: [] for name in _SPLIT_NAMES}
    for record in records:
        by_split[assignment[record.index]].append(record)
    for members in by_split.values():
        members.sort(key=lambda r: r.index)
    return ElpvSplits(
        kb=[_kb_item(r, paths[r.index]) for r in by_split["kb"]],
        train=[_case(r, paths[r.index]) for r in by_split["train"]],
        val=[_case(r, paths[r.index]) for r in by_split["val"]],
        test=[_case(r, paths[r.index]) for r in by_split["test"]],
        label_names=ELPV_LABEL_NAMES,
        image_dir=image_dir,
    )


def load_elpv_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The raw ELPV data: ``(images (n, 300, 300) uint8, grades (n,) int 0-3, cell types (n,) str)``.

    Raises:
        ImportError: ``elpv-dataset`` is not installed.
        ValueError: A probability that is not one of the four grades.
    """
    images, records = _records(_load_dataset())
    grades = np.array([record.grade for record in records], dtype=np.int64)
    cell_types = np.array([record.cell_type for record in records])
    return images, grades, cell_types


def _load_dataset() -> ElpvArrays:
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as err:
        raise ImportError(
            "the ELPV data needs the elpv-dataset package: pip install elpv-dataset "
            "(or pass dataset=(images, probabilities, cell_types))"
        ) from err
    images, probabilities, cell_types = load_dataset()
    return np.asarray(images), np.asarray(probabilities), np.asarray(cell_types)


def _grade(probability: float, where: str = "") -> int:
    grade = round(float(probability) * _N_GRADES)
    # 1e-6 tolerates the float text of 1/3 and 2/3 in labels.csv, nothing coarser.
    if not 0 <= grade <= _N_GRADES or abs(grade - float(probability) * _N_GRADES) > 1e-6:
        raise ValueError(
            f"ELPV{where} defect probability {float(probability)!r} is not one of 0, 1/3, 2/3, 1; "
            "pass the probabilities of elpv_dataset.utils.load_dataset()"
        )
    return grade


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    shares = tuple(float(f) for f in fractions)
    if len(shares) != len(_SPLIT_NAMES):
        raise ValueError(
            f"fractions must have 4 entries (kb, train, val, test), got {len(shares)}: {shares}"
        )
    if any(not np.isfinite(f) or f < 0 for f in shares) or shares[0] <= 0:
        raise ValueError(f"fractions must be finite, >= 0 and kb > 0, got {shares}")
    if abs(sum(shares) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {shares} (sum {sum(shares)})")
    return shares


def _records(dataset: ElpvArrays) -> tuple[np.ndarray, list[_Record]]:
    images, probabilities, cell_types = (np.asarray(a) for a in dataset)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"dataset images must be a (n, height, width) uint8 array, got shape {images.shape} "
            f"dtype {images.dtype}"
        )
    if not len(images) == len(probabilities) == len(cell_types):
        raise ValueError(
            f"dataset arrays differ in length: {len(images)} images, {len(probabilities)} "
            f"probabilities, {len(cell_types)} cell types"
        )
    records = []
    for index, (probability, cell_type) in enumerate(zip(probabilities, cell_types, strict=True)):
        cell_type = str(cell_type)
        if cell_type not in _CELL_TYPE_WORDS:
            raise ValueError(
                f"ELPV image {index} has cell type {cell_type!r}; expected one of "
                f"{sorted(_CELL_TYPE_WORDS)}"
            )
        records.append(
            _Record(
                index=index,
                stem=f"elpv_{index:04d}",
                grade=_grade(probability, f" image {index}"),
                probability=float(probability),
                cell_type=cell_type,
            )
        )
    return images, records


def _largest_remainder(counts: Sequence[int], total: int) -> list[int]:
    """Integer quotas proportional to ``counts`` summing to ``total`` (Hamilton's method)."""
    exact = np.asarray(counts, dtype=float) * total / max(sum(counts), 1)
    quotas = np.floor(exact).astype(int)
    # Ties broken by position, so the result depends on nothing but the inputs.
    order = np.argsort(-(exact - quotas), kind="stable")
    for i in order[: total - int(quotas.sum())]:
        quotas[i] += 1
    return quotas.tolist()


def _strata(records: Sequence[_Record]) -> dict[tuple[int, str], list[_Record]]:
    strata: dict[tuple[int, str], list[_Record]] = defaultdict(list)
    for record in records:
        strata[(record.grade, record.cell_type)].append(record)
    return dict(sorted(strata.items()))


def _stratified_subset(
    records: Sequence[_Record], limit: int, rng: np.random.Generator
) -> list[_Record]:
    strata = _strata(records)
    quotas = _largest_remainder([len(m) for m in strata.values()], limit)
    chosen: list[_Record] = []
    for members, quota in zip(strata.values(), quotas, strict=True):
        picks = rng.permutation(len(members))[:quota]
        chosen.extend(members[i] for i in picks)
    return sorted(chosen, key=lambda r: r.index)


def _split(
    records: Sequence[_Record],
    hashes: dict[int, str],
    shares: tuple[float, ...],
    rng: np.random.Generator,
) -> dict[int, str]:
    """Map each record index to a split name; duplicate groups are assigned as one unit."""
    groups: dict[str, list[_Record]] = defaultdict(list)
    for record in records:
        groups[hashes[record.index]].append(record)
    # A group is stratified by its first member; duplicates almost always share their labels.
    strata: dict[tuple[int, str], list[list[_Record]]] = defaultdict(list)
    for members in groups.values():
        strata[(members[0].grade, members[0].cell_type)].append(members)
    n_conflicting = sum(
        len({(m.grade, m.cell_type) for m in members}) > 1 for members in groups.values()
    )
    if n_conflicting:
        logger.warning("ELPV: %d duplicate groups carry different labels", n_conflicting)

    bounds = np.cumsum(shares)
    assignment: dict[int, str] = {}
    for key in sorted(strata):
        stratum = strata[key]
        size = sum(len(g) for g in stratum)
        position = 0
        for g in rng.permutation(len(stratum)):
            members = stratum[g]
            # A group goes where its midpoint falls on the stratum's cumulative split axis.
            midpoint = (position + len(members) / 2) / size
            split = _SPLIT_NAMES[min(int(np.searchsorted(bounds, midpoint)), len(bounds) - 1)]
            position += len(members)
            for member in members:
                assignment[member.index] = split
    return assignment


def _check_disjoint(assignment: dict[int, str], hashes: dict[int, str]) -> None:
    seen: dict[str, tuple[str, int]] = {}
    for index, split in assignment.items():
        digest = hashes[index]
        if digest in seen and seen[digest][0] != split:
            other_split, other = seen[digest]
            raise RuntimeError(
                f"ELPV images {other} ({other_split}) and {index} ({split}) have identical pixels "
                "but landed in different splits; this is a bug in the split, please report it"
            )
        seen.setdefault(digest, (split, index))


def _png_bytes(pixels: np.ndarray, image_size: int) -> bytes:
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="L")
    # LANCZOS low-pass filters while it shrinks 300 -> ~48 px, so the cell grid does not alias.
    image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_if_changed(path: Path, data: bytes) -> int:
    if path.is_file() and path.read_bytes() == data:
        return 0
    atomic_write_bytes(path, data)
    return 1


def _metadata(record: _Record) -> dict[str, object]:
    return {
        "cell_type": record.cell_type,
        "probability": record.probability,
        "grade": record.grade,
        "elpv_index": record.index,
    }


def _kb_item(record: _Record, path: Path) -> KBItem:
    return KBItem(
        id=record.stem,
        image_path=str(path),
        text=elpv_caption(record.cell_type, record.probability),
        source=ELPV_SOURCE,
        label=ELPV_LABEL_NAMES[record.grade],
        metadata=_metadata(record),
    )


def _case(record: _Record, path: Path) -> Case:
    return Case(
        id=record.stem,
        image_path=str(path),
        question="",
        labels=(ELPV_LABEL_NAMES[record.grade],),
        metadata=_metadata(record),
    )
