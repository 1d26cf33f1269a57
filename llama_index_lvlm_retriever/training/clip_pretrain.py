"""``CLIPPretrainEngine``: contrastive pre-training of a small CLIP dual encoder on KB pairs.

The offline miniature has no pre-trained retriever to download, so the frozen retriever is made
here: a small ``transformers`` ``CLIPModel`` trained on the knowledge base's image-caption pairs
with :class:`~llama_index_lvlm_retriever.training.losses.multi_positive_infonce.MultiPositiveInfoNCELoss`
(captions generated from metadata repeat a lot, so identical captions must count as positives).
The result is saved like any checkpoint, so ``CLIPEmbedding.from_pretrained(dir)`` loads it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from llama_index.core.bridge.pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm
from transformers import AutoProcessor, CLIPModel
from transformers.processing_utils import ProcessorMixin

from llama_index_lvlm_retriever.data.images import load_image
from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.storage.dirswap import swapped_directory
from llama_index_lvlm_retriever.storage.files import atomic_write_json
from llama_index_lvlm_retriever.training.losses.multi_positive_infonce import (
    MultiPositiveInfoNCELoss,
)

logger = logging.getLogger(__name__)

__all__ = ["CLIPPretrainConfig", "CLIPPretrainEngine", "PRETRAIN_RECORD_FILE"]

PRETRAIN_RECORD_FILE = "clip_pretrain.json"
"""File next to the saved weights holding the config and the per-epoch history."""

# CLIP caps its logit scale at 100 (temperature 0.01) so the softmax cannot saturate.
_MAX_LOGIT_SCALE = math.log(100.0)


class CLIPPretrainConfig(BaseModel):
    """Settings of :class:`CLIPPretrainEngine`.

    Example:
        >>> CLIPPretrainConfig(epochs=3).lr
        0.001
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(default=20, gt=0, description="Passes over the knowledge-base pairs.")
    lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(
        default=64, ge=2, description="Pairs per step; the other pairs of the batch are negatives."
    )
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW decoupled weight decay.")
    temperature_init: float | None = Field(
        default=0.07,
        gt=0,
        le=1,
        description="Initial softmax temperature (CLIP's 0.07); it is learned from there, capped "
        "at 0.01. None keeps the model's own logit_scale.",
    )
    seed: int = Field(default=0, description="Seed of the batch order.")
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="Clip the global gradient norm to this; None = no clipping."
    )
    show_progress: bool = Field(default=False, description="Show a tqdm bar over epochs.")
    device: str = Field(
        default="cpu",
        description="Torch device a model loaded from a folder trains on; a CLIPEmbedding stays on its own device.",
    )


