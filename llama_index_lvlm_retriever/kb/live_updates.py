"""Live updates of a knowledge base: add, delete and upsert items after the build, and ``updating``.

A mixin of :class:`~llama_index_lvlm_retriever.kb.knowledge_base.KnowledgeBase` (kept apart because
it is its own concern: keeping the rows, the frozen vectors, the hashes and every backend in step,
with an undo when a backend fails half-way). Only new items are embedded; the vectors already in
the knowledge base stay frozen, so trained query heads stay valid. ``updating`` makes a whole
load-change-persist cycle one locked step, so concurrent writers of a folder lose nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.embeddings import MultiModalEmbedding

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.kb import checks
from llama_index_lvlm_retriever.kb import encoding as enc
from llama_index_lvlm_retriever.kb import storage as store
from llama_index_lvlm_retriever.kb.backends import (
    BackendConfig,
    FaissBackendConfig,
)
from llama_index_lvlm_retriever.kb.types import (
    MODALITIES,
)
from llama_index_lvlm_retriever.storage.locking import folder_lock

logger = logging.getLogger(__name__)


class LiveUpdatesMixin:
    """``add``, ``delete``, ``upsert`` and ``updating`` for :class:`KnowledgeBase` (see the module docstring)."""

    def _store(self, step: Callable[[str], None], items: Sequence[KBItem], *, created: bool, undo: Callable[[str], None] | None = None) -> None:
        """Run ``step`` on both modalities' backends; on failure undo what was written and re-raise.

        ``created``: the backends were empty before, so undoing drops them (a failed build leaves no
        collection behind); else ``undo`` (default: delete ``items`` by id) restores each backend.
        """
        if not items:
            return
        attempted: list[str] = []
        try:
            for name in MODALITIES:
                attempted.append(name)
                step(name)
        except BaseException:
            for name in attempted:
                try:
                    if created:
                        self._indexes[name].drop()
                    elif undo is not None:
                        undo(name)
                    else:
                        self._indexes[name].delete([item.id for item in items])
                except Exception:  # keep the original error; the second one is only logged
                    logger.exception("could not undo a failed write to the %s index", name)
            raise

    # ------------------------------------------------------------------ building
    def add(
        self,
        items: Iterable[KBItem],
        *,
        batch_size: int | None = None,
        show_progress: bool = True,
        skip_bad: bool = False,
    ) -> list[str]:
        """Embed and append more pairs; existing vectors are not touched.

        An IVF index keeps the lists it was trained with. Nothing changes if an error is raised.

        Args:
            items: New pairs; their ids must not be in the knowledge base yet.
            batch_size: Pairs per embedding call (default: the model's ``embed_batch_size``).
            show_progress: Show a tqdm progress bar.
            skip_bad: Skip unreadable images (see :meth:`build`).

        Returns:
            The ids added, in order.

        Raises:
            ValueError: An id repeats, or the embeddings' dimension differs from the KB's.
            ImageLoadError: An image cannot be read (``skip_bad=False``).
            ConcurrentUpdateError: A database backend's folder was persisted by another process
                since this knowledge base was loaded (its rows are left alone; reload).

        Example:
            >>> kb.add(load_kb_jsonl("more_pairs.jsonl"), show_progress=False)  # doctest: +SKIP
            ['roco-2001', 'roco-2002']
        """
        items = list(items)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        checks.check_items(items, existing=self._positions)
        self._check_not_stale()
        embedded = enc.embed_items(
            self._embed_model, items, batch_size=batch_size, show_progress=show_progress, skip_bad=skip_bad
        )
        kept, image, text, hashes = embedded.items, embedded.image, embedded.text, embedded.hashes
        self._skipped = embedded.skipped
        if not kept:
            return []
        if self._dim is not None and image.shape[1] != self._dim:
            raise ValueError(
                f"the embedding model returns {image.shape[1]}-d vectors but the knowledge base is "
                f"{self._dim}-d; add items with the encoder that built it"
            )
        start = len(self._items)
        new = {"image": image, "text": text}
        was_empty = all(self._indexes[name].dim is None for name in MODALITIES)
        if was_empty and not isinstance(self._backend, FaissBackendConfig):
            # A database backend records the encoder and dim in its collections when it creates them.
            self._indexes = {name: self._new_index(name, image.shape[1]) for name in MODALITIES}
        self._store(lambda name: self._indexes[name].add(new[name], kept, hashes), kept, created=was_empty)
        self._dim = image.shape[1]
        for name in MODALITIES:
            self._vectors[name] = new[name] if start == 0 else np.concatenate([self._vectors[name], new[name]])
        self._items.extend(kept)
        self._hashes.extend(hashes)
        self._reindex()
        logger.info("added %d pairs to the knowledge base (%d skipped, %d total)", len(kept), len(self._skipped), len(self))
        return [item.id for item in kept]

    def delete(self, ids: Iterable[str]) -> list[str]:
        """Remove pairs by id from both indexes (later rows move up, keeping their order).

        Nothing changes if an error is raised (a backend that fails half-way gets the deleted rows
        back). The frozen vectors of the other pairs are untouched, so trained heads stay valid.

        Args:
            ids: Ids of pairs in the knowledge base.

        Returns:
            The ids deleted, in knowledge-base order.

        Raises:
            KeyError: An id is not in the knowledge base (named).
            ValueError: An id repeats.
            ConcurrentUpdateError: As in :meth:`add`.

        Example:
            >>> kb.delete(["roco-17"])  # doctest: +SKIP
            ['roco-17']
        """
        if isinstance(ids, str):
            raise ValueError(f"ids is the string {ids!r}; pass a list of ids, e.g. [{ids!r}]")
        ids = list(ids)
        for item_id in ids:
            self.position(item_id)
        if len(set(ids)) != len(ids):
            raise ValueError("ids repeat; pass each id once")
        if not ids:
            return []
        self._check_not_stale()
        rows = sorted(self._positions[i] for i in ids)
        gone = [self._items[r] for r in rows]
        gone_vectors = {name: self._vectors[name][rows] for name in MODALITIES}
        gone_hashes = [self._hashes[r] for r in rows]
        self._store(
            lambda name: self._indexes[name].delete([item.id for item in gone]),
            gone,
            created=False,
            undo=lambda name: self._indexes[name].upsert(gone_vectors[name], gone, gone_hashes),
        )
        keep = np.setdiff1d(np.arange(len(self._items)), rows)  # (n - m,)
        self._items = [self._items[r] for r in keep]
        self._hashes = [self._hashes[r] for r in keep]
        for name in MODALITIES:
            self._vectors[name] = np.ascontiguousarray(self._vectors[name][keep])
        self._reindex()
        logger.info("deleted %d pairs from the knowledge base (%d left)", len(gone), len(self))
        return [item.id for item in gone]

    def upsert(
        self,
        items: Iterable[KBItem],
        *,
        batch_size: int | None = None,
        show_progress: bool = True,
    ) -> list[str]:
        """Add new pairs and replace existing ones (same id) in place; only these pairs are embedded.

        Everything is embedded first; nothing changes if an error is raised.

        Args:
            items: Pairs; an id already in the knowledge base replaces that pair (keeping its row).
            batch_size: Pairs per embedding call (default: the model's ``embed_batch_size``).
            show_progress: Show a tqdm progress bar.

        Returns:
            The ids written, in input order.

        Raises:
            ValueError: An id repeats in ``items``, or the embeddings' dimension differs.
            ImageLoadError: An image cannot be read.
            ConcurrentUpdateError: As in :meth:`add`.

        Example:
            >>> kb.upsert([KBItem(id="roco-17", image_path="17.png", text="corrected caption")])  # doctest: +SKIP
            ['roco-17']
        """
        items = list(items)
        checks.check_items(items)
        if not items:
            return []
        self._check_not_stale()
        embedded = enc.embed_items(self._embed_model, items, batch_size=batch_size, show_progress=show_progress, skip_bad=False)
        new = {"image": embedded.image, "text": embedded.text}
        if self._dim is not None and embedded.image.shape[1] != self._dim:
            raise ValueError(
                f"the embedding model returns {embedded.image.shape[1]}-d vectors but the knowledge base is "
                f"{self._dim}-d; upsert items with the encoder that built it"
            )
        if not self._items:
            self.add(items, batch_size=batch_size, show_progress=show_progress)
            return [item.id for item in items]
        old_rows = [self._positions[item.id] for item in items if item.id in self._positions]
        old = [self._items[r] for r in old_rows]
        old_vectors = {name: self._vectors[name][old_rows] for name in MODALITIES}
        old_hashes = [self._hashes[r] for r in old_rows]
        added = [item for item in items if item.id not in self._positions]

        def undo(name: str) -> None:
            self._indexes[name].upsert(old_vectors[name], old, old_hashes)
            if added:
                self._indexes[name].delete([item.id for item in added])

        self._store(lambda name: self._indexes[name].upsert(new[name], items, embedded.hashes), items, created=False, undo=undo)
        appended: list[int] = []
        self._vectors = {name: np.array(self._vectors[name]) for name in MODALITIES}  # writable copies
        for j, item in enumerate(items):
            row = self._positions.get(item.id)
            if row is None:
                appended.append(j)
                continue
            self._items[row] = item
            self._hashes[row] = embedded.hashes[j]
            for name in MODALITIES:
                self._vectors[name][row] = new[name][j]
        self._items.extend(items[j] for j in appended)
        self._hashes.extend(embedded.hashes[j] for j in appended)
        for name in MODALITIES:
            self._vectors[name] = np.concatenate([self._vectors[name], new[name][appended]])
        self._reindex()
        logger.info("upserted %d pairs (%d new, %d replaced; %d total)", len(items), len(appended), len(items) - len(appended), len(self))
        return [item.id for item in items]

    @classmethod
    @contextlib.contextmanager
    def updating(
        cls,
        persist_dir: str | Path,
        embed_model: MultiModalEmbedding,
        *,
        backend: BackendConfig | None = None,
        wait: float = 600.0,
    ) -> Iterator[Any]:
        """Load, change and persist a knowledge base as one step that other writers wait for.

        Holds ``persist_dir``'s write lock from before the load until after the persist, so two
        processes updating the same folder run one after the other and each sees the other's items
        (a plain ``from_persist_dir`` + ``add`` + ``persist`` in two processes would instead make the
        second ``persist`` raise :class:`~llama_index_lvlm_retriever.errors.ConcurrentUpdateError`).
        On a normal exit the knowledge base is persisted and closed; on an exception nothing is
        persisted (a database backend's rows written meanwhile are not rolled back: rebuild, or
        redo the change).

        Args:
            persist_dir: A knowledge-base folder written by :meth:`persist`.
            embed_model: The encoder that built it.
            backend: Override the recorded connection settings (see :meth:`from_persist_dir`).
            wait: Seconds to wait for another writer to finish before giving up.

        Yields:
            The loaded knowledge base; change it with :meth:`add`, :meth:`delete`, :meth:`upsert`.

        Raises:
            StoreLockedError: Another writer still holds the folder after ``wait`` seconds.
            FileNotFoundError: ``persist_dir`` is not a knowledge base (see :meth:`from_persist_dir`).

        Example:
            >>> with KnowledgeBase.updating("kb/roco-clip", embed) as kb:  # doctest: +SKIP
            ...     kb.add(load_kb_jsonl("more_pairs.jsonl"), show_progress=False)
        """
        folder = Path(persist_dir)
        store.read_manifest(folder)  # a missing folder is "not found", not silently created by the lock
        with folder_lock(folder, wait=wait):
            kb = cls.from_persist_dir(folder, embed_model, backend=backend)
            kb._locked_folder = folder.resolve()
            try:
                yield kb
                kb.persist(folder)
            finally:
                kb._locked_folder = None
                kb.close()

    def _check_not_stale(self) -> None:
        """A database backend's rows are shared at once: refuse to change them for an outdated folder."""
        if self._version is not None and not isinstance(self._backend, FaissBackendConfig):
            self._version.check_current()


__all__ = ["LiveUpdatesMixin"]
