"""A strong nuisance for the miniature's images, and the captions that make the encoder "general-purpose".

The paper's premise is a general-purpose frozen encoder: its vectors carry the diagnostic features,
but its similarity is dominated by other things. The miniature builds exactly that. Every image
gets a random, label-independent *tint and contrast* (a continuous hue multiplying the grey image,
a random gain and offset), and the small CLIP is pre-trained in two stages on its own images:

* stage A, label-only captions (``"a picture of a defective cell"``), so the vectors learn the label;
* stage B, captions that always name the nuisance (``"a hue7 dim flat picture"``) and the label
  only half the time, so similarity comes to be dominated by the nuisance while the label stays
  linearly readable.

A feasibility probe measured the result on Fashion-MNIST (linear probe on frozen vectors 0.69-0.71
vs frozen top-4 label precision 0.49) and found that both a many-valued nuisance (16 hue x contrast
words) and the label-first stage A are needed: with a few hue bins the label still orders the
neighbours inside each bin, and rare label words in a single stage erase the label from the vectors.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

__all__ = ["Nuisance", "describe", "draw_nuisance", "render"]

N_HUE_WORDS = 16


@dataclass(frozen=True)
class Nuisance:
    """One image's nuisance: hue in [0, 1), contrast gain in [0.25, 1], offset in [0, 1 - gain]."""

    hue: float
    gain: float
    offset: float
    saturation: float = 0.8


def draw_nuisance(rng: np.random.Generator, strength: float = 1.0) -> Nuisance:
    """A random nuisance, independent of the label.

    Args:
        rng: The generator (three draws per image whatever the strength, so a strength changes the
            images and nothing else).
        strength: In ``(0, 1]``: the contrast gain is drawn from ``[1 - 0.75 * strength, 1]`` and the
            tint's saturation is ``0.8 * strength``; 1 = the full nuisance (gain in [0.25, 1]).
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"nuisance strength must be in (0, 1], got {strength}")
    gain = float(rng.uniform(1.0 - 0.75 * strength, 1.0))
    return Nuisance(hue=float(rng.uniform(0.0, 1.0)), gain=gain, offset=float(rng.uniform(0.0, 1.0 - gain)),
                    saturation=0.8 * strength)


def render(grey: np.ndarray, nuisance: Nuisance) -> np.ndarray:
    """Apply the nuisance to a grey uint8 image ``(h, w)``; returns RGB uint8 ``(h, w, 3)``."""
    value = nuisance.offset + nuisance.gain * (np.asarray(grey, dtype=np.float64) / 255.0)  # (h, w) in [0, 1]
    colour = np.array(colorsys.hsv_to_rgb(nuisance.hue, nuisance.saturation, 1.0))  # (3,)
    return np.clip(np.round(value[..., None] * colour * 255.0), 0, 255).astype(np.uint8)  # (h, w, 3)


def describe(nuisance: Nuisance) -> str:
    """The nuisance in words: ``"hue7 dim flat"`` (16 hue bins x brightness x contrast)."""
    hue = f"hue{int(nuisance.hue * N_HUE_WORDS) % N_HUE_WORDS}"
    brightness = "bright" if nuisance.offset + nuisance.gain / 2 >= 0.5 else "dim"
    contrast = "sharp" if nuisance.gain >= 0.6 else "flat"
    return f"{hue} {brightness} {contrast}"
