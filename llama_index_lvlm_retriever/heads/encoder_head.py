"""EncoderQueryHead: a trainable copy of the CLIP image tower as the query side of one retriever head.

The paper-faithful head of arXiv 2508.17394 ("LVLM-Aware Multimodal Retrieval for RAG-Based Medical
Diagnosis with General-Purpose Models"): a copy of the knowledge base's image tower (vision
transformer + projection) reads the query *image*, and its output is blended with the frozen query
embedding ``e`` (from the cache at training time, from the retriever at query time):

.. code-block:: text

    q = normalize((1 - alpha) * normalize(e) + alpha * normalize(tower(x)))      alpha = 0.15

Two ways to fine-tune the tower copy:

* **last N blocks** (default, ``lora_r=None``): the last ``train_last_n_blocks`` transformer blocks,
  the post-layernorm and the projection are trainable; the rest stays as the frozen encoder has it.
* **LoRA** (``lora_r=r``, needs the ``peft`` extra: ``pip install "llama-index-lvlm-retriever[peft]"``):
  rank-``r`` adapters on the ``lora_target_modules`` linear layers of *every* block (CLIP's
  attention has ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``; its MLP ``fc1``, ``fc2``). Only the
  adapters train: the whole tower, the post-layernorm and the projection included, stays frozen, so
  the trained update is exactly the low-rank one (``train_last_n_blocks`` is not used).

A fresh head is a copy of the frozen tower (LoRA's ``B`` matrices start at zero, so the adapters add
nothing), so ``tower(x) == e`` (without question fusion) and the blend returns ``e``: training starts
from standard RAG. The keys (knowledge-base vectors) are never re-embedded.

**Saving a LoRA head** merges the adapters into the tower weights (``W + (lora_alpha / r) B A``) and
writes a plain CLIP tower in the usual ``config.json`` + ``model.safetensors`` layout, with
``lora_merged=True`` in the config (the LoRA settings stay there as a record). Loading it needs no
``peft`` and the loaded head runs at plain-tower speed; its tower is fully frozen. To continue LoRA
training from it, :meth:`EncoderQueryHead.with_fresh_lora` puts new zero-initialised adapters on the
merged weights (the training engine does this when it continues from such a head).

Unlike :class:`~llama_index_lvlm_retriever.heads.query_head.QueryHead` this head needs the query image:
it sets ``needs_image = True`` and :class:`~llama_index_lvlm_retriever.retriever.LVLMAwareRetriever`
hands it the query images' ``pixel_values`` (processed by the knowledge base's embedding model).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from safetensors import SafetensorError
from safetensors.torch import load_file as _load_safetensors
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from llama_index_lvlm_retriever.errors import HeadFormatError
from llama_index_lvlm_retriever.heads._saving import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    read_head_config,
    read_trained_on,
    register_head,
    write_head,
)
from llama_index_lvlm_retriever.heads.encoder_lora import (
    attach_lora,
    is_lora_key,
    load_plain_tower_weights,
    plain_tower_state,
)

logger = logging.getLogger(__name__)

ENCODER_HEAD_CLASS = "EncoderQueryHead"
@dataclass(frozen=True)
class EncoderQueryHeadConfig:
    """Typed configuration of an :class:`EncoderQueryHead` (saved as ``config.json``).

    Args:
        vision_config: The CLIP vision tower's config (``CLIPVisionConfig.to_dict()``).
        projection_dim: Output size of the tower's projection (the embedding dimension).
        alpha: Weight of the tower's output in the blend with the frozen embedding (paper: 0.15).
        train_last_n_blocks: Trainable transformer blocks, counted from the last (0 = only the
            post-layernorm and the projection). Not used with LoRA.
        lora_r: Rank of LoRA adapters on the tower; ``None`` = no LoRA (last-N-blocks mode). With
            LoRA only the adapters train (needs the ``peft`` extra).
        lora_alpha: LoRA scaling numerator: the update is ``(lora_alpha / lora_r) * B A``.
        lora_dropout: Dropout on the adapters' input (training only).
        lora_target_modules: Names of the tower's linear layers that get adapters, matched against
            the last component of the module names (CLIP: ``q_proj``, ``k_proj``, ``v_proj``,
            ``out_proj``, ``fc1``, ``fc2``).
        lora_merged: The adapters were merged into the tower weights (a saved LoRA head): the tower
            is plain and fully frozen and ``peft`` is not needed. Set by ``save_pretrained``.

    Raises:
        ValueError: A value out of range; the message names the field and the value.

    Example:
        >>> EncoderQueryHeadConfig(vision_config={"num_hidden_layers": 2}, projection_dim=16).alpha
        0.15
    """

    vision_config: dict[str, Any] = field(default_factory=dict)
    projection_dim: int = 512
    alpha: float = 0.15
    train_last_n_blocks: int = 1
    lora_r: int | None = None
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lora_merged: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.projection_dim, bool) or not isinstance(self.projection_dim, int) or self.projection_dim < 1:
            raise ValueError(f"EncoderQueryHeadConfig.projection_dim must be a positive int, got {self.projection_dim!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"EncoderQueryHeadConfig.alpha must be in [0, 1], got {self.alpha!r}")
        n = self.train_last_n_blocks
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"EncoderQueryHeadConfig.train_last_n_blocks must be an int >= 0, got {n!r}")
        r = self.lora_r
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise ValueError(f"EncoderQueryHeadConfig.lora_r must be a positive int or None, got {r!r}")
        if not float(self.lora_alpha) > 0.0:
            raise ValueError(f"EncoderQueryHeadConfig.lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"EncoderQueryHeadConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        targets = self.lora_target_modules
        if isinstance(targets, str) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(
                f"EncoderQueryHeadConfig.lora_target_modules must be a non-empty sequence of module names, "
                f"e.g. ('q_proj', 'v_proj'), got {targets!r}"
            )
        if self.lora_merged and r is None:
            raise ValueError("EncoderQueryHeadConfig.lora_merged=True needs lora_r (the rank the merged adapters had)")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "lora_alpha", float(self.lora_alpha))
        object.__setattr__(self, "lora_dropout", float(self.lora_dropout))
        object.__setattr__(self, "lora_target_modules", tuple(targets))  # a JSON list back to a tuple
        object.__setattr__(self, "lora_merged", bool(self.lora_merged))
        # The JSON form (e.g. string keys of id2label), so a saved and reloaded config compares equal.
        object.__setattr__(self, "vision_config", json.loads(json.dumps(self.vision_config, sort_keys=True)))

    @property
    def uses_lora(self) -> bool:
        """Whether the head carries live (unmerged) LoRA adapters, and so needs ``peft``."""
        return self.lora_r is not None and not self.lora_merged

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dict."""
        record = asdict(self)
        record["lora_target_modules"] = list(self.lora_target_modules)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> EncoderQueryHeadConfig:
        """Build a config from a dict, warning (by name) about keys it does not know."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            logger.warning("EncoderQueryHeadConfig: ignoring unknown config keys %s", unknown)
        return cls(**{k: v for k, v in record.items() if k in known})


class EncoderQueryHead(nn.Module):
    """A trainable copy of a CLIP image tower, blended with the frozen query embedding.

    Build it from the knowledge base's embedding model with :meth:`from_embedding` (or
    :meth:`from_pretrained` for a saved one). ``forward(pixel_values, embeddings)`` returns unit
    query vectors ``(batch, projection_dim)``.

    Args:
        config: What to build; see :class:`EncoderQueryHeadConfig`.

    Raises:
        ValueError: ``train_last_n_blocks`` exceeds the tower's depth, or a LoRA target module names
            no linear layer of the tower.
        ImportError: ``lora_r`` is set (adapters not merged) and ``peft`` is not installed.

    Example:
        .. code-block:: python

            from llama_index_lvlm_retriever.heads import EncoderQueryHead

            head = EncoderQueryHead.from_embedding(embed_model, train_last_n_blocks=2)
            lora = EncoderQueryHead.from_embedding(embed_model, lora_r=8)  # needs the peft extra
            retriever = LVLMAwareRetriever(kb, image_head=head)  # the retriever passes pixel_values
    """

    needs_image = True
    """The retriever must pass the query images' ``pixel_values`` (see :meth:`encode`)."""

    def __init__(self, config: EncoderQueryHeadConfig) -> None:
        super().__init__()
        self.config = config
        # Encoder and KB fingerprints of a trained head (see QueryHead.trained_on); None when fresh.
        self.trained_on: dict[str, Any] | None = None
        vision = CLIPVisionConfig(**config.vision_config)
        depth = int(vision.num_hidden_layers)
        if config.train_last_n_blocks > depth:
            raise ValueError(
                f"train_last_n_blocks={config.train_last_n_blocks} but the vision tower has {depth} blocks; "
                f"choose at most {depth}"
            )
        vision.projection_dim = config.projection_dim
        self.tower = CLIPVisionModelWithProjection(vision)
        if config.uses_lora:
            attach_lora(self.tower, self.config)
        self._freeze()

    def _freeze(self) -> None:
        """Freeze everything except what the config trains (see the module docstring)."""
        self.tower.requires_grad_(False)
        if self.config.lora_r is not None:
            # LoRA: only the adapters; a merged head (no adapters left) is fully frozen.
            for name, param in self.tower.named_parameters():
                if is_lora_key(name):
                    param.requires_grad_(True)
            return
        blocks = self.tower.vision_model.encoder.layers
        n = self.config.train_last_n_blocks
        trainable: list[nn.Module] = [self.tower.vision_model.post_layernorm, self.tower.visual_projection]
        trainable.extend(blocks[len(blocks) - n :] if n > 0 else [])
        for module in trainable:
            module.requires_grad_(True)

    def _load_tower_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load plain CLIP tower weights (``vision_model.*``, ``visual_projection.*``) into the tower."""
        load_plain_tower_weights(self.tower, state)

    def _plain_tower_state(self) -> dict[str, torch.Tensor]:
        """The tower's weights as a plain CLIP tower, with any LoRA adapters merged in (detached, CPU)."""
        return plain_tower_state(self.tower, merge_lora=self.config.uses_lora)

    def with_fresh_lora(self) -> EncoderQueryHead:
        """A copy with new zero-initialised LoRA adapters on this head's (merged) tower weights.

        Continues LoRA training from a saved (merged) LoRA head; on a head with live adapters it
        merges them first. The copy equals this head at the start and sits on the same device.

        Raises:
            ValueError: The head is not a LoRA head (``lora_r`` is ``None``).
            ImportError: ``peft`` is not installed.
        """
        if self.config.lora_r is None:
            raise ValueError("with_fresh_lora() needs a LoRA head (lora_r set); this head trains its last blocks")
        head = type(self)(replace(self.config, lora_merged=False))
        head._load_tower_weights(self._plain_tower_state())
        return head.to(self.tower.visual_projection.weight.device).train(self.training)

    @classmethod
    def from_embedding(
        cls,
        embed_model: Any,
        *,
        alpha: float = 0.15,
        train_last_n_blocks: int = 1,
        lora_r: int | None = None,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    ) -> EncoderQueryHead:
        """Copy the image tower of a :class:`~llama_index_lvlm_retriever.embeddings.CLIPEmbedding`.

        Args:
            embed_model: The knowledge base's embedding model; its ``.model`` must be a CLIP model
                with ``vision_model`` and ``visual_projection`` (e.g. ``CLIPModel``).
            alpha: Blend weight of the tower's output.
            train_last_n_blocks: Trainable blocks, counted from the last (without LoRA).
            lora_r: LoRA rank; ``None`` = fine-tune the last blocks instead. See
                :class:`EncoderQueryHeadConfig` for this and the other ``lora_*`` arguments.
            lora_alpha: LoRA scaling numerator.
            lora_dropout: Dropout on the adapters' input.
            lora_target_modules: Linear layers of each block that get adapters.

        Returns:
            The head (float32, on the model's device), equal to the frozen tower.

        Raises:
            TypeError: The embedding model has no CLIP image tower.
            ImportError: ``lora_r`` is set and ``peft`` is not installed.
        """
        model = getattr(embed_model, "model", None)
        if model is None or not hasattr(model, "vision_model") or not hasattr(model, "visual_projection"):
            raise TypeError(
                f"EncoderQueryHead needs a CLIP-style embedding model (.model with vision_model and "
                f"visual_projection), got {type(embed_model).__name__}; use a CLIPEmbedding over a CLIP "
                "checkpoint, or TrainerConfig(mode='adapter')"
            )
        config = EncoderQueryHeadConfig(
            vision_config=model.config.vision_config.to_dict(),
            projection_dim=int(model.visual_projection.out_features),
            alpha=alpha,
            train_last_n_blocks=train_last_n_blocks,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_target_modules=tuple(lora_target_modules),
        )
        head = cls(config)
        # Same submodule names in CLIPModel and CLIPVisionModelWithProjection: copy by name.
        source = {k: v for k, v in model.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
        head._load_tower_weights({k: v.float() for k, v in source.items()})
        return head.to(next(model.parameters()).device)

    @property
    def is_identity(self) -> bool:
        """Always ``False``: the head has parameters."""
        return False

    @property
    def dim(self) -> int:
        """Dimension of the frozen query embedding it blends with."""
        return self.config.projection_dim

    @property
    def out_dim(self) -> int:
        """Dimension of the produced query vector."""
        return self.config.projection_dim

    def extra_repr(self) -> str:
        cfg = self.config
        if cfg.lora_r is None:
            return f"alpha={cfg.alpha}, train_last_n_blocks={cfg.train_last_n_blocks}"
        return (f"alpha={cfg.alpha}, lora_r={cfg.lora_r}, lora_alpha={cfg.lora_alpha}, "
                f"lora_target_modules={cfg.lora_target_modules}, lora_merged={cfg.lora_merged}")

    def forward(self, pixel_values: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Blend the tower's image embedding with the frozen query embedding.

        Args:
            pixel_values: Processed query images, ``(batch, channels, height, width)``.
            embeddings: Frozen query embeddings, ``(batch, dim)``.

        Returns:
            L2-normalised query vectors, ``(batch, dim)``.

        Raises:
            ValueError: Shapes that do not fit.
        """
        if embeddings.ndim != 2 or embeddings.shape[-1] != self.dim or pixel_values.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"EncoderQueryHead expects pixel_values (batch, C, H, W) and embeddings (batch, {self.dim}) with "
                f"one row each per query, got {tuple(pixel_values.shape)} and {tuple(embeddings.shape)}"
            )
        e = F.normalize(embeddings.float(), dim=-1)  # (batch, dim)
        weight = self.tower.visual_projection.weight
        h = self.tower(pixel_values=pixel_values.to(device=weight.device, dtype=weight.dtype)).image_embeds
        h = F.normalize(h.float(), dim=-1)  # (batch, dim): same pooling as get_image_features
        alpha = self.config.alpha
        return F.normalize((1.0 - alpha) * e + alpha * h, dim=-1)

    def encode(self, embeddings: np.ndarray, *, pixel_values: torch.Tensor) -> np.ndarray:
        """Apply the head without gradients (eval mode); numpy in, numpy out.

        Args:
            embeddings: Frozen query embeddings, ``(n, dim)``.
            pixel_values: The same queries' processed images, ``(n, C, H, W)``.

        Returns:
            float32 array ``(n, dim)``.
        """
        batch = np.asarray(embeddings, dtype=np.float32).reshape(-1, self.dim)  # (n, dim)
        device = self.tower.visual_projection.weight.device
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                out = self(pixel_values.to(device), torch.from_numpy(np.ascontiguousarray(batch)).to(device))
        finally:
            self.train(was_training)
        return out.float().cpu().numpy()

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``save_directory`` (atomically).

        A LoRA head is saved merged: a plain tower (adapters folded into the weights) and its config
        with ``lora_merged=True``, so :meth:`from_pretrained` needs no ``peft``.

        Returns:
            The folder.
        """
        state = {f"tower.{k}": v for k, v in self._plain_tower_state().items()}  # == state_dict() without LoRA
        config = replace(self.config, lora_merged=True) if self.config.uses_lora else self.config
        out = write_head(save_directory, state, config.to_dict(), ENCODER_HEAD_CLASS, trained_on=self.trained_on)
        logger.info("saved an encoder query head to %s", out)
        return out

    @classmethod
    def from_pretrained(cls, load_directory: str | Path, *, device: str | torch.device = "cpu") -> EncoderQueryHead:
        """Load a head written by :meth:`save_pretrained` (in eval mode).

        A saved LoRA head loads as a plain (merged, fully frozen) tower; no ``peft`` needed.

        Raises:
            FileNotFoundError: The folder or one of its two files is missing.
            ValueError: The config is not an encoder head's, or the weights do not fit it.
        """
        return cls._load_folder(load_directory, device=device)

    @classmethod
    def _load_folder(cls, folder: str | Path, *, device: str | torch.device = "cpu") -> EncoderQueryHead:
        folder = Path(folder)
        class_name, record = read_head_config(folder)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if (class_name or ENCODER_HEAD_CLASS) != ENCODER_HEAD_CLASS:
            raise ValueError(f"{config_path} is not an EncoderQueryHead config; load it with QueryHead.from_pretrained")
        head = cls(EncoderQueryHeadConfig.from_dict(record))
        try:
            state = _load_safetensors(str(weights_path), device="cpu")
        except SafetensorError as err:
            raise HeadFormatError(f"{weights_path} is not a readable safetensors file ({err}); re-save or retrain the head") from err
        prefix = "tower."
        try:
            # Plain tower weights: they also load into a head whose config asks for live adapters.
            head._load_tower_weights({k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()})
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"weights in {weights_path} do not fit the config in {config_path}: {err}") from err
        head.trained_on = read_trained_on(folder)
        return head.to(device).eval()


register_head(EncoderQueryHead)

__all__ = ["ENCODER_HEAD_CLASS", "EncoderQueryHead", "EncoderQueryHeadConfig"]
