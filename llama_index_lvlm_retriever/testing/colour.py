"""A deterministic stand-in encoder: solid-colour images and colour-word captions in 3 dimensions.

Tests of retrieval, feedback and storage need vectors they can compute by hand, not a model: an
image embeds as the RGB value of its top-left pixel, a caption as the counts of the words
red/green/blue. A knowledge base of solid-colour PNGs then builds and persists in milliseconds.

Example:
    >>> ColourEmbedding().get_text_embedding("red red green")
    [2.0, 1.0, 0.0]
"""

from __future__ import annotations

from typing import Any

from llama_index.core.embeddings import MultiModalEmbedding
from PIL import Image

COLOUR_WORDS = ("red", "green", "blue")
"""The words a caption's embedding counts, in vector order."""


class ColourEmbedding(MultiModalEmbedding):
    """Image -> its (solid) RGB colour; text -> counts of the words red/green/blue."""

    model_name: str = "colour-stub"

    @classmethod
    def class_name(cls) -> str:
        return "ColourEmbedding"

    def _get_image_embedding(self, img_file_path: Any) -> list[float]:
        with Image.open(img_file_path) as img:
            return [float(c) for c in img.convert("RGB").getpixel((0, 0))]

    async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
        return self._get_image_embedding(img_file_path)

    def _get_text_embedding(self, text: str) -> list[float]:
        words = text.lower().split()
        return [float(words.count(w)) for w in COLOUR_WORDS]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


__all__ = ["COLOUR_WORDS", "ColourEmbedding"]
