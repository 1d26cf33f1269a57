"""LoRA on the image tower of an :class:`~llama_index_lvlm_retriever.heads.encoder_head.EncoderQueryHead`.

The tower's target linear layers get peft LoRA adapters in place (``B = 0``, so a fresh head equals
the frozen tower); only the adapters train. Saving merges them (``W + (lora_alpha / r) B A``, peft's
own delta) into a plain CLIP tower state, which loads without ``peft``. ``peft`` is an optional
extra, imported here only when adapters are attached or merged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

LORA_ADAPTER = "default"  # peft's adapter name; one adapter per head
_LORA_KEY_MARK = ".lora_"  # in the state-dict keys of peft's adapter parameters (lora_A, lora_B, ...)
_PEFT_BASE_MARK = ".base_layer."  # peft keeps a wrapped Linear's own weights under this name
_PEFT_EXTRA = 'pip install "llama-index-lvlm-retriever[peft]"'


def import_peft() -> Any:
    """Import ``peft`` lazily (an optional extra), with an error that names the extra."""
    try:
        import peft
        from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: F401 - checks the submodule too
    except ImportError as err:
        raise ImportError(
            f"EncoderQueryHead with lora_r set (LoRA on the image tower) needs the optional peft package: "
            f"{_PEFT_EXTRA}; or fine-tune the last blocks instead (lora_r=None, train_last_n_blocks=N)"
        ) from err
    return peft


def is_lora_key(name: str) -> bool:
    """Whether a parameter / state-dict key belongs to a LoRA adapter."""
    return _LORA_KEY_MARK in f".{name}"


def attach_lora(tower: nn.Module, config: Any) -> None:
    """Wrap the tower's ``config.lora_target_modules`` linear layers in LoRA layers (in place, B = 0).

    Args:
        tower: A CLIP vision tower.
        config: An ``EncoderQueryHeadConfig`` (``lora_r``, ``lora_alpha``, ``lora_dropout``,
            ``lora_target_modules``).

    Raises:
        ValueError: A target names no linear layer of the tower.
        ImportError: ``peft`` is not installed.
    """
    linear = {name.rsplit(".", 1)[-1] for name, m in tower.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in config.lora_target_modules if t not in linear]
    if missing:
        raise ValueError(
            f"lora_target_modules {missing} match no linear layer of the CLIP vision tower; choose from "
            f"{sorted(linear)}"
        )
    peft = import_peft()
    lora = peft.LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        bias="none",
    )
    peft.inject_adapter_in_model(lora, tower, adapter_name=LORA_ADAPTER)


def load_plain_tower_weights(tower: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load plain CLIP tower weights into a tower, with or without adapters.

    A peft-wrapped layer keeps its own weights under ``base_layer``; the adapters keep their
    (zero-B) initialisation.

    Raises:
        ValueError: The weights do not fit the tower (missing or unexpected keys, named).
    """
    own = [key for key in tower.state_dict() if not is_lora_key(key)]
    plain = {key: key.replace(_PEFT_BASE_MARK, ".") for key in own}
    missing = sorted(set(plain.values()) - set(state))
    unexpected = sorted(set(state) - set(plain.values()))
    if missing or unexpected:
        raise ValueError(
            f"tower weights do not fit the EncoderQueryHead: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    loaded = {key: state[name] for key, name in plain.items()}
    result = tower.load_state_dict(loaded, strict=False)
    assert not result.unexpected_keys and all(is_lora_key(k) for k in result.missing_keys)


def plain_tower_state(tower: nn.Module, *, merge_lora: bool) -> dict[str, torch.Tensor]:
    """The tower's weights as a plain CLIP tower (detached, CPU), live adapters merged in when asked."""
    state = {
        key.replace(_PEFT_BASE_MARK, "."): value.detach().to("cpu")
        for key, value in tower.state_dict().items()
        if not is_lora_key(key)
    }
    if merge_lora:
        base_layer = import_peft().tuners.tuners_utils.BaseTunerLayer
        with torch.no_grad():
            for name, module in tower.named_modules():
                if isinstance(module, base_layer):
                    # peft's own delta ((lora_alpha / r) * B @ A, in the base layer's layout).
                    delta = module.get_delta_weight(LORA_ADAPTER).detach().to("cpu")
                    state[f"{name}.weight"] = state[f"{name}.weight"] + delta.to(state[f"{name}.weight"].dtype)
    return {key: value.contiguous() for key, value in state.items()}


__all__ = ["LORA_ADAPTER", "attach_lora", "import_peft", "is_lora_key", "load_plain_tower_weights", "plain_tower_state"]
