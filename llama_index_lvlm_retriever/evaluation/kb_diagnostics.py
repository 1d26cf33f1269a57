"""Before stage 2: does the frozen knowledge base hold the label, and does similarity use it?

A query-side head (adapter or tower copy) only moves the *query* vector; the knowledge base's
frozen vectors stay as the encoder made them. So LVLM-aware training can re-weight what those
vectors hold, never add what they lack. Two numbers tell whether there is room:

* **linear-probe accuracy** on the frozen KB image vectors (cross-validated multinomial logistic
  regression): high means the label *is* in the vectors;
* **top-k label precision** of frozen retrieval (leave-one-out, image->image and image->caption):
  the share of a KB item's k nearest other items that carry its label; low means similarity does
  not use it (it is dominated by something else: acquisition, scanner, stain, position...).

Stage 2 has room where the first is high and the second low. Where the probe is near the majority
baseline the encoder lacks the label and no query head can help (choose another encoder); where
precision already matches the probe, frozen retrieval already does what training would.

Example:
    .. code-block:: python

        from llama_index_lvlm_retriever.evaluation.kb_diagnostics import diagnose_kb

        report = diagnose_kb(kb)                 # labels from the KB items
        print(report.summary())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from llama_index_lvlm_retriever.kb import KnowledgeBase

__all__ = ["KBDiagnostics", "diagnose_kb", "linear_probe_accuracy", "topk_label_precision"]


@dataclass(frozen=True)
class KBDiagnostics:
    """What :func:`diagnose_kb` measured.

    Args:
        n_items: Labelled KB items used.
        n_labels: Distinct labels among them.
        k: Neighbours per item in the precision.
        majority_baseline: Share of the most frequent label (chance level of both measures).
        linear_probe_accuracy: Cross-validated accuracy of a linear classifier on frozen image vectors.
        topk_precision_image: Leave-one-out top-k label precision, image->image (the image head).
        topk_precision_text: The same, image->caption (the text head).
        expected_precision_at_random: Precision of k random other items (sum of squared label shares).
        folds: Cross-validation folds of the probe.
    """

    n_items: int
    n_labels: int
    k: int
    majority_baseline: float
    linear_probe_accuracy: float
    topk_precision_image: float
    topk_precision_text: float
    expected_precision_at_random: float
    folds: int

    @property
    def headroom(self) -> float:
        """Linear-probe accuracy minus image top-k precision: how much the vectors hold that similarity ignores."""
        return self.linear_probe_accuracy - self.topk_precision_image

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (with ``headroom``)."""
        return {**asdict(self), "headroom": self.headroom}

    def summary(self) -> str:
        """A few lines a user reads before spending GPU hours on stage 2."""
        verdict = (
            "the label is barely in the frozen vectors: a query-side head cannot add it; try another encoder"
            if self.linear_probe_accuracy < self.majority_baseline + 0.05
            else "similarity already uses the label about as well as a linear probe can: little room for stage 2"
            if self.headroom < 0.05
            else "the vectors hold the label but similarity does not use it: stage 2 has room"
        )
        return (
            f"{self.n_items} labelled KB items, {self.n_labels} labels (majority {self.majority_baseline:.3f})\n"
            f"linear probe on frozen image vectors ({self.folds}-fold): {self.linear_probe_accuracy:.3f}\n"
            f"frozen top-{self.k} label precision: image->image {self.topk_precision_image:.3f}, "
            f"image->caption {self.topk_precision_text:.3f} (random {self.expected_precision_at_random:.3f})\n"
            f"verdict: {verdict}"
        )


