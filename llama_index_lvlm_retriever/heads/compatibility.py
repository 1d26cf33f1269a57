"""Does a query head fit a knowledge base? Dimensions, head type, and the encoder it was trained for."""

from __future__ import annotations

from llama_index_lvlm_retriever.errors import UsageError
from llama_index_lvlm_retriever.heads.encoder_head import EncoderQueryHead
from llama_index_lvlm_retriever.heads.query_head import QueryHead
from llama_index_lvlm_retriever.kb import EncoderMismatchError, KnowledgeBase
from llama_index_lvlm_retriever.kb.encoding import describe_encoder, encoder_label


def check_head_fits(
    name: str, head: QueryHead | None, kb_dim: int, knowledge_base: KnowledgeBase | None = None
) -> QueryHead | None:
    """Return ``head`` if it can search a ``kb_dim``-d knowledge base built with its encoder.

    Args:
        name: How to call the head in errors (``"image_head"``).
        head: The head, or ``None`` (identity, always fits).
        kb_dim: Dimension of the knowledge base's vectors.
        knowledge_base: The knowledge base, for the encoder check of a head that records one.

    Raises:
        EncoderMismatchError: The head was trained for a knowledge base of another encoder.
        TypeError: Not a query head.
        UsageError: The head's output dimension is not ``kb_dim`` (a ``ValueError``).
    """
    if head is None:
        return None
    # A trained head records the encoder it was fitted for (``trained_on``, written by the training
    # engine); a head without a record (fresh, or saved by an older version) is not checked.
    trained_on = getattr(head, "trained_on", None)  # duck-typed heads need not have the attribute
    if knowledge_base is not None and isinstance(trained_on, dict) and isinstance(trained_on.get("encoder"), dict):
        saved = trained_on["encoder"]
        given = describe_encoder(knowledge_base.embed_model, with_probe=False)
        # Fingerprints (weights hashes) decide when both sides have one, else the model names.
        key = "fingerprint" if saved.get("fingerprint") and given.get("fingerprint") else "model_name"
        if saved.get(key) and given.get(key) and (saved[key], saved.get("class_name")) != (
            given[key], given.get("class_name")
        ):
            raise EncoderMismatchError(
                f"{name} was trained for a knowledge base built with {encoder_label(saved)}, but this knowledge "
                f"base was built with {encoder_label(given)} ({key} differs); use heads trained on this knowledge "
                "base's encoder, or the knowledge base the heads were trained on"
            )
    # Image-input heads are duck-typed (needs_image=True) so users can plug in their own towers.
    if not isinstance(head, (QueryHead, EncoderQueryHead)) and not getattr(head, "needs_image", False):
        raise TypeError(
            f"{name} must be a QueryHead or None (identity), or an image-input head (needs_image=True, "
            f"e.g. EncoderQueryHead); got {type(head).__name__}"
        )
    if head.out_dim != kb_dim:
        raise UsageError(
            f"{name} produces {head.out_dim}-d query vectors but the knowledge base indexes are "
            f"{kb_dim}-d; use a head trained for this knowledge base (config out_dim={kb_dim})"
        )
    return head


__all__ = ["check_head_fits"]
