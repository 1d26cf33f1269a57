"""Ceiling rows of the demo table: what a perfect choice of neighbours could gain (not legal systems).

Each ceiling uses the test cases' gold labels or the reader's feedback on them, so none is a
system anyone could deploy; they say how much room the frozen retriever leaves:

* :class:`OracleRerankRetriever` ``rule="same_label"``: within the frozen top-N of each head, the
  knowledge-base pairs carrying the case's gold label first (then by score);
* :class:`OracleRerankRetriever` ``rule="reader"``: within the same pool, the pairs with which the
  reader gives the gold label the highest probability;
* an *oracle-fit head* (built by the pipeline): the LVLM-aware training loop fitted on the test cases'
  own feedback, feedback rounds included, selected without validation. It bounds what the loop can
  reach on these cases.

"Share of headroom captured" in the report is (LVLM-aware - standard) / (oracle-fit - standard).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from llama_index.core.schema import NodeWithScore

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.kb import SearchHit
from llama_index_lvlm_retriever.retriever import (
    HEAD_IMAGE,
    HEAD_TEXT,
    LVLMAwareRetriever,
    merge_hits,
)

__all__ = ["OracleRerankRetriever"]

OracleRule = Literal["same_label", "reader"]


class OracleRerankRetriever:
    """Re-rank the frozen retriever's top-N per head with knowledge of the answer (a ceiling).

    Args:
        base: The frozen (standard RAG) retriever; its ``k_image``/``k_text`` neighbours are kept.
        cases: The labelled cases queried, found by their image path.
        pool: Frozen top-N per head to choose from.
        rule: ``"same_label"`` (gold-label pairs first) or ``"reader"`` (highest P_reader(gold | pair)).
        reader: The reader, for ``rule="reader"`` (a ``CachedReader`` shares its reads with evaluation).
    """

    def __init__(
        self,
        base: LVLMAwareRetriever,
        cases: Sequence[Case],
        *,
        pool: int,
        rule: OracleRule,
        reader: Any = None,
    ) -> None:
        if rule == "reader" and reader is None:
            raise ValueError("rule='reader' needs reader=")
        self._base, self._pool, self._rule, self._reader = base, pool, rule, reader
        self._cases = {str(case.image_path): case for case in cases}

    def retrieve_batch(
        self,
        images: Sequence[Any],
        questions: Sequence[str] | None = None,
        *,
        exclude_ids: Sequence[Collection[str]] | None = None,
        exclude_self: bool | None = None,
    ) -> list[list[NodeWithScore]]:
        """The base retriever's neighbours, re-chosen from its top-N per head by the oracle rule."""
        base, kb = self._base, self._base.knowledge_base
        cases = [self._cases[str(image)] for image in images]
        hashes = [[kb.content_hash_of(image)] for image in images] if exclude_self else None
        embeddings = base.embed_queries(list(images), questions)  # (n, dim)
        hits = base.search_heads(
            embeddings,
            k_image=self._pool if base.k_image else 0,
            k_text=self._pool if base.k_text else 0,
            exclude_ids=exclude_ids,
            exclude_hashes=hashes,
            images=list(images),
        )
        gold_prob = self._gold_probabilities(cases, hits) if self._rule == "reader" else None
        out = []
        for i, case in enumerate(cases):
            chosen: dict[str, list[SearchHit]] = {}
            for head, k in ((HEAD_IMAGE, base.k_image), (HEAD_TEXT, base.k_text)):
                row = hits[head][i]
                if self._rule == "same_label":
                    order = sorted(range(len(row)), key=lambda j: (row[j].item.label not in case.labels, j))  # noqa: B023
                else:
                    assert gold_prob is not None
                    order = sorted(range(len(row)), key=lambda j: (-gold_prob[i][row[j].item.id], j))  # noqa: B023
                chosen[head] = [row[j] for j in order[:k]]
            out.append(merge_hits(chosen, base.config.head_fusion))
        return out

    def _gold_probabilities(self, cases: Sequence[Case], hits: Mapping[str, list[list[SearchHit]]]) -> list[dict[str, float]]:
        """P_reader(gold | pair) for every pooled pair of every case, one batched reader call."""
        pools: list[list[KBItem]] = []
        for i in range(len(cases)):
            seen: dict[str, KBItem] = {}
            for head in (HEAD_IMAGE, HEAD_TEXT):
                for hit in hits[head][i]:
                    seen.setdefault(hit.item.id, hit.item)
            pools.append(list(seen.values()))
        width = max(len(pool) for pool in pools)
        # The reader takes rectangular candidate lists: pad short pools by repeating their first item.
        padded = [pool + [pool[0]] * (width - len(pool)) for pool in pools]
        scores = self._reader.score(list(cases), padded)
        log_probs = np.asarray(scores.log_probs)  # (n, width, L)
        labels = list(scores.labels or self._reader.task.labels)
        out = []
        for i, (case, pool) in enumerate(zip(cases, pools)):
            gold = labels.index(case.labels[0])
            out.append({item.id: float(np.exp(log_probs[i, j, gold])) for j, item in enumerate(pool)})
        return out
