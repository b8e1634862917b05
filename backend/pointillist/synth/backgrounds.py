"""Random photo-like backgrounds for synthetic renders: solid, gradient, smooth noise, blurred blobs, vignettes.

Real portraits sit in front of walls, rooms and bokeh, not a flat card; an encoder trained on flat
cards learns to expect them. Everything here is cheap numpy (a small random grid upsampled bilinearly,
a handful of Gaussians), float32 sRGB in [0, 1].
"""

from __future__ import annotations

import colorsys

import numpy as np

BACKGROUND_KINDS = ("solid", "gradient", "noise", "blobs")
_KIND_WEIGHTS = np.array([0.2, 0.25, 0.25, 0.3])


def _palette_color(rng: np.random.Generator) -> np.ndarray:
    """Mostly muted photographic colours, sometimes saturated."""
    s = rng.uniform(0.0, 0.35) if rng.random() < 0.8 else rng.uniform(0.35, 0.9)
    return np.array(colorsys.hsv_to_rgb(rng.random(), s, rng.uniform(0.08, 0.97)))


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Cubic-spline upsampling of a (g, g, C) grid to (size, size, C): smooth, no visible cells."""
    from scipy.ndimage import zoom

    g = grid.shape[0]
    out = zoom(grid, (size / g, size / g, 1), order=3, mode="mirror", grid_mode=True)
    return out[:size, :size]


def sample_background(rng: np.random.Generator, size: int, kind: str | None = None) -> np.ndarray:
    """(size, size, 3) float32: a background of ``kind`` (random when None), vignetted 40 % of the time."""
    kind = kind or str(rng.choice(BACKGROUND_KINDS, p=_KIND_WEIGHTS))
    a, b = _palette_color(rng), _palette_color(rng)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    if kind == "solid":
        img = np.broadcast_to(a, (size, size, 3)).copy()
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)) * rng.uniform(0.8, 1.6) + 0.5, 0, 1)[..., None]
        img = a * (1 - t) + b * t
    elif kind == "noise":  # a textured wall / out-of-focus room: two octaves of smooth value noise
        coarse = _upsample(rng.random((int(rng.integers(3, 7)),) * 2 + (1,)), size)
        fine = _upsample(rng.random((int(rng.integers(8, 16)),) * 2 + (1,)), size)
        t = np.clip(0.75 * coarse + 0.25 * fine, 0, 1)
        img = a * (1 - t) + b * t
        img *= 1 + rng.uniform(0.0, 0.06) * (rng.random((size, size, 1)) - 0.5)  # a little grain
    elif kind == "blobs":  # bokeh-like soft discs of light over a base colour
        img = np.broadcast_to(a * 0.8, (size, size, 3)).copy()
        for _ in range(int(rng.integers(3, 12))):
            c = _palette_color(rng) if rng.random() < 0.5 else b
            cx, cy = rng.random(2)
            r = rng.uniform(0.05, 0.3)
            w = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))[..., None] * rng.uniform(0.3, 0.9)
            img = img * (1 - w) + c * w
    else:
        raise ValueError(f"unknown background kind {kind!r}; choose from {', '.join(BACKGROUND_KINDS)}")
    if rng.random() < 0.4:  # soft vignette, as from a lens
        r2 = (xx - 0.5) ** 2 + (yy - 0.5) ** 2
        img = img * (1 - rng.uniform(0.15, 0.5) * np.clip(r2 / 0.5, 0, 1))[..., None]
    return np.clip(img, 0, 1).astype(np.float32)
