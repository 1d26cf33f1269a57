"""Stand-ins for constructed test worlds: an embedding that reads a table, a reader that prefers labels.

Training tests build worlds where the right answer is known by construction: every query image's
frozen embedding is a chosen row of a table, and the reader's preference is a fixed rule. These two
stand-ins are shared so each test states only its world.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> path = write_table_image(pathlib.Path(tempfile.mkdtemp()) / "q.png", 3)
    >>> TableEmbedding(np.eye(4)).get_image_embedding(path)
    [0.0, 0.0, 0.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.embeddings import MultiModalEmbedding
from PIL import Image

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs
from llama_index_lvlm_retriever.tasks import TaskSpec

__all__ = ["LabelReader", "TableEmbedding", "write_table_image"]


def write_table_image(path: str | Path, row: int) -> str:
    """A 2x2 PNG whose first pixel encodes ``row`` (< 65,536) for :class:`TableEmbedding`; returns the path."""
    Image.new("RGB", (2, 2), (row % 256, row // 256, 0)).save(path)
    return str(path)


class TableEmbedding(MultiModalEmbedding):
    """Image -> a row of a fixed table; the row index is encoded in the image's first pixel.

    Images only: text and query-string embeddings raise ``NotImplementedError``.
    """

    model_name: str = "table-stub"
    _table: np.ndarray = PrivateAttr()

    def __init__(self, table: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._table = table

    @classmethod
    def class_name(cls) -> str:
        return "TableEmbedding"

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        with Image.open(img_file_path) as img:
            r, g, _ = img.convert("RGB").getpixel((0, 0))
        return self._table[r + 256 * g].tolist()

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._get_image_embedding(img_file_path)

    def _get_text_embedding(self, text: str) -> list[float]:
        raise NotImplementedError("the table stub embeds images only")

    def _get_query_embedding(self, query: str) -> list[float]:
        raise NotImplementedError("the table stub embeds images only")

    async def _aget_query_embedding(self, query: str) -> list[float]:
        raise NotImplementedError("the table stub embeds images only")


class LabelReader(Reader):
    """A reader that answers the candidate pair's label with probability ``hit``, the rest shared equally.

    ``inverted=True`` reverses each distribution over the task's labels, so the reader prefers a
    label other than the candidate's (a reader whose feedback points the wrong way).
    """

    def __init__(self, task: TaskSpec, *, hit: float = 0.7, inverted: bool = False,
                 model_name: str = "label-reader") -> None:
        self.task = task
        self.hit = hit
        self.inverted = inverted
        self.model_name = model_name

    def score(
        self, cases: Sequence[Case], candidates: Sequence[Sequence[KBItem | None]], *, show_progress: bool = False
    ) -> ReaderScores:
        k = check_inputs(cases, candidates)
        labels = tuple(self.task.labels)
        miss = (1.0 - self.hit) / (len(labels) - 1)
        out = np.empty((len(cases), k, len(labels)))
        for i, row in enumerate(candidates):
            for j, item in enumerate(row):
                if item is None or item.label is None:
                    raise ValueError(f"LabelReader reads labelled KB items only; case {cases[i].id!r} got "
                                     f"{'no candidate' if item is None else f'item {item.id!r} without a label'}")
                probs = np.full(len(labels), miss)
                probs[self.task.label_index(item.label)] = self.hit
                out[i, j] = np.log(probs[::-1] if self.inverted else probs)
        return ReaderScores(log_probs=out, labels=labels)
