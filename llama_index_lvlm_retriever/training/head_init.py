"""The head a training run starts from: the retriever's own (continued) or a fresh one equal to it."""

from __future__ import annotations

import copy

import torch

from llama_index_lvlm_retriever.heads import EncoderQueryHead, QueryHead, QueryHeadConfig
from llama_index_lvlm_retriever.retriever import HEAD_IMAGE, LVLMAwareRetriever
from llama_index_lvlm_retriever.training.config import TrainerConfig


def initial_head(
    retriever: LVLMAwareRetriever, name: str, dim: int, config: TrainerConfig, device: torch.device
) -> QueryHead | EncoderQueryHead:
    """The ``name`` head to train: a copy of the retriever's trained head, else a fresh one (standard RAG).

    Raises:
        ValueError: The retriever's head does not fit the mode or the cache's dimension.
        TypeError: Encoder mode with an embedding model that has no CLIP image tower.
    """
    current = retriever.image_head if name == HEAD_IMAGE else retriever.text_head
    cfg = config
    if config.mode == "encoder":
        if isinstance(current, EncoderQueryHead):
            if current.config.lora_merged:
                # A saved LoRA head is a plain frozen tower: new zero adapters on its merged weights.
                return current.with_fresh_lora().to(device)
            return copy.deepcopy(current).to(device)  # continue from the retriever's tower
        head = EncoderQueryHead.from_embedding(
            retriever.knowledge_base.embed_model, alpha=cfg.alpha, train_last_n_blocks=cfg.encoder_last_n_blocks,
            lora_r=cfg.encoder_lora_r, lora_alpha=cfg.encoder_lora_alpha, lora_dropout=cfg.encoder_lora_dropout,
            lora_target_modules=cfg.encoder_lora_target_modules,
        )
        if head.dim != dim or head.out_dim != int(retriever.knowledge_base.dim):
            raise ValueError(
                f"the encoder's image tower gives {head.dim}-d vectors but the feedback cache holds {dim}-d "
                f"query embeddings and the knowledge base {retriever.knowledge_base.dim}-d keys; "
                "encoder mode needs a retriever without question fusion over its own encoder's KB"
            )
        return head.to(device)
    if isinstance(current, EncoderQueryHead):
        raise ValueError(
            f"the retriever's {name} head is an EncoderQueryHead (an image tower); continue training it "
            "with TrainerConfig(mode='encoder') and cases=, not mode='adapter'"
        )
    if current is not None and not current.is_identity:
        if current.dim != dim:
            raise ValueError(
                f"the retriever's {name} head reads {current.dim}-d embeddings but the feedback cache "
                f"holds {dim}-d ones; collect feedback with this retriever"
            )
        return copy.deepcopy(current).to(device)  # continue from the retriever's trained head
    return QueryHead(QueryHeadConfig(
        dim=dim, kind=cfg.head_kind, hidden_dim=cfg.head_hidden_dim, out_dim=int(retriever.knowledge_base.dim),
        alpha=cfg.alpha, dropout=cfg.dropout,
    )).to(device)


__all__ = ["initial_head"]
