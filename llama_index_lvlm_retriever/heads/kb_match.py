"""Does a trained head know this knowledge base? The ``trained_on`` KB record and the shared-items check.

A trained head records the knowledge base it was fitted on (``trained_on["knowledge_base"]``, written
by ``RetrieverFinetuneEngine.get_finetuned_model``): its item count, dimension, the SHA-256 of its
ids in order, and ``ids_sample``, the :data:`IDS_SAMPLE_SIZE` smallest 64-bit hashes of its item ids
(a bottom-k sample; every id's hash when the KB is smaller). That sample is enough to estimate how
many of the head's training items this knowledge base holds (exact up to :data:`IDS_SAMPLE_SIZE`
items, about +-1.5 points above), in 16 KiB of JSON at any KB size.

The *shared share* is ``shared items / max(trained items, this KB's items)``: 100% only for the
same set of ids; a KB that grew to twice its size after training shares 50%. :func:`check_head_kb`
warns below 100%, naming both KBs and the share, and raises :class:`KBMismatchError` below
:data:`MIN_SHARED_SHARE` unless ``allow_other_kb=True``. Heads saved before the sample existed
carry only the ids hash: equal means the same KB (100%); otherwise the share is unknown, which is
warned about but never refused.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from llama_index_lvlm_retriever.errors import KBMismatchError

logger = logging.getLogger(__name__)

IDS_SAMPLE_SIZE = 1024
"""How many item-id hashes a head's ``trained_on`` record keeps (the smallest ones: a bottom-k sample)."""
MIN_SHARED_SHARE = 0.5
"""Below this share of shared items, heads are refused on a knowledge base unless ``allow_other_kb``."""
KB_RECORD_KEY = "knowledge_base"
"""Key of the knowledge-base record inside a head's ``trained_on`` record."""


def id_hash(item_id: str) -> str:
    """The 64-bit hash (16 hex digits, first 8 bytes of SHA-256) of one item id, as ``ids_sample`` stores it."""
    return hashlib.sha256(str(item_id).encode("utf-8")).hexdigest()[:16]


