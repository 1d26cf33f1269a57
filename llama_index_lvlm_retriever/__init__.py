"""LVLM-aware multimodal retrieval for RAG-based medical image diagnosis, for LlamaIndex.

The public names of the design card, importable from the package root. Training lives in
:mod:`llama_index_lvlm_retriever.training`; tiny offline models in
:mod:`llama_index_lvlm_retriever.testing`.

Names are imported on first use (PEP 562), so ``import`` of this package and the CLI's
``--help``/``--version`` stay fast; ``from ... import Name`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_index_lvlm_retriever._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from llama_index_lvlm_retriever.data import Case, ImageLoadError, KBItem, load_image
    from llama_index_lvlm_retriever.data.cases import load_cases_csv, load_cases_jsonl
    from llama_index_lvlm_retriever.data.loaders import (
        kb_items_from_records,
        load_kb_csv,
        load_kb_jsonl,
        load_medmnist_npz,
    )
    from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
    from llama_index_lvlm_retriever.errors import DataError, LVLMRetrieverError, UsageError
    from llama_index_lvlm_retriever.evaluation import (
        ConsistencyEvaluator,
        ConsistencyReport,
        evaluate_dataset,
    )
    from llama_index_lvlm_retriever.heads import QueryHead, QueryHeadConfig
    from llama_index_lvlm_retriever.kb import (
        EncoderMismatchError,
        IndexConfig,
        KnowledgeBase,
        SearchHit,
    )
    from llama_index_lvlm_retriever.postprocessor import LVLMRerank, LVLMRerankResult
    from llama_index_lvlm_retriever.query_engine import LVLMDiagnosisQueryEngine
    from llama_index_lvlm_retriever.readers import (
        HFLVLMReader,
        HFLVLMReaderConfig,
        LlamaIndexLLMReader,
        LlamaIndexLLMReaderConfig,
        Reader,
        ReaderPromptConfig,
        ReaderScores,
    )
    from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever, LVLMAwareRetrieverConfig
    from llama_index_lvlm_retriever.tasks import TaskSpec, get_task, list_tasks
    from llama_index_lvlm_retriever.version import __version__

_LAZY: dict[str, tuple[str, str]] = {
    "CLIPEmbedding": ("llama_index_lvlm_retriever.embeddings", "CLIPEmbedding"),
    "Case": ("llama_index_lvlm_retriever.data", "Case"),
    "ConsistencyEvaluator": ("llama_index_lvlm_retriever.evaluation", "ConsistencyEvaluator"),
    "ConsistencyReport": ("llama_index_lvlm_retriever.evaluation", "ConsistencyReport"),
    "DataError": ("llama_index_lvlm_retriever.errors", "DataError"),
    "EncoderMismatchError": ("llama_index_lvlm_retriever.errors", "EncoderMismatchError"),
    "HFLVLMReader": ("llama_index_lvlm_retriever.readers", "HFLVLMReader"),
    "HFLVLMReaderConfig": ("llama_index_lvlm_retriever.readers", "HFLVLMReaderConfig"),
    "ImageLoadError": ("llama_index_lvlm_retriever.errors", "ImageLoadError"),
    "IndexConfig": ("llama_index_lvlm_retriever.kb", "IndexConfig"),
    "KBItem": ("llama_index_lvlm_retriever.data", "KBItem"),
    "KnowledgeBase": ("llama_index_lvlm_retriever.kb", "KnowledgeBase"),
    "LVLMAwareRetriever": ("llama_index_lvlm_retriever.retriever", "LVLMAwareRetriever"),
    "LVLMRetrieverError": ("llama_index_lvlm_retriever.errors", "LVLMRetrieverError"),
    "LVLMAwareRetrieverConfig": ("llama_index_lvlm_retriever.retriever", "LVLMAwareRetrieverConfig"),
    "LVLMDiagnosisQueryEngine": ("llama_index_lvlm_retriever.query_engine", "LVLMDiagnosisQueryEngine"),
    "LVLMRerank": ("llama_index_lvlm_retriever.postprocessor", "LVLMRerank"),
    "LVLMRerankResult": ("llama_index_lvlm_retriever.postprocessor", "LVLMRerankResult"),
    "LlamaIndexLLMReader": ("llama_index_lvlm_retriever.readers", "LlamaIndexLLMReader"),
    "LlamaIndexLLMReaderConfig": ("llama_index_lvlm_retriever.readers", "LlamaIndexLLMReaderConfig"),
    "QueryHead": ("llama_index_lvlm_retriever.heads", "QueryHead"),
    "QueryHeadConfig": ("llama_index_lvlm_retriever.heads", "QueryHeadConfig"),
    "Reader": ("llama_index_lvlm_retriever.readers", "Reader"),
    "ReaderPromptConfig": ("llama_index_lvlm_retriever.readers", "ReaderPromptConfig"),
    "ReaderScores": ("llama_index_lvlm_retriever.readers", "ReaderScores"),
    "SearchHit": ("llama_index_lvlm_retriever.kb", "SearchHit"),
    "TaskSpec": ("llama_index_lvlm_retriever.tasks", "TaskSpec"),
    "UsageError": ("llama_index_lvlm_retriever.errors", "UsageError"),
    "__version__": ("llama_index_lvlm_retriever.version", "__version__"),
    "evaluate_dataset": ("llama_index_lvlm_retriever.evaluation", "evaluate_dataset"),
    "get_task": ("llama_index_lvlm_retriever.tasks", "get_task"),
    "kb_items_from_records": ("llama_index_lvlm_retriever.data.loaders", "kb_items_from_records"),
    "list_tasks": ("llama_index_lvlm_retriever.tasks", "list_tasks"),
    "load_cases_csv": ("llama_index_lvlm_retriever.data.cases", "load_cases_csv"),
    "load_cases_jsonl": ("llama_index_lvlm_retriever.data.cases", "load_cases_jsonl"),
    "load_image": ("llama_index_lvlm_retriever.data", "load_image"),
    "load_kb_csv": ("llama_index_lvlm_retriever.data.loaders", "load_kb_csv"),
    "load_kb_jsonl": ("llama_index_lvlm_retriever.data.loaders", "load_kb_jsonl"),
    "load_medmnist_npz": ("llama_index_lvlm_retriever.data.loaders", "load_medmnist_npz"),
}
"""Public name -> (module, attribute), imported on first access."""

__all__ = [
    "CLIPEmbedding",
    "Case",
    "ConsistencyEvaluator",
    "ConsistencyReport",
    "DataError",
    "EncoderMismatchError",
    "HFLVLMReader",
    "HFLVLMReaderConfig",
    "ImageLoadError",
    "IndexConfig",
    "KBItem",
    "KnowledgeBase",
    "LVLMDiagnosisQueryEngine",
    "LVLMRerank",
    "LVLMRerankResult",
    "LVLMAwareRetriever",
    "LVLMAwareRetrieverConfig",
    "LVLMRetrieverError",
    "LlamaIndexLLMReader",
    "LlamaIndexLLMReaderConfig",
    "QueryHead",
    "QueryHeadConfig",
    "Reader",
    "ReaderPromptConfig",
    "ReaderScores",
    "SearchHit",
    "TaskSpec",
    "UsageError",
    "__version__",
    "evaluate_dataset",
    "get_task",
    "kb_items_from_records",
    "list_tasks",
    "load_cases_csv",
    "load_cases_jsonl",
    "load_image",
    "load_kb_csv",
    "load_kb_jsonl",
    "load_medmnist_npz",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
