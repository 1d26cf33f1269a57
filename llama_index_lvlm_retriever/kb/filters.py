"""Metadata filters of the knowledge base: LlamaIndex ``MetadataFilters``, checked once, pushed down.

Users pass the type they know (``llama_index.core.vector_stores.types.MetadataFilters``); this module
checks it against the knowledge base's fields and evaluates it over in-process records (the faiss
backend's pre-filter). The Milvus and Qdrant backends translate the same checked filters into their
own expression / ``Filter`` in their modules, with the same semantics, fixed here:

- Fields: ``id``, ``content_hash``, ``label`` and ``source`` are the pair's own fields; any other key
  is a key of the pair's ``metadata`` (e.g. ``patient_id``, ``modality``). A key no item has is an
  error naming it (a typo would otherwise silently filter everything out, or nothing).
- Operators: ``==``, ``!=``, ``>``, ``>=``, ``<``, ``<=`` (numbers only), ``in``, ``nin``.
- A pair that lacks the field (or has ``label=None``) matches no positive comparison and every
  negative one (``!=``, ``nin``): ``patient_id != "p7"`` keeps pairs without a patient id.
- Conditions: ``and``, ``or``, ``not`` (none of the sub-filters match, as in LlamaIndex core), nested.
- Values compared are scalars of the key's one kind (str, number or bool; ``null`` counts as absent);
  a metadata key holding lists, dicts or mixed kinds cannot be filtered on (vector stores disagree
  on what ``==`` means there), and a value of another kind than the key's is an error.

Private module; ``KnowledgeBase.search(..., filters=)`` and ``LVLMAwareRetriever(filters=)`` are the API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from llama_index_lvlm_retriever.data.records import KBItem

# The pair's own fields, in the order the backends store them; anything else is a metadata key.
ITEM_FIELDS: tuple[str, ...] = ("id", "content_hash", "label", "source")
SUPPORTED_OPERATORS: tuple[FilterOperator, ...] = (
    FilterOperator.EQ,
    FilterOperator.NE,
    FilterOperator.GT,
    FilterOperator.GTE,
    FilterOperator.LT,
    FilterOperator.LTE,
    FilterOperator.IN,
    FilterOperator.NIN,
)
RANGE_OPERATORS: tuple[FilterOperator, ...] = (FilterOperator.GT, FilterOperator.GTE, FilterOperator.LT, FilterOperator.LTE)
NEGATIVE_OPERATORS: tuple[FilterOperator, ...] = (FilterOperator.NE, FilterOperator.NIN)


class _Missing:
    """Marker for a pair that lacks a field (kept apart from ``None`` values)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def per_query_filters(
    filters: MetadataFilters | Sequence[MetadataFilters | None] | None, n: int
) -> list[MetadataFilters | None]:
    """One filter (or ``None``) per query: a single ``MetadataFilters`` applies to all ``n``."""
    if filters is None or isinstance(filters, MetadataFilters):
        return [filters] * n
    if isinstance(filters, (str, bytes, Mapping)) or not isinstance(filters, Sequence):
        raise TypeError(
            f"filters must be a llama_index MetadataFilters, one per query, or None; got {type(filters).__name__}"
        )
    filters = list(filters)
    if len(filters) != n:
        raise ValueError(f"filters has {len(filters)} entries for {n} queries; pass one MetadataFilters (or None) per query")
    for i, f in enumerate(filters):
        if f is not None and not isinstance(f, MetadataFilters):
            raise TypeError(f"filters[{i}] is a {type(f).__name__}; pass a llama_index MetadataFilters or None")
    return filters


def group_key(filters: MetadataFilters | None) -> str:
    """A string equal for equal filters, so queries sharing a filter are searched together."""
    return "" if filters is None else filters.model_dump_json()


def check_filters(filters: MetadataFilters, metadata_kinds: Mapping[str, set[str]]) -> None:
    """Raise naming the first unknown field, unsupported operator or bad value of ``filters``.

    Args:
        filters: The filters to check.
        metadata_kinds: Every metadata key of the knowledge base -> the kinds of its values
            (:func:`metadata_kinds`).

    Raises:
        ValueError: Unknown field (the message lists the known ones), a list/dict-valued metadata key,
            an operator other than the supported ones, or a value of the wrong type.
    """
    for leaf in _leaves(filters):
        key = leaf.key
        if key in ITEM_FIELDS:
            kinds = {"str"}
        elif key not in metadata_kinds:
            known = sorted(set(ITEM_FIELDS) | set(metadata_kinds))
            raise ValueError(
                f"filter on unknown field {key!r}: no knowledge-base item has it. Known fields: {known} "
                "(id, content_hash, label, source, or a key of the items' metadata)"
            )
        else:
            kinds = set(metadata_kinds[key])
            if kinds - {"str", "number", "bool"}:
                raise ValueError(
                    f"filter on metadata key {key!r}, which holds {sorted(kinds)} values; filters compare "
                    "scalars (str, int, float, bool): store the value to filter on in its own key"
                )
            if len(kinds) > 1:
                raise ValueError(
                    f"filter on metadata key {key!r}, whose values mix {sorted(kinds)}; vector stores compare "
                    "mixed kinds differently, so store one kind per key (e.g. every patient_id a string)"
                )
        operator = FilterOperator(leaf.operator)
        if operator not in SUPPORTED_OPERATORS:
            raise ValueError(
                f"filter on {key!r} uses operator {operator.value!r}, which the knowledge base does not "
                f"support; use one of {[op.value for op in SUPPORTED_OPERATORS]}"
            )
        value = leaf.value
        values = value if operator in (FilterOperator.IN, FilterOperator.NIN) else [value]
        if operator in (FilterOperator.IN, FilterOperator.NIN) and (not isinstance(value, list) or not value):
            raise ValueError(f"filter {key!r} {operator.value} needs a non-empty list of values, got {value!r}")
        if operator in RANGE_OPERATORS and kinds != {"number"}:
            raise ValueError(f"filter {key!r} {operator.value} compares numbers, but {key!r} holds {sorted(kinds)} values")
        for v in values:
            if value_kind(v) not in kinds:
                raise ValueError(
                    f"filter {key!r} {operator.value} {v!r}: the value is a {value_kind(v)} but {key!r} "
                    f"holds {sorted(kinds)} values; pass a value of that kind"
                )


