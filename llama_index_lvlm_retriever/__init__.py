"""LVLM-aware multimodal retrieval for RAG-based medical image diagnosis, for LlamaIndex.

The public names of the design card, importable from the package root. Training lives in
:mod:`llama_index_lvlm_retriever.training`; tiny offline models in
:mod:`llama_index_lvlm_retriever.testing`.
"""

from llama_index_lvlm_retriever.data import Case, ImageLoadError, KBItem, load_image
from llama_index_lvlm_retriever.data.cases import load_cases_csv, load_cases_jsonl
from llama_index_lvlm_retriever.data.loaders import (
    kb_items_from_records,
    load_kb_csv,
    load_kb_jsonl,
    load_medmnist_npz,
)
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
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

__all__ = [
    "CLIPEmbedding",
    "Case",
    "ConsistencyEvaluator",
    "ConsistencyReport",
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
    "LlamaIndexLLMReader",
    "LlamaIndexLLMReaderConfig",
    "QueryHead",
    "QueryHeadConfig",
    "Reader",
    "ReaderPromptConfig",
    "ReaderScores",
    "SearchHit",
    "TaskSpec",
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
