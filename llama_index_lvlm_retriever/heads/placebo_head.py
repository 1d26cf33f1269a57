"""PlaceboQueryHead: standard RAG with its query embedding perturbed at random (a control).

To tell a real gain of a trained retriever from the effect of merely changing neighbours, compare it
with a placebo whose noise scale gives the same top-k overlap with standard RAG
(:func:`~llama_index_lvlm_retriever.evaluation.placebo.calibrate_placebo` fits the scale). The noise of
a query depends only on its embedding and the seed (not on the batch), so a placebo retrieves the same
neighbours for a query however it is batched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from llama_index_lvlm_retriever.heads._saving import (
    CONFIG_NAME,
    read_head_config,
    register_head,
    write_head,
)
from llama_index_lvlm_retriever.heads.query_head import QueryHead, QueryHeadConfig


class PlaceboQueryHead(QueryHead):
    """``q = normalize(e + scale * z)`` with ``z ~ N(0, I / dim)`` seeded by ``(seed, e)``.

    ``z`` has unit norm in expectation, so ``scale`` is the noise-to-signal ratio of the query.
    ``scale = 0`` is standard RAG.

    Args:
        dim: Dimension of the frozen query embedding.
        noise_scale: ``scale`` above (>= 0).
        seed: Seed mixed into every query's noise.

    Raises:
        ValueError: A negative ``noise_scale``.

    Example:
        >>> head = PlaceboQueryHead(dim=4, noise_scale=0.5, seed=0)
        >>> e = np.eye(4, dtype=np.float32)[:2]
        >>> np.allclose(head.encode(e), head.encode(e[::-1])[::-1])  # per-query, batch-independent
        True
        >>> bool(np.allclose(PlaceboQueryHead(dim=4, noise_scale=0.0).encode(e), e))
        True
    """

    def __init__(self, dim: int, noise_scale: float, seed: int = 0) -> None:
        if noise_scale < 0 or not np.isfinite(noise_scale):
            raise ValueError(f"noise_scale must be a finite number >= 0, got {noise_scale}")
        super().__init__(QueryHeadConfig(dim=dim, kind="identity"))
        self.noise_scale = float(noise_scale)
        self.seed = int(seed)

    @property
    def is_identity(self) -> bool:
        """``False`` (unless the scale is 0): the retriever must apply the head."""
        return self.noise_scale == 0.0

    def extra_repr(self) -> str:
        return f"noise_scale={self.noise_scale:.4g}, seed={self.seed}"

    def _noise(self, row: np.ndarray) -> np.ndarray:
        # Seed from the query's own bytes (rounded, so float noise in the encoder does not matter).
        digest = hashlib.blake2b(np.round(row, 5).astype(np.float32).tobytes(), digest_size=8,
                                 key=self.seed.to_bytes(8, "little", signed=True)).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        return rng.standard_normal(row.shape[0]) / np.sqrt(row.shape[0])  # (dim,)

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """Perturb and renormalise numpy embeddings ``(dim,)`` or ``(n, dim)``; float32 out."""
        arr = np.asarray(embeddings, dtype=np.float64)
        single = arr.ndim == 1
        batch = arr[None, :] if single else arr  # (n, dim)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(
                f"PlaceboQueryHead expects embeddings of shape (n, {self.dim}), got {arr.shape}"
            )
        unit = batch / np.maximum(np.linalg.norm(batch, axis=1, keepdims=True), 1e-12)
        if self.noise_scale > 0:
            noise = np.stack([self._noise(row) for row in unit])  # (n, dim)
            unit = unit + self.noise_scale * noise
            unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        out = unit.astype(np.float32)
        return out[0] if single else out

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The same perturbation on a tensor (no gradient: a placebo is never trained)."""
        out = self.encode(embeddings.detach().float().cpu().numpy())
        return torch.from_numpy(out).to(embeddings.device)

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write its settings (``dim``, ``noise_scale``, ``seed``; no weights) so it loads back as is."""
        settings = {"dim": self.dim, "noise_scale": self.noise_scale, "seed": self.seed}
        return write_head(save_directory, {}, settings, type(self).__name__)

    @classmethod
    def _load_folder(cls, folder: str | Path, *, device: str | torch.device = "cpu") -> PlaceboQueryHead:
        _, record = read_head_config(folder)
        missing = sorted({"dim", "noise_scale", "seed"} - set(record))
        if missing:
            raise ValueError(f"{Path(folder) / CONFIG_NAME} lacks placebo settings {missing}; re-save the head")
        return cls(dim=int(record["dim"]), noise_scale=float(record["noise_scale"]), seed=int(record["seed"]))


register_head(PlaceboQueryHead)

__all__ = ["PlaceboQueryHead"]
