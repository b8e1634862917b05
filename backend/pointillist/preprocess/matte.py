"""Foreground matte: MediaPipe selfie segmentation (model inside the wheel), refined by pymatting.

The segmentation is coarse; a trimap from it (sure foreground / sure background / an unknown band) lets
closed-form matting recover soft edges so hair survives. An RGBA portrait's own alpha wins when present.
"""

from __future__ import annotations

import threading

import numpy as np
from scipy import ndimage

_lock = threading.Lock()
_segmenter = None


def _segment(rgb: np.ndarray) -> np.ndarray:
    global _segmenter
    from .landmarks import native_stderr_silenced

    with _lock, native_stderr_silenced():
        if _segmenter is None:
            import mediapipe as mp

            _segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        mask = _segmenter.process(np.ascontiguousarray(rgb)).segmentation_mask
    return np.asarray(mask, dtype=np.float64)


def foreground_matte(rgb: np.ndarray, alpha_hint: np.ndarray | None = None, band_px: int = 6) -> np.ndarray:
    """(H, W) uint8 soft alpha of the person."""
    if alpha_hint is not None and alpha_hint.min() < 250:
        return alpha_hint.astype(np.uint8)
    coarse = _segment(rgb) > 0.5
    if not coarse.any():
        return np.zeros(rgb.shape[:2], np.uint8)
    sure_fg = ndimage.binary_erosion(coarse, iterations=band_px)
    sure_bg = ~ndimage.binary_dilation(coarse, iterations=band_px)
    trimap = np.full(rgb.shape[:2], 0.5)
    trimap[sure_fg] = 1.0
    trimap[sure_bg] = 0.0
    try:
        from pymatting import estimate_alpha_cf

        alpha = estimate_alpha_cf(rgb.astype(np.float64) / 255.0, trimap)
    except Exception:  # matting is a refinement: fall back to a feathered mask
        alpha = ndimage.gaussian_filter(coarse.astype(np.float64), band_px / 2)
    return np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8)
