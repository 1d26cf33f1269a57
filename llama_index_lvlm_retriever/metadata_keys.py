"""Names of the ``Response.metadata`` keys written by the diagnosis query engine and postprocessor.

``LVLMRerank`` writes them, ``LVLMDiagnosisQueryEngine`` passes them on in its ``Response``, and
``ConsistencyEvaluator`` reads them, so all three import these constants rather than spelling the
strings. Values are JSON-serialisable (plain ``str``/``float``/``bool``/``int``/lists/dicts).
"""

from __future__ import annotations

__all__ = [
    "ABSTAIN",
    "AGREEMENT",
    "CONSISTENT",
    "DISTRIBUTION",
    "LABEL",
    "LABEL_PROBABILITY",
    "NEIGHBOUR_HEAD",
    "NEIGHBOUR_KB_ID",
    "NEIGHBOUR_LABEL",
    "NEIGHBOUR_PREDICTIONS",
    "NEIGHBOUR_PROBABILITY",
    "NEIGHBOUR_RETRIEVAL_SCORE",
    "N_DISTINCT",
    "RESPONSE_KEYS",
    "SUPPORT",
    "VOTE_ENTROPY",
    "WEIGHTED_SUPPORT",
]

LABEL = "label"
"""Predicted label name (multi-label tasks: the list of predicted label names)."""
LABEL_PROBABILITY = "label_probability"
"""Aggregated probability of the predicted label (multi-label: of the predicted set, per label independent)."""
DISTRIBUTION = "distribution"
"""Aggregated distribution as ``{label name: probability}`` (multi-label: per-label yes-probability)."""
CONSISTENT = "consistent"
"""``True`` when every neighbour led the reader to the same answer."""
AGREEMENT = "agreement"
"""Share of neighbours voting for the *majority* answer, in ``[1/k, 1]`` (not necessarily the answer shown)."""
SUPPORT = "answer_support"
"""Share of neighbours whose own prediction equals the answer shown (unweighted), in ``[0, 1]``."""
WEIGHTED_SUPPORT = "answer_support_weighted"
"""The same share weighted by the neighbours' retrieval weights, in ``[0, 1]``; abstention uses :data:`SUPPORT`."""
VOTE_ENTROPY = "vote_entropy"
"""Entropy of the neighbours' votes normalised to ``[0, 1]`` (0 = unanimous)."""
N_DISTINCT = "n_distinct"
"""Number of distinct answers among the neighbours."""
NEIGHBOUR_PREDICTIONS = "neighbour_predictions"
"""List of per-neighbour dicts with the keys ``NEIGHBOUR_KB_ID``, ``NEIGHBOUR_HEAD``,
``NEIGHBOUR_RETRIEVAL_SCORE``, ``NEIGHBOUR_LABEL``, ``NEIGHBOUR_PROBABILITY``."""
ABSTAIN = "abstain"
"""``True`` when the engine recommends not to trust the answer: its support is under ``min_support``."""

NEIGHBOUR_KB_ID = "kb_id"
"""Knowledge-base id of the neighbour inside a ``NEIGHBOUR_PREDICTIONS`` entry."""
NEIGHBOUR_LABEL = "label"
"""Label the reader predicted given that neighbour alone (multi-label: list of names)."""
NEIGHBOUR_PROBABILITY = "probability"
"""The reader's probability of that label given that neighbour alone."""
NEIGHBOUR_HEAD = "head"
"""Which retriever head found the neighbour (``"image"`` or ``"text"``; ``None`` for other retrievers)."""
NEIGHBOUR_RETRIEVAL_SCORE = "retrieval_score"
"""The neighbour's retrieval score as fused across heads (the weight's input)."""

RESPONSE_KEYS: tuple[str, ...] = (
    LABEL,
    LABEL_PROBABILITY,
    DISTRIBUTION,
    CONSISTENT,
    AGREEMENT,
    SUPPORT,
    WEIGHTED_SUPPORT,
    VOTE_ENTROPY,
    N_DISTINCT,
    NEIGHBOUR_PREDICTIONS,
    ABSTAIN,
)
"""Every key the query engine's ``Response.metadata`` carries."""
