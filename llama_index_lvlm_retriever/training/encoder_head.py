"""EncoderQueryHead: a trainable copy of the CLIP image tower as the query side of one retriever head.

The paper-faithful head of arXiv 2508.17394 ("LVLM-Aware Multimodal Retrieval for RAG-Based Medical
Diagnosis with General-Purpose Models"): a copy of the knowledge base's image tower (vision
transformer + projection) reads the query *image*, and its output is blended with the frozen query
embedding ``e`` (from the cache at training time, from the retriever at query time):

.. code-block:: text

    q = normalize((1 - alpha) * normalize(e) + alpha * normalize(tower(x)))      alpha = 0.15

Only the last ``train_last_n_blocks`` transformer blocks, the post-layernorm and the projection are
trainable; the rest stays as the frozen encoder has it. A fresh head is a copy of the frozen tower,
so ``tower(x) == e`` (without question fusion) and the blend returns ``e``: training starts from
standard RAG. The keys (knowledge-base vectors) are never re-embedded.

Unlike :class:`~llama_index_lvlm_retriever.query_heads.QueryHead` this head needs the query image:
it sets ``needs_image = True`` and :class:`~llama_index_lvlm_retriever.retriever.LVLMAwareRetriever`
hands it the query images' ``pixel_values`` (processed by the knowledge base's embedding model).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from safetensors.torch import load_file as _load_safetensors
from safetensors.torch import save as _safetensors_bytes
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from llama_index_lvlm_retriever.training._feedback_shards import atomic_write, json_bytes
from llama_index_lvlm_retriever.training._identity import package_versions

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ENCODER_HEAD_CLASS = "EncoderQueryHead"
_CLASS_KEY = "class_name"
_VERSIONS_KEY = "versions"


@dataclass(frozen=True)
class EncoderQueryHeadConfig:
    """Typed configuration of an :class:`EncoderQueryHead` (saved as ``config.json``).

    Args:
        vision_config: The CLIP vision tower's config (``CLIPVisionConfig.to_dict()``).
        projection_dim: Output size of the tower's projection (the embedding dimension).
        alpha: Weight of the tower's output in the blend with the frozen embedding (paper: 0.15).
        train_last_n_blocks: Trainable transformer blocks, counted from the last (0 = only the
            post-layernorm and the projection).

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

    def __post_init__(self) -> None:
        if isinstance(self.projection_dim, bool) or not isinstance(self.projection_dim, int) or self.projection_dim < 1:
            raise ValueError(f"EncoderQueryHeadConfig.projection_dim must be a positive int, got {self.projection_dim!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"EncoderQueryHeadConfig.alpha must be in [0, 1], got {self.alpha!r}")
        n = self.train_last_n_blocks
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"EncoderQueryHeadConfig.train_last_n_blocks must be an int >= 0, got {n!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        # The JSON form (e.g. string keys of id2label), so a saved and reloaded config compares equal.
        object.__setattr__(self, "vision_config", json.loads(json.dumps(self.vision_config, sort_keys=True)))

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dict."""
        return asdict(self)

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
        ValueError: ``train_last_n_blocks`` exceeds the tower's depth.

    Example:
        .. code-block:: python

            from llama_index_lvlm_retriever.training.encoder_head import EncoderQueryHead

            head = EncoderQueryHead.from_embedding(embed_model, train_last_n_blocks=2)
            retriever = LVLMAwareRetriever(kb, image_head=head)  # the retriever passes pixel_values
    """

    needs_image = True
    """The retriever must pass the query images' ``pixel_values`` (see :meth:`encode`)."""

    def __init__(self, config: EncoderQueryHeadConfig) -> None:
        super().__init__()
        self.config = config
        vision = CLIPVisionConfig(**config.vision_config)
        depth = int(vision.num_hidden_layers)
        if config.train_last_n_blocks > depth:
            raise ValueError(
                f"train_last_n_blocks={config.train_last_n_blocks} but the vision tower has {depth} blocks; "
                f"choose at most {depth}"
            )
        vision.projection_dim = config.projection_dim
        self.tower = CLIPVisionModelWithProjection(vision)
        self._freeze()

    def _freeze(self) -> None:
        """Freeze everything except the last blocks, the post-layernorm and the projection."""
        self.tower.requires_grad_(False)
        blocks = self.tower.vision_model.encoder.layers
        n = self.config.train_last_n_blocks
        trainable: list[nn.Module] = [self.tower.vision_model.post_layernorm, self.tower.visual_projection]
        trainable.extend(blocks[len(blocks) - n :] if n > 0 else [])
        for module in trainable:
            module.requires_grad_(True)

    @classmethod
    def from_embedding(
        cls, embed_model: Any, *, alpha: float = 0.15, train_last_n_blocks: int = 1
    ) -> EncoderQueryHead:
        """Copy the image tower of a :class:`~llama_index_lvlm_retriever.embeddings.CLIPEmbedding`.

        Args:
            embed_model: The knowledge base's embedding model; its ``.model`` must be a CLIP model
                with ``vision_model`` and ``visual_projection`` (e.g. ``CLIPModel``).
            alpha: Blend weight of the tower's output.
            train_last_n_blocks: Trainable blocks, counted from the last.

        Returns:
            The head (float32, on the model's device), equal to the frozen tower.

        Raises:
            TypeError: The embedding model has no CLIP image tower.
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
        )
        head = cls(config)
        # Same submodule names in CLIPModel and CLIPVisionModelWithProjection: copy by name.
        source = {k: v for k, v in model.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
        head.tower.load_state_dict({k: v.float() for k, v in source.items()}, strict=True)
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
        return f"alpha={self.config.alpha}, train_last_n_blocks={self.config.train_last_n_blocks}"

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

        Returns:
            The folder.
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        atomic_write(out / WEIGHTS_NAME, _safetensors_bytes(state, metadata={"format": "pt"}))
        record = {_CLASS_KEY: ENCODER_HEAD_CLASS, **self.config.to_dict(), _VERSIONS_KEY: package_versions()}
        atomic_write(out / CONFIG_NAME, json_bytes(record))
        logger.info("saved an encoder query head to %s", out)
        return out

    @classmethod
    def from_pretrained(cls, load_directory: str | Path, *, device: str | torch.device = "cpu") -> EncoderQueryHead:
        """Load a head written by :meth:`save_pretrained` (in eval mode).

        Raises:
            FileNotFoundError: The folder or one of its two files is missing.
            ValueError: The config is not an encoder head's, or the weights do not fit it.
        """
        folder = Path(load_directory)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"encoder query head directory {folder} has no {path.name}; expected {CONFIG_NAME} + "
                    f"{WEIGHTS_NAME} as written by EncoderQueryHead.save_pretrained"
                )
        record = json.loads(config_path.read_text(encoding="utf-8"))
        if record.pop(_CLASS_KEY, ENCODER_HEAD_CLASS) != ENCODER_HEAD_CLASS:
            raise ValueError(f"{config_path} is not an EncoderQueryHead config; load it with QueryHead.from_pretrained")
        record.pop(_VERSIONS_KEY, None)
        head = cls(EncoderQueryHeadConfig.from_dict(record))
        try:
            head.load_state_dict(_load_safetensors(str(weights_path), device="cpu"), strict=True)
        except RuntimeError as err:
            raise ValueError(f"weights in {weights_path} do not fit the config in {config_path}: {err}") from err
        return head.to(device).eval()


__all__ = ["ENCODER_HEAD_CLASS", "EncoderQueryHead", "EncoderQueryHeadConfig"]
