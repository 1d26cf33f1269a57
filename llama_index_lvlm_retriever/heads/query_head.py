"""QueryHead: the trainable, query-side part of the LVLM-aware retriever.

A head maps a *frozen* query embedding ``e`` (from the knowledge base's encoder) to the vector that
searches an index. Only the query side moves, so the knowledge base is never re-embedded
(arXiv 2508.17394 blends a trainable head with the frozen embedding, 0.85 / 0.15):

.. code-block:: text

    q = normalize((1 - alpha) * pad(e) + alpha * normalize(h(e)))

where ``e`` is L2-normalised first and ``pad`` appends zeros when ``out_dim > dim``. ``h`` is one of

* ``identity``: ``q = normalize(e)``, i.e. standard RAG (no parameters, ``alpha`` unused);
* ``linear``: ``h(e) = W e + b`` with ``W`` initialised to ``[I; 0]`` and ``b = 0``;
* ``mlp``: ``h(e) = pad(e) + W2 dropout(gelu(W1 e + b1)) + b2`` with ``W2, b2`` zero-initialised.

A freshly built ``linear`` or ``mlp`` head therefore returns exactly what the identity head returns,
and training starts from standard RAG.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from safetensors import SafetensorError
from safetensors.torch import load_file as _load_safetensors
from torch import nn

from llama_index_lvlm_retriever.errors import HeadFormatError
from llama_index_lvlm_retriever.heads._saving import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_head,
    read_head_config,
    read_trained_on,
    register_head,
    write_head,
)

logger = logging.getLogger(__name__)

HeadKind = Literal["identity", "linear", "mlp"]
HEAD_KINDS: tuple[str, ...] = ("identity", "linear", "mlp")



@dataclass(frozen=True)
class QueryHeadConfig:
    """Typed configuration of a :class:`QueryHead` (saved as ``config.json``).

    Args:
        dim: Dimension of the frozen query embedding the head reads.
        kind: ``"identity"`` (standard RAG, no parameters), ``"linear"`` or ``"mlp"`` (residual).
        hidden_dim: Hidden width of the ``mlp`` head; ``None`` means ``dim``. Unused otherwise.
        out_dim: Dimension of the produced query vector; ``None`` means ``dim``. Larger values
            zero-pad the frozen embedding in the blend (for keys with extra coordinates).
        alpha: Weight of the head in the blend with the frozen embedding (the paper uses 0.15).
        dropout: Dropout probability on the hidden layer (``mlp``) or the input (``linear``).

    Raises:
        ValueError: A field is out of range; the message names the field and the bad value.

    Example:
        >>> QueryHeadConfig(dim=4, kind="mlp").hidden_dim
        4
    """

    dim: int
    kind: HeadKind = "identity"
    hidden_dim: int | None = None
    out_dim: int | None = None
    alpha: float = 0.15
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"QueryHeadConfig.kind must be one of {list(HEAD_KINDS)}, got {self.kind!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"QueryHeadConfig.dim must be a positive int, got {self.dim!r}")
        out_dim = self.dim if self.out_dim is None else self.out_dim
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < self.dim:
            raise ValueError(
                f"QueryHeadConfig.out_dim must be an int >= dim ({self.dim}), got {self.out_dim!r}; "
                "the frozen embedding is zero-padded to out_dim, never truncated"
            )
        if self.kind == "identity" and out_dim != self.dim:
            raise ValueError(
                f"an identity head cannot change the dimension (dim={self.dim}, out_dim={out_dim}); "
                "use kind='linear' or kind='mlp'"
            )
        hidden_dim = self.hidden_dim
        if self.kind == "mlp":
            hidden_dim = self.dim if hidden_dim is None else hidden_dim
            if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
                raise ValueError(f"QueryHeadConfig.hidden_dim must be a positive int, got {self.hidden_dim!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"QueryHeadConfig.alpha must be in [0, 1], got {self.alpha!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"QueryHeadConfig.dropout must be in [0, 1), got {self.dropout!r}")
        # Frozen dataclass: store the resolved defaults so a saved config is explicit.
        object.__setattr__(self, "out_dim", out_dim)
        object.__setattr__(self, "hidden_dim", hidden_dim)
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> QueryHeadConfig:
        """Build a config from a dict, warning (by name) about keys it does not know.

        Args:
            record: Field values, e.g. the content of a saved ``config.json``.

        Returns:
            The config.

        Raises:
            ValueError: ``dim`` is missing or a value is out of range.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            logger.warning("QueryHeadConfig: ignoring unknown config keys %s", unknown)
        if "dim" not in record:
            raise ValueError("QueryHeadConfig needs 'dim' (the frozen embedding dimension); the config has none")
        return cls(**{k: v for k, v in record.items() if k in known})


