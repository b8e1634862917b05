"""Shape priors on the decoder's Gaussians: no needles.

The decoder, trained on procedural heads, writes many Gaussians four to nine times longer than they are
wide; seen from the side they are the long spikes in the hair. A Gaussian's long axes are clipped to
`max_ratio` times its shortest and to `max_scale` metres: its position, orientation and short axis stay,
so the surface it sits on keeps its place and a spike becomes a tuft.
"""

from __future__ import annotations

import numpy as np

MAX_ANISOTROPY = 3.0
MAX_SCALE_M = 0.008


def bounded_log_scales(log_scales: np.ndarray, max_ratio: float = MAX_ANISOTROPY,
                       max_scale: float = MAX_SCALE_M) -> np.ndarray:
    """log-scales (N, 3) with every axis at most `max_ratio` times the shortest and at most `max_scale`."""
    log_scales = np.asarray(log_scales, dtype=np.float32)
    if max_ratio < 1:
        raise ValueError("max_ratio must be at least 1")
    ceiling = np.minimum(log_scales.min(axis=1, keepdims=True) + np.log(max_ratio), np.log(max_scale))
    return np.minimum(log_scales, ceiling).astype(np.float32)
