"""Tiny offline models and tokenizers for tests, examples and the offline demo.

Everything here is built from configs with random (seeded) weights and an offline-trained
tokenizer, saved with ``save_pretrained`` and meant to be loaded back through the same
``from_pretrained`` path a real checkpoint takes. Nothing downloads.

Example:
    >>> import tempfile
    >>> from llama_index_lvlm_retriever.testing import build_tiny_clip
    >>> from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
    >>> embed = CLIPEmbedding.from_pretrained(build_tiny_clip(tempfile.mkdtemp()))
    >>> len(embed.get_text_embedding("chest x-ray"))
    16
"""

from __future__ import annotations

from llama_index_lvlm_retriever.testing._lvlm_common import lvlm_corpus
from llama_index_lvlm_retriever.testing.clip import build_tiny_clip, build_tiny_siglip
from llama_index_lvlm_retriever.testing.idefics3 import build_tiny_idefics3
from llama_index_lvlm_retriever.testing.llava import build_tiny_llava
from llama_index_lvlm_retriever.testing.milvus_server import MilvusServer, MilvusServerError
from llama_index_lvlm_retriever.testing.qwen2_vl import TinyQwen2VLProcessor, build_tiny_qwen2_vl
from llama_index_lvlm_retriever.testing.stubs import LabelReader, TableEmbedding, write_table_image
from llama_index_lvlm_retriever.testing.tokenizer import (
    BPEVocab,
    build_clip_tokenizer,
    save_clip_tokenizer,
    train_byte_level_bpe,
)

__all__ = [
    "BPEVocab",
    "LabelReader",
    "MilvusServer",
    "MilvusServerError",
    "TableEmbedding",
    "TinyQwen2VLProcessor",
    "build_tiny_idefics3",
    "build_tiny_llava",
    "build_tiny_qwen2_vl",
    "build_clip_tokenizer",
    "build_tiny_clip",
    "build_tiny_siglip",
    "lvlm_corpus",
    "save_clip_tokenizer",
    "train_byte_level_bpe",
    "write_table_image",
]