def value_kind(value: Any) -> str:
    """``"str"``, ``"number"`` or ``"bool"`` for a filterable scalar, else the type name."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def _leaves(filters: MetadataFilters) -> list[MetadataFilter]:
    out: list[MetadataFilter] = []
    for f in filters.filters:
        out.extend(_leaves(f) if isinstance(f, MetadataFilters) else [f])
    return out


def condition_of(filters: MetadataFilters) -> FilterCondition:
    """The condition joining ``filters.filters`` (``and`` when unset)."""
    return FilterCondition(filters.condition or FilterCondition.AND)


def field_value(item: KBItem, content_hash: str, key: str) -> Any:
    """The value a filter on ``key`` sees for one pair (:data:`MISSING` when it has none)."""
    if key == "id":
        return item.id
    if key == "content_hash":
        return content_hash
    if key == "source":
        return item.source
    if key == "label":
        return MISSING if item.label is None else item.label
    value = item.metadata.get(key)
    return MISSING if value is None else value


def metadata_kinds(items: Sequence[KBItem]) -> dict[str, set[str]]:
    """Every metadata key of ``items`` -> the kinds (:func:`value_kind`) of its non-null values."""
    kinds: dict[str, set[str]] = {}
    for item in items:
        for key, value in item.metadata.items():
            if value is not None:  # a None value counts as absent, as in JSON stores
                kinds.setdefault(key, set()).add(value_kind(value))
    return kinds


def evaluate(filters: MetadataFilters, column: Callable[[str], np.ndarray]) -> np.ndarray:
    """Boolean mask of the rows that pass ``filters``.

    Args:
        filters: Checked filters.
        column: ``key -> (n,) object array`` of :func:`field_value` per row (cached by the caller).

    Returns:
        ``(n,)`` bool array.
    """
    parts = [
        evaluate(f, column) if isinstance(f, MetadataFilters) else _evaluate_leaf(f, column(f.key))
        for f in filters.filters
    ]
    condition = condition_of(filters)
    if not parts:
        raise ValueError("empty MetadataFilters: pass at least one filter, or filters=None")
    if condition == FilterCondition.AND:
        return np.logical_and.reduce(parts)
    if condition == FilterCondition.OR:
        return np.logical_or.reduce(parts)
    return ~np.logical_or.reduce(parts)  # NOT: none of the sub-filters match (LlamaIndex core)


def _evaluate_leaf(leaf: MetadataFilter, values: np.ndarray) -> np.ndarray:
    operator = FilterOperator(leaf.operator)
    value = leaf.value
    if operator == FilterOperator.EQ:
        return np.fromiter((_equal(v, value) for v in values), bool, len(values))
    if operator == FilterOperator.NE:
        return np.fromiter((not _equal(v, value) for v in values), bool, len(values))
    if operator in (FilterOperator.IN, FilterOperator.NIN):
        wanted = list(value)
        hits = np.fromiter((any(_equal(v, w) for w in wanted) for v in values), bool, len(values))
        return hits if operator == FilterOperator.IN else ~hits
    compare = {
        FilterOperator.GT: lambda a: a > value,
        FilterOperator.GTE: lambda a: a >= value,
        FilterOperator.LT: lambda a: a < value,
        FilterOperator.LTE: lambda a: a <= value,
    }[operator]
    return np.fromiter((_is_number(v) and compare(v) for v in values), bool, len(values))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(stored: Any, wanted: Any) -> bool:
    # Strings equal only strings and numbers only numbers (as in Milvus JSON and Qdrant payloads),
    # so "1" never matches 1; a missing field equals nothing.
    if stored is MISSING:
        return False
    if isinstance(wanted, str) or isinstance(stored, str):
        return isinstance(wanted, str) and isinstance(stored, str) and stored == wanted
    if isinstance(wanted, bool) or isinstance(stored, bool):
        return isinstance(wanted, bool) and isinstance(stored, bool) and stored == wanted
    return _is_number(stored) and stored == wanted


__all__ = [
    "ITEM_FIELDS",
    "MISSING",
    "NEGATIVE_OPERATORS",
    "RANGE_OPERATORS",
    "SUPPORTED_OPERATORS",
    "check_filters",
    "condition_of",
    "evaluate",
    "field_value",
    "group_key",
    "metadata_kinds",
    "per_query_filters",
    "value_kind",
]