class QueryHead(nn.Module):
    """Map frozen query embeddings to query vectors: identity (standard RAG) or a trained head.

    Args:
        config: What to build; see :class:`QueryHeadConfig`.

    Example:
        >>> import numpy as np
        >>> head = QueryHead(QueryHeadConfig(dim=3, kind="mlp"))
        >>> [round(x, 3) for x in head.encode(np.array([3.0, 4.0, 0.0])).tolist()]  # fresh == identity
        [0.6, 0.8, 0.0]
    """

    def __init__(self, config: QueryHeadConfig) -> None:
        super().__init__()
        self.config = config
        # What a trained head was fitted for (encoder and KB fingerprints); saved with the head and
        # checked by the retriever. ``None`` for fresh heads and older saves.
        self.trained_on: dict[str, Any] | None = None
        dim, out_dim = config.dim, int(config.out_dim or config.dim)
        self.proj: nn.Linear | None = None
        self.fc1: nn.Linear | None = None
        self.fc2: nn.Linear | None = None
        self.drop = nn.Dropout(config.dropout)
        if config.kind == "linear":
            self.proj = nn.Linear(dim, out_dim)
            with torch.no_grad():
                # [I; 0]: the extra output coordinates start at zero, so a fresh head is the identity.
                self.proj.weight.zero_()
                self.proj.weight[:dim, :dim].copy_(torch.eye(dim))
                self.proj.bias.zero_()
        elif config.kind == "mlp":
            hidden = int(config.hidden_dim or dim)
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, out_dim)
            with torch.no_grad():
                # Zero last layer: the residual branch adds nothing until trained.
                self.fc2.weight.zero_()
                self.fc2.bias.zero_()

    @classmethod
    def identity(cls, dim: int) -> QueryHead:
        """The parameter-free head of standard RAG: ``q = normalize(e)``."""
        return cls(QueryHeadConfig(dim=dim, kind="identity"))

    @property
    def is_identity(self) -> bool:
        """Whether this head is the parameter-free identity."""
        return self.config.kind == "identity"

    @property
    def dim(self) -> int:
        """Input (frozen embedding) dimension."""
        return self.config.dim

    @property
    def out_dim(self) -> int:
        """Output (query vector) dimension."""
        return int(self.config.out_dim or self.config.dim)

    def extra_repr(self) -> str:
        return f"kind={self.config.kind!r}, alpha={self.config.alpha}"

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Blend the head's output with the frozen embedding.

        Args:
            embeddings: Frozen query embeddings, shape ``(batch, dim)``.

        Returns:
            L2-normalised query vectors, shape ``(batch, out_dim)``.

        Raises:
            ValueError: The last dimension is not ``dim``.
        """
        if embeddings.ndim != 2 or embeddings.shape[-1] != self.config.dim:
            raise ValueError(
                f"QueryHead expects embeddings of shape (batch, {self.config.dim}), "
                f"got {tuple(embeddings.shape)}; the head was built for a {self.config.dim}-d encoder"
            )
        # Normalise first so alpha weighs two unit vectors, as the paper's 0.85/0.15 blend does.
        e = F.normalize(embeddings, dim=-1)  # (batch, dim)
        if self.config.kind == "identity":
            return e
        base = F.pad(e, (0, self.out_dim - self.config.dim))  # (batch, out_dim)
        if self.proj is not None:
            h = self.proj(self.drop(e))  # (batch, out_dim)
        else:
            assert self.fc1 is not None and self.fc2 is not None  # set for kind == "mlp"
            h = base + self.fc2(self.drop(self.act(self.fc1(e))))  # (batch, out_dim)
        h = F.normalize(h, dim=-1)
        alpha = self.config.alpha
        return F.normalize((1.0 - alpha) * base + alpha * h, dim=-1)

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """Apply the head to numpy embeddings without gradients (dropout off).

        Args:
            embeddings: Shape ``(dim,)`` or ``(n, dim)``.

        Returns:
            float32 array of shape ``(out_dim,)`` or ``(n, out_dim)``.
        """
        arr = np.asarray(embeddings, dtype=np.float32)
        single = arr.ndim == 1
        batch = arr[None, :] if single else arr  # (n, dim)
        param = next(self.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                out = self(torch.from_numpy(np.ascontiguousarray(batch)).to(device=device, dtype=dtype))
        finally:
            self.train(was_training)
        result = out.float().cpu().numpy().astype(np.float32, copy=False)  # (n, out_dim)
        return result[0] if single else result

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``save_directory`` (atomically).

        Args:
            save_directory: Folder to write (created if missing).

        Returns:
            The folder.
        """
        out = write_head(save_directory, self.state_dict(), self.config.to_dict(), type(self).__name__,
                         trained_on=self.trained_on)
        logger.info("saved %s query head to %s", self.config.kind, out)
        return out

    @classmethod
    def from_pretrained(cls, load_directory: str | Path, *, device: str | torch.device = "cpu") -> QueryHead:
        """Load a head written by :meth:`save_pretrained`, whatever its class.

        Args:
            load_directory: The folder.
            device: Where to put the weights.

        Returns:
            The head, in eval mode. The class is the one its ``config.json`` names (see
            :func:`~llama_index_lvlm_retriever.heads.load_head`): a folder written by
            ``EncoderQueryHead.save_pretrained`` loads as an ``EncoderQueryHead``.

        Raises:
            FileNotFoundError: The folder, its ``config.json`` or its ``model.safetensors`` is missing.
            ValueError: The weights do not fit the config.
        """
        return load_head(load_directory, device=device)

    @classmethod
    def _load_folder(cls, folder: str | Path, *, device: str | torch.device = "cpu") -> QueryHead:
        folder = Path(folder)
        _, record = read_head_config(folder)
        head = cls(QueryHeadConfig.from_dict(record))
        try:
            state = _load_safetensors(str(folder / WEIGHTS_NAME), device="cpu")
        except SafetensorError as err:
            raise HeadFormatError(f"{folder / WEIGHTS_NAME} is not a readable safetensors file ({err}); re-save or retrain the head") from err
        try:
            head.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"weights in {folder / WEIGHTS_NAME} do not fit the config in {folder / CONFIG_NAME}: {err}"
            ) from err
        head.trained_on = read_trained_on(folder)
        return head.to(device).eval()


register_head(QueryHead)

__all__ = ["HEAD_KINDS", "HeadKind", "QueryHead", "QueryHeadConfig"]
