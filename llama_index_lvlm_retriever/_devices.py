"""Checking that a requested torch device exists before any model is moved to it.

Without this, ``device="cuda"`` on a CPU-only torch build fails deep inside the first ``.to()``
with a bare ``AssertionError("Torch not compiled with CUDA enabled")`` and a traceback.
"""

from __future__ import annotations

from llama_index_lvlm_retriever.errors import DeviceUnavailableError


def check_device_available(device: object, *, option: str = "device") -> None:
    """Raise a :class:`DeviceUnavailableError` if ``device`` cannot be used in this installation.

    ``"cpu"``, ``"auto"`` and ``None`` always pass (and import nothing); ``cuda``/``cuda:N`` need a
    CUDA build of torch with that many GPUs; ``mps`` needs Apple's Metal backend.

    Args:
        device: A device string or ``torch.device``.
        option: How to name the setting in the message (``"--device"`` from the CLI).

    Raises:
        DeviceUnavailableError: The device is not available; the message says what to pass instead.
    """
    text = str(device) if device is not None else "cpu"
    kind, _, index = text.partition(":")
    if kind in {"cpu", "auto", "meta"}:
        return
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"{option} {text}: this torch installation has no usable CUDA GPU "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); pass {option} cpu "
                "(or auto), or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if index.isdigit() and int(index) >= count:
            raise DeviceUnavailableError(
                f"{option} {text}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1}); "
                "pick one of them or check CUDA_VISIBLE_DEVICES"
            )
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"{option} {text}: Apple's MPS backend is not available here; pass {option} cpu")


__all__ = ["check_device_available"]
