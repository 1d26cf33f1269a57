"""Disjoint roles for the miniature: which image serves which purpose, checked by content.

Every image of the miniature has exactly one role, so no model is judged on what it has seen:

=================  =============================================================================
role               used for
=================  =============================================================================
``encoder``        pre-training the small CLIP (the "general-purpose" frozen retriever encoder)
``kb``             the knowledge base (image + caption pairs)
``reader_sft``     the reader's stage-1 SFT queries
``retriever_train`` the queries whose reader feedback trains the retriever (stage 2)
``val``            checkpoint selection and the no-regression rule of stage 2, all other choices
``test``           the reported numbers (and the ceiling rows, which are labelled as not legal)
=================  =============================================================================

Roles are drawn per label (stratified) from groups of identical images (the raw data has
duplicates), so a duplicate never lands in two roles; :func:`check_roles_disjoint` verifies the
rendered files by content hash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from llama_index_lvlm_retriever.data.images import image_content_hash

__all__ = ["ROLES", "ROLE_TITLES", "assign_roles", "check_roles_disjoint", "role_table"]

ROLES: tuple[str, ...] = ("encoder", "kb", "reader_sft", "retriever_train", "val", "test")
ROLE_TITLES: dict[str, str] = {
    "encoder": "encoder pre-training",
    "kb": "knowledge base",
    "reader_sft": "reader SFT queries",
    "retriever_train": "retriever-training queries",
    "val": "validation",
    "test": "test",
}


def assign_roles(
    labels: np.ndarray,
    groups: Sequence[str],
    fractions: Mapping[str, float],
    *,
    seed: int,
    limit: int | None = None,
) -> dict[str, np.ndarray]:
    """Assign every image (index) one role, stratified by label, duplicates together.

    Args:
        labels: ``(n,)`` integer labels.
        groups: ``n`` group keys; images with equal keys (e.g. a hash of their pixels) share a role.
        fractions: Role -> share; missing roles get 0; shares must sum to 1.
        seed: Seed of the shuffle.
        limit: Use about this many images in total (a stratified subset); ``None`` = all.

    Returns:
        Role -> sorted image indices (every role of :data:`ROLES`, possibly empty).

    Raises:
        ValueError: Unknown roles, shares that do not sum to 1, or lengths that differ.

    Example:
        >>> roles = assign_roles(np.array([0, 0, 1, 1]), ["a", "b", "c", "d"], {"kb": 0.5, "test": 0.5}, seed=0)
        >>> sorted(len(v) for v in roles.values() if len(v))
        [2, 2]
    """
    unknown = sorted(set(fractions) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role(s) {unknown}; roles are {list(ROLES)}")
    shares = np.array([float(fractions.get(role, 0.0)) for role in ROLES])
    if np.any(shares < 0) or abs(shares.sum() - 1.0) > 1e-6:
        raise ValueError(f"role fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    labels = np.asarray(labels)
    if len(groups) != len(labels):
        raise ValueError(f"got {len(groups)} group keys for {len(labels)} labels")
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for index, key in enumerate(groups):
        members.setdefault(key, []).append(index)
    scale = 1.0 if limit is None else min(1.0, limit / len(labels))
    out: dict[str, list[int]] = {role: [] for role in ROLES}
    for label in np.unique(labels):
        keys = sorted({groups[i] for i in np.flatnonzero(labels == label)})
        keys = [keys[i] for i in rng.permutation(len(keys))]
        keys = keys[: max(1, round(len(keys) * scale))]
        # Cut the shuffled groups at the cumulative shares (rounded), so each role gets its share of every label.
        bounds = np.round(np.cumsum(shares) * len(keys)).astype(int)
        start = 0
        for role, stop in zip(ROLES, bounds):
            for key in keys[start:stop]:
                out[role].extend(members[key])
            start = stop
    return {role: np.array(sorted(indices), dtype=np.int64) for role, indices in out.items()}


def role_table(labels: np.ndarray, roles: Mapping[str, np.ndarray], label_names: Sequence[str]) -> list[str]:
    """A Markdown table: images per role and label, with totals."""
    header = "| Role | " + " | ".join(label_names) + " | Total |"
    lines = [header, "|---|" + "---:|" * (len(label_names) + 1)]
    for role in ROLES:
        indices = roles.get(role, np.zeros(0, dtype=np.int64))
        counts = np.bincount(np.asarray(labels)[indices], minlength=len(label_names)) if len(indices) else np.zeros(
            len(label_names), dtype=int)
        lines.append(f"| {ROLE_TITLES[role]} | " + " | ".join(str(int(c)) for c in counts) + f" | {len(indices)} |")
    return lines


def check_roles_disjoint(paths: Mapping[str, Sequence[str]]) -> None:
    """No image, by decoded-pixel content hash, in two roles.

    Args:
        paths: Role -> image files.

    Raises:
        ValueError: A shared image, naming both roles and the file.
    """
    seen: dict[str, str] = {}
    for role, files in paths.items():
        for path in files:
            other = seen.setdefault(image_content_hash(path), role)
            if other != role:
                raise ValueError(f"image {path} of role {role!r} also appears (same pixels) in role {other!r}")
