"""The field names of every output: one vocabulary for the answer, the case and each neighbour.

The same names are used by the query engine's ``Response.metadata`` (``LVLMRerank`` writes them,
``ConsistencyEvaluator`` reads them), ``predict``'s ``predictions.jsonl`` and ``predictions.csv``,
``diagnose --json``, ``query --json`` and the per-case rows of an evaluation report, so every module
imports these constants rather than spelling the strings. A JSON Schema per output ships in
:mod:`llama_index_lvlm_retriever.schemas`. Values are JSON-serialisable.

The vocabulary:

* the fused answer of a case: ``answer`` (label name; multi-label: list of names),
  ``probability``, ``distribution``, ``support``, ``weighted_support``, ``consistent``,
  ``agreement``, ``vote_entropy``, ``n_distinct``, ``abstain``;
* the case: ``case_id``, ``image_path``, ``question``, ``gold``, ``correct``, ``error``;
* each neighbour, in the list ``neighbours``: ``kb_id``, ``kb_label`` (the knowledge-base pair's
  own label), ``head``, ``retrieval_score``, ``prediction`` (the reader's answer given that
  neighbour alone) and its ``probability``, ``text``, ``image_path``.

Old constant names (``LABEL``, ``LABEL_PROBABILITY``, ``NEIGHBOUR_PREDICTIONS``, ``NEIGHBOUR_LABEL``)
are kept as aliases of the new ones; their values changed with the vocabulary (``"label"`` ->
``"answer"``, ``"label_probability"`` -> ``"probability"``, ``"answer_support"`` -> ``"support"``,
``"answer_support_weighted"`` -> ``"weighted_support"``, ``"neighbour_predictions"`` ->
``"neighbours"``, a neighbour's ``"label"`` -> ``"prediction"``).
"""

from __future__ import annotations

__all__ = [
    "ABSTAIN",
    "AGREEMENT",
    "ANSWER",
    "CASE_ID",
    "CONSISTENT",
    "CORRECT",
    "DISTRIBUTION",
    "ERROR",
    "GOLD",
    "IMAGE_PATH",
    "LABEL",
    "LABEL_PROBABILITY",
    "NEIGHBOURS",
    "NEIGHBOUR_COSINE",
    "NEIGHBOUR_HEAD",
    "NEIGHBOUR_IMAGE_PATH",
    "NEIGHBOUR_KB_ID",
    "NEIGHBOUR_KB_LABEL",
    "NEIGHBOUR_LABEL",
    "NEIGHBOUR_PREDICTION",
    "NEIGHBOUR_PREDICTIONS",
    "NEIGHBOUR_PROBABILITY",
    "NEIGHBOUR_RERANK_SCORE",
    "NEIGHBOUR_RETRIEVAL_SCORE",
    "NEIGHBOUR_SOURCE",
    "NEIGHBOUR_TEXT",
    "N_DISTINCT",
    "PROBABILITY",
    "QUESTION",
    "RESPONSE_KEYS",
    "SUPPORT",
    "VOTE_ENTROPY",
    "WEIGHTED_SUPPORT",
]

# --- the fused answer ------------------------------------------------------------------------
ANSWER = "answer"
"""Predicted label name (multi-label tasks: the list of predicted label names)."""
PROBABILITY = "probability"
"""Aggregated probability of the answer (multi-label: of the predicted set, per label independent)."""
DISTRIBUTION = "distribution"
"""Aggregated distribution as ``{label name: probability}`` (multi-label: per-label yes-probability)."""
CONSISTENT = "consistent"
"""``True`` when every neighbour led the reader to the same answer."""
AGREEMENT = "agreement"
"""Share of neighbours voting for the *majority* answer, in ``[1/k, 1]`` (not necessarily the answer shown)."""
SUPPORT = "support"
"""Share of neighbours whose own prediction equals the answer shown (unweighted), in ``[0, 1]``."""
WEIGHTED_SUPPORT = "weighted_support"
"""The same share weighted by the neighbours' retrieval weights, in ``[0, 1]``; abstention uses :data:`SUPPORT`."""
VOTE_ENTROPY = "vote_entropy"
"""Entropy of the neighbours' votes normalised to ``[0, 1]`` (0 = unanimous)."""
N_DISTINCT = "n_distinct"
"""Number of distinct answers among the neighbours."""
NEIGHBOURS = "neighbours"
"""List of per-neighbour dicts with the ``NEIGHBOUR_*`` keys, in retrieval (or rerank) order."""
ABSTAIN = "abstain"
"""``True`` when the engine recommends not to trust the answer: its support is under ``min_support``."""

# --- the case --------------------------------------------------------------------------------
CASE_ID = "case_id"
"""The case's id (``predict``: the file name or the cases file's id)."""
IMAGE_PATH = "image_path"
"""The query image's path."""
QUESTION = "question"
"""The question asked ('' = the task's default)."""
GOLD = "gold"
"""Gold label names (a list), ``None`` for an unlabelled case."""
CORRECT = "correct"
"""Whether the answer equals the gold label (set); ``None`` without gold or without an answer."""
ERROR = "error"
"""Why a case has no answer (unreadable image, nothing retrieved); ``None`` otherwise."""

# --- each neighbour --------------------------------------------------------------------------
NEIGHBOUR_KB_ID = "kb_id"
"""Knowledge-base id of the neighbour."""
NEIGHBOUR_KB_LABEL = "kb_label"
"""The neighbour's own label in the knowledge base (``None`` where the KB has none)."""
NEIGHBOUR_PREDICTION = "prediction"
"""Label the reader predicted given that neighbour alone (multi-label: list of names)."""
NEIGHBOUR_PROBABILITY = "probability"
"""The reader's probability of that prediction given that neighbour alone."""
NEIGHBOUR_HEAD = "head"
"""Which retriever head(s) found the neighbour (``"image"``, ``"text"``, ``"image+text"``; ``None`` for other retrievers)."""
NEIGHBOUR_RETRIEVAL_SCORE = "retrieval_score"
"""The neighbour's retrieval score as fused across heads (the weight's input)."""
NEIGHBOUR_RERANK_SCORE = "rerank_score"
"""The score the evidence is ordered by after reading (``diagnose``)."""
NEIGHBOUR_COSINE = "cosine"
"""Raw cosine per head, ``{head: cosine}`` (``query``, ``diagnose``)."""
NEIGHBOUR_SOURCE = "source"
"""The knowledge-base pair's source (dataset or file it came from; '' if unknown)."""
NEIGHBOUR_TEXT = "text"
"""The knowledge-base pair's caption."""
NEIGHBOUR_IMAGE_PATH = "image_path"
"""The knowledge-base pair's image path."""

# --- old constant names (same values as the new ones) ----------------------------------------
LABEL = ANSWER
"""Old name of :data:`ANSWER`."""
LABEL_PROBABILITY = PROBABILITY
"""Old name of :data:`PROBABILITY`."""
NEIGHBOUR_PREDICTIONS = NEIGHBOURS
"""Old name of :data:`NEIGHBOURS`."""
NEIGHBOUR_LABEL = NEIGHBOUR_PREDICTION
"""Old name of :data:`NEIGHBOUR_PREDICTION`."""

RESPONSE_KEYS: tuple[str, ...] = (
    ANSWER,
    PROBABILITY,
    DISTRIBUTION,
    CONSISTENT,
    AGREEMENT,
    SUPPORT,
    WEIGHTED_SUPPORT,
    VOTE_ENTROPY,
    N_DISTINCT,
    NEIGHBOURS,
    ABSTAIN,
)
"""Every key the query engine's ``Response.metadata`` carries."""
