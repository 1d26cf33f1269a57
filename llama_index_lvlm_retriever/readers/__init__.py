"""Readers: label scores for (case, retrieved candidate) pairs from an LVLM.

* :class:`Reader` / :class:`ReaderScores`: the interface everything downstream uses.
* :class:`HFLVLMReader`: any transformers image-text-to-text model, scored by likelihood.
* :class:`LlamaIndexLLMReader`: any LlamaIndex chat LLM that accepts images, one-hot answers.
* :class:`ReaderPromptConfig`: the prompt layout both share.
"""

from __future__ import annotations

from llama_index_lvlm_retriever.readers.base import (
    MULTI_LABEL_SEPARATOR,
    UNPARSED_PREDICTION,
    Reader,
    ReaderScores,
)
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader, HFLVLMReaderConfig
from llama_index_lvlm_retriever.readers.llamaindex_llm import (
    LlamaIndexLLMReader,
    LlamaIndexLLMReaderConfig,
    match_answer,
)
from llama_index_lvlm_retriever.readers.prompt import (
    PromptBuilder,
    PromptPart,
    ReaderPrompt,
    ReaderPromptConfig,
)

__all__ = [
    "MULTI_LABEL_SEPARATOR",
    "UNPARSED_PREDICTION",
    "HFLVLMReader",
    "HFLVLMReaderConfig",
    "LlamaIndexLLMReader",
    "LlamaIndexLLMReaderConfig",
    "PromptBuilder",
    "PromptPart",
    "Reader",
    "ReaderPrompt",
    "ReaderPromptConfig",
    "ReaderScores",
    "match_answer",
]
