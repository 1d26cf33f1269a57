"""The records every output carries: field names, provenance blocks and model cards.

Below every layer that writes outputs (``postprocessor``, ``query_engine``, ``evaluation``,
``training``, ``demo``, ``cli``): these modules import nothing of the package but
:mod:`~llama_index_lvlm_retriever.version` and :mod:`~llama_index_lvlm_retriever.storage`.

* :mod:`~llama_index_lvlm_retriever.outputs.metadata_keys`: the one vocabulary of ``Response.metadata``,
  predictions, ``diagnose``/``query --json`` and report rows;
* :mod:`~llama_index_lvlm_retriever.outputs.provenance`: what produced a result (versions, models,
  KB, heads, options);
* :mod:`~llama_index_lvlm_retriever.outputs.model_card`: the ``README.md`` written beside a trained model.

This package re-exports nothing: import the submodule you need.
"""

from __future__ import annotations

__all__: list[str] = []
