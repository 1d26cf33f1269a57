"""LVLMAwareRetrieverConfig: the validated settings of the dual-head retriever."""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from llama_index.core.vector_stores.types import MetadataFilters

from llama_index_lvlm_retriever.errors import UsageError, describe_validation_error
from llama_index_lvlm_retriever.retriever.fusion import DEFAULT_HEAD_FUSION, HeadFusion


class LVLMAwareRetrieverConfig(BaseModel):
    """Settings of an :class:`LVLMAwareRetriever` (validated eagerly; bad values raise).

    Raises:
        UsageError: A value is out of range or of the wrong type (one line naming each field).

    Example:
        >>> LVLMAwareRetrieverConfig(k_image=2, k_text=0).k_text
        0
        >>> LVLMAwareRetrieverConfig().head_fusion
        'max'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    k_image: int = Field(
        default=2, ge=0, description="Neighbours from the image head (image index); 0 disables the head."
    )
    k_text: int = Field(
        default=2, ge=0, description="Neighbours from the text head (caption index); 0 disables the head."
    )
    question_weight: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Weight w of the question in the query: normalize((1 - w) * image + w * question); "
        "0 = image only (the paper).",
    )
    head_fusion: HeadFusion = Field(
        default=DEFAULT_HEAD_FUSION,
        description="Per-head score normalisation before merging: 'max' (each head's scores divided by its "
        "best, the paper), 'rank', 'zscore' or 'none' (raw cosines).",
    )
    exclude_self: bool = Field(
        default=False,
        description="Drop knowledge-base items whose decoded pixels equal the query image (leakage guard).",
    )
    show_progress: bool = Field(default=False, description="Show progress bars while embedding queries.")
    filters: MetadataFilters | None = Field(
        default=None,
        description="LlamaIndex MetadataFilters applied to every search (on id, content_hash, label, source or a "
        "metadata key), pushed down into the knowledge base's vector backend; per-query filters are ANDed with it.",
    )

    allow_other_kb: bool = Field(
        default=False,
        description="Use trained heads even on a knowledge base sharing under half of the items they were "
        "trained on (otherwise refused with KBMismatchError; any difference is warned about).",
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:  # pydantic's multi-line dump -> one documented line
            raise UsageError(f"invalid LVLMAwareRetriever settings: {describe_validation_error(err)}") from None

    @model_validator(mode="after")
    def _check_some_head(self) -> LVLMAwareRetrieverConfig:
        if self.k_image == 0 and self.k_text == 0:
            raise ValueError("k_image and k_text are both 0, so nothing would be retrieved; set one of them >= 1")
        return self


__all__ = ["LVLMAwareRetrieverConfig"]
