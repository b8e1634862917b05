"""Foreground matte: MediaPipe selfie segmentation (model inside the wheel), refined by pymatting.

The segmentation is coarse and hard-edged at hair; a trimap built from it — sure foreground (the mask
eroded), sure background (the mask dilated, inverted) and an unknown band between, widened wherever the
segmenter itself was unsure — lets closed-form matting (`pymatting.estimate_alpha_cf`) recover soft
edges so hair strands stay partly transparent. It runs at most at `WORK_SIDE` (512) pixels.

Pixels outside the source photo (the crop's grey fill) are sure background. A transparent portrait's own
alpha is the best matte: when the alpha hint looks like a cut-out (transparent around the subject: 40 %
of the border of what the crop sees of the photo, with an opaque middle) it is used as is; any other
alpha (a soft vignette, a transparent corner or strip) multiplies the computed matte.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from .landmarks import _lock, native_stderr_silenced

WORK_SIDE = 512
CUTOUT_FRAME = 0.4
BAND = 0.014  # half-width of the unknown band, as a fraction of the image side (7 px at 512)
_segmenter = None


def segment(rgb: np.ndarray) -> np.ndarray:
    """MediaPipe selfie segmentation: (H, W) float32 probability of the person, 0..1."""
    global _segmenter
    with _lock, native_stderr_silenced():
        if _segmenter is None:
            import mediapipe as mp

            _segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        mask = _segmenter.process(np.ascontiguousarray(rgb)).segmentation_mask
    return np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)


def _is_cutout(alpha: np.ndarray, valid: np.ndarray) -> bool:
    """An artist's cut-out: transparency around the subject (at least `CUTOUT_FRAME` of the frame of what
    the crop sees of the photo is transparent) and an opaque middle. A transparent corner or strip is not."""
    h, w = alpha.shape
    inner = ndimage.binary_erosion(valid, border_value=0)
    frame = valid & ~inner
    if not frame.any():
        return False
    middle = alpha[h * 3 // 8: h * 5 // 8, w * 3 // 8: w * 5 // 8]
    return bool((alpha[frame] < 128).mean() >= CUTOUT_FRAME and middle.mean() > 200)


def trimap_from_mask(prob: np.ndarray, band: int) -> np.ndarray:
    """(H, W) float64 trimap: 1 sure foreground, 0 sure background, 0.5 unknown."""
    fg = prob > 0.5
    structure = ndimage.generate_binary_structure(2, 1)
    sure_fg = ndimage.binary_erosion(fg, structure, iterations=band)
    sure_bg = ~ndimage.binary_dilation(fg, structure, iterations=band)
    unsure = (prob > 0.1) & (prob < 0.9)  # the segmenter's own soft zone (mostly hair)
    unsure = ndimage.binary_dilation(unsure, structure, iterations=max(1, band // 2))
    trimap = np.full(prob.shape, 0.5)
    trimap[sure_fg & ~unsure] = 1.0
    trimap[sure_bg & ~unsure] = 0.0
    return trimap


def foreground_matte(rgb: np.ndarray, alpha_hint: np.ndarray | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 soft alpha of the person in an (H, W, 3) uint8 image.

    `alpha_hint`: the photo's own alpha warped like `rgb` (None when opaque); `valid`: bool mask of the
    pixels that come from the photo (False where the crop ran past its edge).
    """
    h, w = rgb.shape[:2]
    valid = np.ones((h, w), bool) if valid is None else np.asarray(valid, bool)
    if alpha_hint is not None and alpha_hint.min() < 250 and _is_cutout(alpha_hint, valid):
        return np.where(valid, alpha_hint, 0).astype(np.uint8)
    factor = min(1.0, WORK_SIDE / max(h, w))
    small_size = (max(1, round(w * factor)), max(1, round(h * factor)))
    small = rgb if factor == 1.0 else np.asarray(Image.fromarray(rgb).resize(small_size, Image.LANCZOS))
    small_valid = valid if factor == 1.0 else np.asarray(Image.fromarray(valid).resize(small_size, Image.NEAREST))
    prob = segment(small) * small_valid
    if prob.max() <= 0.5:
        alpha = np.zeros(prob.shape)
    else:
        band = max(2, round(BAND * max(small.shape[:2])))
        trimap = trimap_from_mask(prob, band)
        trimap[~small_valid] = 0.0
        try:
            from pymatting import estimate_alpha_cf

            alpha = estimate_alpha_cf(small.astype(np.float64) / 255.0, trimap)
        except Exception:  # noqa: BLE001 - matting is a refinement: fall back to the feathered segmentation
            alpha = ndimage.gaussian_filter(prob.astype(np.float64), band / 2)
        alpha = np.where(small_valid, alpha, 0.0)
    out = np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8)
    if factor != 1.0:
        out = np.asarray(Image.fromarray(out).resize((w, h), Image.BILINEAR))
    if alpha_hint is not None and alpha_hint.min() < 250:
        out = (out.astype(np.uint16) * alpha_hint.astype(np.uint16) // 255).astype(np.uint8)
    return out
