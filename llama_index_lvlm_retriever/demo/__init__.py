"""The end-to-end demo (``lvlm-retriever demo``, ``make demo``): the paper's table in miniature.

:func:`run_demo` takes a :class:`DemoConfig` and runs, per seed, data split -> retriever encoder ->
knowledge base -> reader -> feedback -> LVLM-aware retriever training -> placebo -> evaluation, then
pools the seeds into one report. See :mod:`llama_index_lvlm_retriever.demo.pipeline`.
"""

from __future__ import annotations

from llama_index_lvlm_retriever.demo.config import DemoConfig, quick_config
from llama_index_lvlm_retriever.demo.run import DemoResult, run_demo

__all__ = ["DemoConfig", "DemoResult", "quick_config", "run_demo"]
