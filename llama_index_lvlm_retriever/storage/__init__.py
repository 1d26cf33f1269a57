"""Storage plumbing every layer may use: atomic files, the writer lock, versioned stores, folder swaps.

Lowest in the layer order beside :mod:`~llama_index_lvlm_retriever.errors`: these modules import
nothing of the package but :mod:`~llama_index_lvlm_retriever.errors` and each other, so ``data/``,
``kb/``, ``heads/``, ``training/`` and ``demo/`` all import them downward.

* :mod:`~llama_index_lvlm_retriever.storage.files`: atomic writes, umask, OSErrors that name the file;
* :mod:`~llama_index_lvlm_retriever.storage.locking`: the writer lock of a store folder;
* :mod:`~llama_index_lvlm_retriever.storage.versioned`: checksummed versions of a store, manifest last;
* :mod:`~llama_index_lvlm_retriever.storage.dirswap`: whole-folder swaps for model folders.

Internal: import the submodule you need; this package re-exports nothing, so importing one of them
does not load the others.
"""

from __future__ import annotations

__all__: list[str] = []
