"""Reader scoring shared by feedback collection, real-retrieval validation and feedback rounds.

Private module: gold targets of labelled cases, batched ``reader.score`` over (case, candidate)
pairs, and ``log P(gold | candidate)`` from label log-probabilities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from llama_index_lvlm_retriever.data.records import Case, KBItem
    from llama_index_lvlm_retriever.readers.base import Reader


def _gold_targets(cases: list[Case], reader: Reader) -> torch.Tensor:
    """Multi-hot gold labels ``(n, L)``, checking each case's labels against the task's label set."""
    task = reader.task
    labels = [str(x) for x in task.labels]
    index = {name: i for i, name in enumerate(labels)}
    targets = torch.zeros(len(cases), len(labels), dtype=torch.bool)
    for row, case in enumerate(cases):
        if not case.labels:
            raise ValueError(
                f"case {case.id!r} has no gold label; feedback needs labelled cases (labels in {labels})"
            )
        if not task.multi_label and len(case.labels) != 1:
            raise ValueError(
                f"case {case.id!r} has {len(case.labels)} gold labels {list(case.labels)} but task "
                f"{task.name!r} is single-label; give it exactly one of {labels}"
            )
        for label in case.labels:
            if label not in index:
                raise ValueError(
                    f"case {case.id!r} has gold label {label!r}, which is not in the label set of task "
                    f"{task.name!r}: {labels}; fix the case's label or use a task that has it"
                )
            targets[row, index[label]] = True
    return targets



def _score_pairs(
    cases: list[Case],
    pairs: list[tuple[int, KBItem]],
    reader: Reader,
    batch_size: int,
    n_labels: int,
    bar: Any,
) -> torch.Tensor:
    """Reader log-probabilities ``(P, L)`` of every (case, candidate) pair, in batches."""
    out = torch.empty(len(pairs), n_labels, dtype=torch.float32)
    last_row = -1  # the bar counts cases whose pairs are all scored
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        scores = reader.score([cases[row] for row, _ in chunk], [[item] for _, item in chunk])
        log_probs = torch.as_tensor(np.asarray(scores.log_probs), dtype=torch.float32)  # (m, 1, L)
        if log_probs.shape != (len(chunk), 1, n_labels):
            raise ValueError(
                f"{type(reader).__name__}.score returned log_probs of shape {tuple(log_probs.shape)} for "
                f"{len(chunk)} cases with 1 candidate each and {n_labels} labels; expected "
                f"({len(chunk)}, 1, {n_labels})"
            )
        bad = torch.isnan(log_probs).any(dim=-1)[:, 0]  # (m,)
        if bad.any():
            row, item = chunk[int(bad.nonzero()[0])]
            raise ValueError(
                f"the reader returned NaN log-probabilities for case {cases[row].id!r} with candidate "
                f"{item.id!r}; check the reader's numerics (dtype, inputs)"
            )
        out[start : start + len(chunk)] = log_probs[:, 0]
        done_row = chunk[-1][0] if start + len(chunk) == len(pairs) else chunk[-1][0] - 1
        if done_row > last_row:
            bar.update(done_row - last_row)
            last_row = done_row
    if len(cases) - 1 > last_row:  # cases without any candidate
        bar.update(len(cases) - 1 - last_row)
    return out



def _gold_log_probs(label_lp: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """``log P(gold | candidate)`` ``(n, N)`` from label log-probs ``(n, N, L)`` and gold ``(n, L)``."""
    if not multi_label:
        gold_index = targets.float().argmax(dim=-1)  # (n,)
        return label_lp.gather(-1, gold_index[:, None, None].expand(-1, label_lp.shape[1], 1))[..., 0]
    # Independent labels: log P(set) = sum_l [y_l log p_l + (1 - y_l) log(1 - p_l)];
    # log1p(-exp(x)) is the stable log(1 - p), clamped so p = 1 gives a finite floor.
    log_not = torch.log1p(-label_lp.exp().clamp(max=1.0 - 1e-7))  # (n, N, L)
    y = targets[:, None, :]  # (n, 1, L)
    return torch.where(y, label_lp, log_not).sum(dim=-1)


__all__ = ["_gold_log_probs", "_gold_targets", "_score_pairs"]