def ids_sha256(ids: Sequence[str]) -> str:
    """SHA-256 of the ids in order, in canonical JSON (the ``ids_sha256`` of a ``trained_on`` record)."""
    return hashlib.sha256(json.dumps(list(ids), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def ids_sample(ids: Iterable[str], size: int = IDS_SAMPLE_SIZE) -> list[str]:
    """The ``size`` smallest distinct id hashes, sorted: a sample that any two KBs draw alike."""
    return heapq.nsmallest(size, {id_hash(i) for i in ids})


def knowledge_base_record(kb: Any) -> dict[str, Any]:
    """The ``trained_on["knowledge_base"]`` record of a knowledge base (count, dim, ids hash and sample).

    Example:
        >>> record = knowledge_base_record(kb)  # doctest: +SKIP
        >>> sorted(record)  # doctest: +SKIP
        ['dim', 'ids_sample', 'ids_sha256', 'n_items']
    """
    ids = [item.id for item in kb.items]
    return {"n_items": len(ids), "dim": int(kb.dim), "ids_sha256": ids_sha256(ids), "ids_sample": ids_sample(ids)}


@dataclass(frozen=True)
class KBOverlap:
    """How a head's training KB and the KB it is used with overlap.

    Attributes:
        trained_kb: The training KB, in words (item count and ids-hash prefix).
        this_kb: The KB used now, in words.
        shared_share: Shared items over the larger KB's item count, in [0, 1]; ``None`` when the
            head's record has no ids sample and the ids hashes differ (unknown).
        estimated: True when the share was estimated from a sample (training KB over
            :data:`IDS_SAMPLE_SIZE` items) rather than counted exactly.
    """

    trained_kb: str
    this_kb: str
    shared_share: float | None
    estimated: bool

    @property
    def same(self) -> bool:
        """True when the KBs hold the same ids."""
        return self.shared_share == 1.0

    def describe_share(self) -> str:
        """The share in words (``"40.0% of items shared"``, ``"an unknown share of items shared"``)."""
        if self.shared_share is None:
            return "an unknown share of items shared (the head was saved without an ids sample)"
        return f"{'about ' if self.estimated else ''}{100 * self.shared_share:.1f}% of items shared"


def _kb_label(n_items: Any, sha: Any) -> str:
    return f"the knowledge base of {n_items} items (ids sha256 {str(sha)[:12]})"


def compare_knowledge_base(record: dict[str, Any], kb: Any) -> KBOverlap:
    """Compare a head's ``trained_on["knowledge_base"]`` record with ``kb``.

    Args:
        record: The record (``n_items``, ``ids_sha256`` and, from newer saves, ``ids_sample``).
        kb: The knowledge base the head is used with (anything with ``items``).

    Returns:
        The overlap.
    """
    ids = [item.id for item in kb.items]
    this_sha = ids_sha256(ids)
    trained_n = int(record.get("n_items") or 0)
    trained = _kb_label(record.get("n_items", "?"), record.get("ids_sha256", "?"))
    this = _kb_label(len(ids), this_sha)
    if record.get("ids_sha256") == this_sha:
        return KBOverlap(trained, this, 1.0, estimated=False)
    sample = record.get("ids_sample")
    if not isinstance(sample, list) or not sample or not trained_n:
        return KBOverlap(trained, this, None, estimated=False)
    this_hashes = {id_hash(i) for i in ids}
    found = sum(1 for h in sample if h in this_hashes) / len(sample)
    shared = found * trained_n  # exact when the sample holds every id (trained_n <= the sample size)
    share = min(1.0, shared / max(trained_n, len(this_hashes), 1))
    return KBOverlap(trained, this, share, estimated=trained_n > len(sample))


def check_head_kb(name: str, head: Any, kb: Any, *, allow_other_kb: bool = False) -> dict[str, Any] | None:
    """Warn (or refuse) when ``head`` was trained on another knowledge base than ``kb``.

    Args:
        name: How to call the head in messages (``"image_head"``).
        head: The head; one without a ``trained_on`` KB record (fresh, identity, placebo) is not checked.
        kb: The knowledge base it is about to search.
        allow_other_kb: Use the head even when under :data:`MIN_SHARED_SHARE` of the items are shared.

    Returns:
        ``None`` when the head has no record or was trained on the same ids; else the event as a
        JSON-serialisable dict (``head``, ``trained_kb``, ``this_kb``, ``shared_share``,
        ``estimated``, ``allowed``), for the run's provenance.

    Raises:
        KBMismatchError: Fewer than :data:`MIN_SHARED_SHARE` of the items are shared and
            ``allow_other_kb`` is False.
    """
    trained_on = getattr(head, "trained_on", None)
    record = trained_on.get(KB_RECORD_KEY) if isinstance(trained_on, dict) else None
    if head is None or not isinstance(record, dict):
        return None
    overlap = compare_knowledge_base(record, kb)
    if overlap.same:
        return None
    message = (
        f"{name} was trained on {overlap.trained_kb} but is used on {overlap.this_kb}, "
        f"{overlap.describe_share()}"
    )
    refused = overlap.shared_share is not None and overlap.shared_share < MIN_SHARED_SHARE
    if refused and not allow_other_kb:
        raise KBMismatchError(
            f"{message}, below the {100 * MIN_SHARED_SHARE:.0f}% minimum; retrain the heads on this knowledge base "
            "(lvlm-retriever collect-feedback + train-retriever), or pass allow_other_kb=True (--allow-other-kb) "
            "to use them anyway"
        )
    logger.warning("%s; retrieval may be worse than with heads trained on this knowledge base", message)
    return {"head": name, **asdict(overlap), "allowed": bool(refused and allow_other_kb)}


__all__ = [
    "IDS_SAMPLE_SIZE",
    "KB_RECORD_KEY",
    "MIN_SHARED_SHARE",
    "KBOverlap",
    "check_head_kb",
    "compare_knowledge_base",
    "id_hash",
    "ids_sample",
    "ids_sha256",
    "knowledge_base_record",
]