class CLIPPretrainEngine:
    """Train a ``CLIPModel`` contrastively on knowledge-base image-caption pairs.

    Every image goes through the model's own processor (resized to its image size) once, every
    caption through its tokenizer once; each epoch shuffles the pairs (seeded), and each batch
    minimises the multi-positive InfoNCE over its image-to-caption similarity matrix with AdamW,
    clipping the gradient norm after ``backward``.

    Args:
        model_dir_or_embedding: A checkpoint folder (``CLIPModel`` + processor), or a
            :class:`~llama_index_lvlm_retriever.embeddings.CLIPEmbedding` whose model is then
            trained *in place* (its vectors change).
        items: The knowledge-base pairs; at least 2, each image loadable.
        config: Training settings (defaults when ``None``).

    Raises:
        ValueError: Fewer than 2 items.
        TypeError: The model is not a ``CLIPModel``.
        llama_index_lvlm_retriever.data.images.ImageLoadError: An item's image cannot be read.

    Example:
        >>> import tempfile
        >>> from llama_index_lvlm_retriever.testing import build_tiny_clip
        >>> from PIL import Image
        >>> folder = tempfile.mkdtemp()
        >>> for i in range(4):
        ...     Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(f"{folder}/{i}.png")
        >>> items = [KBItem(id=str(i), image_path=f"{folder}/{i}.png", text=f"shade {i % 2}")
        ...          for i in range(4)]
        >>> engine = CLIPPretrainEngine(build_tiny_clip(tempfile.mkdtemp()), items,
        ...                             CLIPPretrainConfig(epochs=2, batch_size=4))
        >>> len(engine.finetune())
        2
    """

    def __init__(
        self,
        model_dir_or_embedding: str | Path | CLIPEmbedding,
        items: Sequence[KBItem],
        config: CLIPPretrainConfig | None = None,
    ) -> None:
        if len(items) < 2:
            raise ValueError(
                f"contrastive pre-training needs at least 2 knowledge-base items, got {len(items)}"
            )
        self.config = config if config is not None else CLIPPretrainConfig()
        if isinstance(model_dir_or_embedding, CLIPEmbedding):
            model: Any = model_dir_or_embedding.model
            processor: ProcessorMixin = model_dir_or_embedding.processor
        else:
            model = CLIPModel.from_pretrained(str(model_dir_or_embedding)).to(self.config.device)
            processor = AutoProcessor.from_pretrained(str(model_dir_or_embedding))
        if not isinstance(model, CLIPModel):
            raise TypeError(
                f"CLIPPretrainEngine trains a transformers CLIPModel, got {type(model).__name__}; "
                "build one with CLIPModel(config) or load a CLIP checkpoint"
            )
        self.model: CLIPModel = model
        self.processor = processor
        self.loss_fn = MultiPositiveInfoNCELoss()
        self.history: list[dict[str, float]] = []

        self._device = next(model.parameters()).device
        images = [load_image(item.image_path, name=item.id) for item in items]
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        self._pixel_values = pixels.to(self._device, dtype=torch.float32)  # (n, c, h, w)
        max_length = int(model.config.text_config.max_position_embeddings)
        tokens = processor.tokenizer(
            [item.text for item in items],
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        self._input_ids = tokens["input_ids"].to(self._device)  # (n, length)
        self._attention_mask = tokens["attention_mask"].to(self._device)  # (n, length)
        caption_ids: dict[str, int] = {}
        self._groups = torch.tensor(
            [caption_ids.setdefault(item.text, len(caption_ids)) for item in items],
            device=self._device,
        )  # (n,) equal ids = identical captions
        logger.info(
            "CLIP pre-training on %d pairs with %d distinct captions", len(items), len(caption_ids)
        )

    def batch_loss(self, indices: torch.Tensor) -> torch.Tensor:
        """The multi-positive InfoNCE of the pairs at ``indices`` under the current model.

        Args:
            indices: ``(batch,)`` positions into the engine's items.

        Returns:
            The scalar loss (connected to the model's parameters).
        """
        image = self.model.get_image_features(pixel_values=self._pixel_values[indices])
        text = self.model.get_text_features(
            input_ids=self._input_ids[indices], attention_mask=self._attention_mask[indices]
        )
        image = torch.nn.functional.normalize(_pooled(image), dim=-1)  # (batch, dim)
        text = torch.nn.functional.normalize(_pooled(text), dim=-1)  # (batch, dim)
        scale = self.model.logit_scale.clamp(max=_MAX_LOGIT_SCALE).exp()
        logits = scale * image @ text.T  # (batch, batch) image -> caption
        return self.loss_fn(logits, self._groups[indices])

    def evaluate_loss(self) -> float:
        """Mean loss over fixed consecutive batches of all items, without gradients."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in self._batches(torch.arange(len(self._groups))):
                total += float(self.batch_loss(batch.to(self._device))) * len(batch)
                count += len(batch)
        self.model.train(was_training)
        return total / count

    def finetune(self) -> list[dict[str, float]]:
        """Train for ``config.epochs`` epochs; returns (and appends to ``history``) one row each.

        Returns:
            Per-epoch ``{"epoch", "loss", "temperature"}``: the mean training loss of the epoch
            and the temperature at its end.
        """
        cfg = self.config
        if cfg.temperature_init is not None:
            with torch.no_grad():
                self.model.logit_scale.fill_(math.log(1.0 / cfg.temperature_init))
        generator = torch.Generator().manual_seed(cfg.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.model.train()
        rows: list[dict[str, float]] = []
        for epoch in tqdm(
            range(cfg.epochs), disable=not cfg.show_progress, desc="CLIP pre-training", unit="ep"
        ):
            order = torch.randperm(len(self._groups), generator=generator)
            total, count = 0.0, 0
            for batch in self._batches(order):
                loss = self.batch_loss(batch.to(self._device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                count += len(batch)
            scale = float(self.model.logit_scale.detach().clamp(max=_MAX_LOGIT_SCALE).exp())
            row = {"epoch": float(epoch + 1), "loss": total / count, "temperature": 1.0 / scale}
            logger.info("epoch %d: loss %.4f, temperature %.4f", epoch + 1, row["loss"], 1 / scale)
            rows.append(row)
        self.model.eval()
        self.history.extend(rows)
        return rows

    def save(self, save_dir: str | Path) -> Path:
        """Save model, processor and a JSON record of the run atomically to ``save_dir``.

        Everything is written to a temporary sibling folder first, which then replaces
        ``save_dir`` (an existing folder is moved aside and deleted only after the rename), so a
        crash never leaves a half-written checkpoint under ``save_dir``.

        Args:
            save_dir: Target folder; ``CLIPEmbedding.from_pretrained(save_dir)`` loads it.

        Returns:
            ``save_dir`` as a ``Path``.
        """
        save_dir = Path(save_dir)
        with swapped_directory(save_dir) as tmp:
            self.model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)
            atomic_write_json(
                tmp / PRETRAIN_RECORD_FILE,
                {"config": self.config.model_dump(), "history": self.history},
            )
        logger.info("saved pre-trained CLIP to %s", save_dir)
        return save_dir

    def _batches(self, order: torch.Tensor) -> list[torch.Tensor]:
        size = self.config.batch_size
        batches = list(order.split(size))
        # A final batch of one pair has no negative: fold it into the previous batch.
        if len(batches) > 1 and len(batches[-1]) < 2:
            last = batches.pop()
            batches[-1] = torch.cat([batches[-1], last])
        return batches


def _pooled(output: Any) -> torch.Tensor:
    # transformers 5 returns an output object; older versions return the tensor itself.
    return output if isinstance(output, torch.Tensor) else output.pooler_output
