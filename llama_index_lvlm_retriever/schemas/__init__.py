"""JSON Schemas of every output, shipped with the package (one ``<name>.schema.json`` per output).

================  =====================================================================
name              output
================  =====================================================================
predictions       one line of ``predict``'s ``predictions.jsonl`` (a row ``predict()`` returns)
predictions_csv   one row of ``predictions.csv`` as ``csv.DictReader`` reads it
diagnose          the object ``diagnose --json`` prints
query             the list ``query --json`` prints
evaluation_row    one per-case row of an evaluation report (``report.json`` ``rows``)
================  =====================================================================

All use the field names of :mod:`llama_index_lvlm_retriever.outputs.metadata_keys`. Validate with any
JSON Schema (draft 2020-12) validator, e.g. ``jsonschema``:

Example:
    >>> from llama_index_lvlm_retriever.schemas import load_schema
    >>> sorted(load_schema("query")["items"]["required"])[:3]
    ['cosine', 'head', 'image_path']
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_NAMES", "load_schema", "schema_path"]

SCHEMA_NAMES: tuple[str, ...] = ("predictions", "predictions_csv", "diagnose", "query", "evaluation_row")
"""The outputs that have a schema, by name."""


def schema_path(name: str) -> Path:
    """The installed ``<name>.schema.json`` file.

    Raises:
        KeyError: ``name`` is not one of :data:`SCHEMA_NAMES`.
    """
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no schema named {name!r}; the package ships {list(SCHEMA_NAMES)}")
    return Path(str(resources.files(__name__).joinpath(f"{name}.schema.json")))


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``name`` as a dict (see :func:`schema_path`)."""
    return json.loads(schema_path(name).read_text(encoding="utf-8"))
