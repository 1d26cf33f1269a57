"""LVLMAwareRetriever with metadata filters: constructor filters ANDed with per-query ones, on faiss and Milvus Lite.

``ColourEmbedding`` embeds a solid-colour image as its RGB colour (3-d) and every text as (1, 1, 1),
so the image head ranks pairs by colour cosine with the query. With the query colour (255, 0, 0):

    id   colour          modality  patient   image cosine with red
    a    (250, 5, 0)     CT        p1        0.9998
    b    (240, 20, 0)    CT        p2        0.9965
    c    (230, 40, 0)    MR        p1        0.9852
    d    (200, 80, 0)    CT        p3        0.9285
    e    (0, 0, 255)     CT        -         0

``modality == "CT"`` drops c; ``patient_id != "p1"`` drops a and c (e has no patient id and stays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.schema import QueryBundle
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters
from PIL import Image

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.kb.backends import FaissBackendConfig, MilvusBackendConfig
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever

COLOURS = {"a": (250, 5, 0), "b": (240, 20, 0), "c": (230, 40, 0), "d": (200, 80, 0), "e": (0, 0, 255)}
META = {"a": ("CT", "p1"), "b": ("CT", "p2"), "c": ("MR", "p1"), "d": ("CT", "p3"), "e": ("CT", None)}


class ColourEmbedding(MultiModalEmbedding):
    model_name: str = "colour-stub"

    @classmethod
    def class_name(cls) -> str:
        return "ColourEmbedding"

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        with Image.open(img_file_path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0).tolist()

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._get_image_embedding(img_file_path)

    def _get_text_embedding(self, text: str) -> list[float]:
        return [1.0, 1.0, 1.0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


def _png(path: Path, colour: tuple[int, int, int]) -> str:
    Image.new("RGB", (4, 4), colour).save(path)
    return str(path)


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_constructor_and_per_query_filters(backend: str, tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    items = []
    for key, colour in COLOURS.items():
        modality, patient = META[key]
        metadata = {"modality": modality} | ({"patient_id": patient} if patient else {})
        items.append(KBItem(id=key, image_path=_png(tmp_path / f"{key}.png", colour), text=key, metadata=metadata))
    config = MilvusBackendConfig(uri=str(tmp_path / "kb.db")) if backend == "milvus" else FaissBackendConfig()
    kb = KnowledgeBase.build(items, ColourEmbedding(), backend=config, show_progress=False)
    query = _png(tmp_path / "query.png", (255, 0, 0))
    ct = MetadataFilters(filters=[MetadataFilter(key="modality", value="CT")])
    retriever = LVLMAwareRetriever(kb, k_image=3, k_text=0, filters=ct)
    assert [n.node.node_id for n in retriever.retrieve(QueryBundle(query_str="", image_path=query))] == ["a", "b", "d"]
    not_p1 = MetadataFilters(filters=[MetadataFilter(key="patient_id", operator="!=", value="p1")])
    per_case = retriever.retrieve_batch([query, query], filters=[not_p1, None])
    assert [[n.node.node_id for n in nodes] for nodes in per_case] == [["b", "d", "e"], ["a", "b", "d"]]
    hits = retriever.search_heads(retriever.embed_queries([query]), 4, 0, filters=not_p1)
    assert [h.item.id for h in hits["image"][0]] == ["b", "d", "e"]
    with pytest.raises(ValueError, match="filter on unknown field 'patient'"):
        LVLMAwareRetriever(kb, filters=MetadataFilters(filters=[MetadataFilter(key="patient", value="p1")]))
    kb.close()
