"""``MultiPositiveInfoNCELoss``: symmetric CLIP contrastive loss where equal captions are all positives."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MultiPositiveInfoNCELoss"]


class MultiPositiveInfoNCELoss(nn.Module):
    """Pull each image towards every caption of its group (and back), push it from the others.

    Formula, for a batch of ``B`` image-caption pairs with group ids ``g`` (equal ids = identical
    captions)::

        L[i, j]  = s * cos(image_i, text_j)                       (logits, image -> text)
        T[i, j]  = 1[g_i = g_j] / |{k : g_k = g_i}|               (target distribution, rows sum to 1)
        loss_it  = -(1 / B) sum_i sum_j T[i, j] log softmax_j(L[i, :])
        loss_ti  = -(1 / B) sum_j sum_i T[j, i] log softmax_i(L[:, j])
        loss     = (loss_it + loss_ti) / 2

    where ``s = 1 / temperature`` is the logit scale (CLIP's learnable ``exp(logit_scale)``) and
    ``T`` is symmetric, so the text -> image direction uses the same target. With all captions
    distinct, ``T`` is the identity and the loss is exactly CLIP's symmetric cross-entropy.
    Plain CLIP breaks when many captions are equal: it treats an image's identical-caption
    neighbours as negatives, so its optimum asks the model to tell apart texts that are the same
    string, which is impossible, and the gradient keeps pushing same-class images apart.

    Source: the symmetric InfoNCE of "Learning Transferable Visual Models From Natural Language
    Supervision" (CLIP), Radford et al., arXiv 2103.00020, with the multi-positive target of
    "Supervised Contrastive Learning", Khosla et al., arXiv 2004.11362 (positives averaged in
    the target distribution, their ``L_out`` placement of the sum).

    Inputs: ``logits`` ``(batch, batch)`` image-to-text scores already multiplied by the logit
    scale (row ``i`` = image ``i``, column ``j`` = caption ``j``), and ``groups`` ``(batch,)``
    integer caption ids. Returns a scalar.

    Relation to the other losses: this is a *pre-training* loss for the frozen retriever's dual
    encoder (image-caption alignment on the knowledge base), used by
    :class:`~llama_index_lvlm_retriever.training.clip_pretrain.CLIPPretrainEngine`; the
    candidate losses in :mod:`llama_index_lvlm_retriever.training.losses` (posterior KL, LSR,
    EMDR) later fine-tune the query head with reader feedback and never see captions.

    Hyperparameters: none of its own. The temperature *divides* the cosines (the scale ``s``
    multiplies them); CLIP starts at temperature 0.07 (``s`` = 14.3) and caps ``s`` at 100. Its
    value at uniform logits is ``log B``; its infimum is the target's entropy
    ``mean_i log |group(i)|`` (0 with all captions distinct), reached when each image spreads its
    probability evenly over its group's captions.

    Raises:
        ValueError: ``logits`` is not square ``(batch, batch)`` with ``batch >= 1`` or ``groups``
            does not have shape ``(batch,)``.

    Example:
        >>> import torch
        >>> loss = MultiPositiveInfoNCELoss()
        >>> round(float(loss(torch.zeros(4, 4), torch.tensor([0, 0, 1, 2]))), 4)  # log 4
        1.3863
    """

    def forward(self, logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss (see the class docstring)."""
        if logits.ndim != 2 or logits.shape[0] != logits.shape[1] or logits.shape[0] < 1:
            raise ValueError(
                f"logits must be a square (batch, batch) matrix, got shape {tuple(logits.shape)}"
            )
        if groups.shape != (logits.shape[0],):
            raise ValueError(
                f"groups must have shape ({logits.shape[0]},) to match logits, got "
                f"{tuple(groups.shape)}"
            )
        same = groups[:, None] == groups[None, :]  # (batch, batch) bool, symmetric
        target = same.to(logits.dtype)
        target = target / target.sum(dim=1, keepdim=True)  # (batch, batch), rows sum to 1
        # Float32 log-softmax: half-precision logits lose the small target-weighted differences.
        log_p_it = torch.log_softmax(logits.float(), dim=1)  # (batch, batch) over captions
        log_p_ti = torch.log_softmax(logits.float(), dim=0)  # (batch, batch) over images
        loss_it = -(target * log_p_it).sum(dim=1).mean()
        # T is symmetric, so column j's target over images is T[:, j] = T[j, :].
        loss_ti = -(target * log_p_ti).sum(dim=0).mean()
        return (loss_it + loss_ti) / 2
