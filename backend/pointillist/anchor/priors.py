"""Shape priors on the decoder's Gaussians: no needles.

The decoder, trained on procedural heads, writes many Gaussians four to nine times longer than they are
wide; seen from the side they are the long spikes in the hair. A Gaussian whose longest axis is more than
`max_ratio` times its shortest has its log-scales pulled toward their mean until it is exactly that: its
volume (and so the cover it gives) stays, its position and orientation stay, a spike becomes a tuft. No
axis is longer than `max_scale` metres afterwards.
"""

from __future__ import annotations

import numpy as np

MAX_ANISOTROPY = 3.0
MAX_SCALE_M = 0.008


def bounded_log_scales(log_scales: np.ndarray, max_ratio: float = MAX_ANISOTROPY,
                       max_scale: float = MAX_SCALE_M) -> np.ndarray:
    """log-scales (N, 3) with every axis at most `max_ratio` times the shortest and at most `max_scale`."""
    log_scales = np.asarray(log_scales, dtype=np.float64)
    if max_ratio < 1:
        raise ValueError("max_ratio must be at least 1")
    mean = log_scales.mean(axis=1, keepdims=True)
    spread = log_scales.max(axis=1, keepdims=True) - log_scales.min(axis=1, keepdims=True)
    pull = np.minimum(1.0, np.log(max_ratio) / np.maximum(spread, 1e-12))
    return np.minimum(mean + (log_scales - mean) * pull, np.log(max_scale)).astype(np.float32)