def diagnose_kb(
    kb: KnowledgeBase,
    labels: Sequence[str] | None = None,
    *,
    k: int = 4,
    folds: int = 5,
    seed: int = 0,
) -> KBDiagnostics:
    """Linear-probe accuracy vs frozen top-k label precision of a knowledge base.

    Args:
        kb: The knowledge base (its frozen image and text vectors are read; nothing is embedded).
        labels: One label per KB item; ``None`` = the items' own ``label`` (unlabelled items are
            left out).
        k: Neighbours per item for the precision (the paper reads 2 + 2).
        folds: Cross-validation folds of the linear probe.
        seed: Seed of the folds and the probe's initialisation.

    Returns:
        The :class:`KBDiagnostics`.

    Raises:
        ValueError: Fewer than ``2 * folds`` labelled items, a single label, ``labels`` of the wrong
            length, or ``k`` / ``folds`` out of range.
    """
    if labels is None:
        labels = [item.label for item in kb.items]  # type: ignore[misc]
    if len(labels) != len(kb):
        raise ValueError(f"got {len(labels)} labels for {len(kb)} KB items; pass one per item (None = unlabelled)")
    keep = np.array([label is not None for label in labels])
    names = sorted({str(label) for label in labels if label is not None})
    if keep.sum() < 2 * folds or len(names) < 2:
        raise ValueError(
            f"diagnose_kb needs >= {2 * folds} labelled items and >= 2 labels, got {int(keep.sum())} items with "
            f"{len(names)} label(s); give the KB items labels (the 'label' field) or pass labels="
        )
    if k < 1 or folds < 2:
        raise ValueError(f"k must be >= 1 and folds >= 2, got k={k}, folds={folds}")
    index = {name: i for i, name in enumerate(names)}
    y = np.array([index[str(labels[i])] for i in np.flatnonzero(keep)])  # (n,)
    image = np.asarray(kb.image_vectors, dtype=np.float32)[keep]  # (n, d)
    text = np.asarray(kb.text_vectors, dtype=np.float32)[keep]  # (n, d)
    shares = np.bincount(y, minlength=len(names)) / len(y)
    return KBDiagnostics(
        n_items=len(y),
        n_labels=len(names),
        k=k,
        majority_baseline=float(shares.max()),
        linear_probe_accuracy=linear_probe_accuracy(image, y, folds=folds, seed=seed),
        topk_precision_image=topk_label_precision(image, image, y, k),
        topk_precision_text=topk_label_precision(image, text, y, k),
        expected_precision_at_random=float((shares**2).sum()),
        folds=folds,
    )


def topk_label_precision(queries: np.ndarray, keys: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Leave-one-out top-k label precision: row ``i`` of ``queries`` searches ``keys`` without row ``i``.

    Args:
        queries: ``(n, d)`` unit query vectors.
        keys: ``(n, d)`` unit key vectors (row ``i`` is the query's own item, excluded).
        labels: ``(n,)`` integer labels.
        k: Neighbours per query.

    Returns:
        Mean share of the ``k`` nearest other items whose label equals the query's.

    Example:
        >>> v = np.eye(4, dtype=np.float32)[[0, 0, 1, 1]]
        >>> topk_label_precision(v, v, np.array([0, 0, 1, 1]), k=1)
        1.0
    """
    scores = queries @ keys.T  # (n, n) cosines of unit vectors
    np.fill_diagonal(scores, -np.inf)  # leave the query's own item out
    k = min(k, scores.shape[1] - 1)
    top = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]  # (n, k) any order: precision ignores it
    return float((labels[top] == labels[:, None]).mean())


def linear_probe_accuracy(x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0, epochs: int = 300) -> float:
    """Stratified k-fold accuracy of a multinomial logistic regression (L2, full-batch Adam) on ``x``.

    Features are standardised on each training fold; the model is small and trained to convergence,
    so the number reflects what is linearly in the vectors, not the optimiser.

    Args:
        x: ``(n, d)`` features.
        y: ``(n,)`` integer labels.
        folds: Folds (stratified by label, seeded).
        seed: Seed of the folds and the initialisation.
        epochs: Full-batch optimisation steps per fold.

    Returns:
        Accuracy over all held-out predictions.
    """
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        fold_of[rows] = np.arange(len(rows)) % folds  # stratified round-robin
    n_labels = int(y.max()) + 1
    correct = 0
    generator = torch.Generator().manual_seed(seed)
    for fold in range(folds):
        train, held = fold_of != fold, fold_of == fold
        if not held.any():
            continue
        mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
        xt = torch.from_numpy((x[train] - mean) / std).float()  # (m, d)
        xh = torch.from_numpy((x[held] - mean) / std).float()
        yt = torch.from_numpy(y[train]).long()
        weight = (torch.randn(x.shape[1], n_labels, generator=generator) * 0.01).requires_grad_()
        bias = torch.zeros(n_labels, requires_grad=True)
        optimiser = torch.optim.Adam([weight, bias], lr=0.05)
        decay = 1e-3 / math.sqrt(len(yt))  # mild L2: keeps separable folds from diverging
        for _ in range(epochs):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(xt @ weight + bias, yt) + decay * weight.square().sum()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            correct += int(((xh @ weight + bias).argmax(dim=1).numpy() == y[held]).sum())
    return correct / len(y)
