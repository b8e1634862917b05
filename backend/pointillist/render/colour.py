"""The sRGB transfer curves (IEC 61966-2-1), numpy only: splat colours are display sRGB, while glTF materials
and a DCC's film are scene-linear. Shared by the film conversion, the glTF exporter and the Blender add-on."""

from __future__ import annotations

import numpy as np


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """Display sRGB -> linear (the piecewise EOTF that Blender's 'Standard' view inverts), in float64."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((np.maximum(c, 0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear -> display sRGB, the inverse of `srgb_to_linear`, in float64."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.maximum(c, 0.0031308) ** (1 / 2.4) - 0.055)
