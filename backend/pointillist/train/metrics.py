"""Evaluation metrics: PSNR, the standard SSIM, Chamfer distance / binding accuracy, keypoint distance, count statistics.

The SSIM here is the *reporting* SSIM of Wang et al. 2004 (Gaussian window 11×11, σ 1.5, K1 0.01, K2 0.03,
population covariances, mean over the "valid" positions where the window lies inside the image), which is
what ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`` computes. The training loss in ``losses.ssim`` zero-pads
instead, which biases the border; numbers in a results table must be comparable with other papers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return (g[:, None] * g[None, :]).to(dtype)


def ssim(a: Tensor | np.ndarray, b: Tensor | np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM of two (H, W, C) or (H, W) images (float in [0, data_range]), channels averaged.

    Computed in float64 so it agrees with scikit-image to ~1e-7; images smaller than the window are refused.
    """
    x = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"SSIM needs images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    if x.ndim != 3 or min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs (H, W[, C]) images at least {SSIM_WINDOW} px on a side, got {tuple(x.shape)}")
    C = x.shape[2]
    x = x.permute(2, 0, 1)[None]
    y = y.permute(2, 0, 1)[None]
    w = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, torch.float64).expand(C, 1, SSIM_WINDOW, SSIM_WINDOW)
    blur = lambda t: F.conv2d(t, w, groups=C)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


def psnr(a: Tensor | np.ndarray, b: Tensor | np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB; identical images give +inf (callers that average should expect it)."""
    x = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def chamfer_and_binding(generated: np.ndarray, generated_binding: np.ndarray, truth: np.ndarray,
                        truth_binding: np.ndarray) -> tuple[float, float]:
    """(symmetric Chamfer distance in cm — mean of the two mean nearest-neighbour distances —, binding accuracy).

    Binding accuracy: the share of generated points whose triangle equals that of the nearest true point.
    """
    if len(generated) == 0 or len(truth) == 0:
        raise ValueError("Chamfer distance needs at least one generated and one true point")
    d_gt, nearest = cKDTree(truth).query(generated)
    d_gen, _ = cKDTree(generated).query(truth)
    chamfer_cm = 100 * 0.5 * (float(d_gt.mean()) + float(d_gen.mean()))
    accuracy = float((np.asarray(truth_binding)[nearest] == np.asarray(generated_binding)).mean())
    return chamfer_cm, accuracy


def keypoint_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Average keypoint distance: mean Euclidean distance (pixels) between corresponding 2D landmarks."""
    a = np.asarray(a, dtype=np.float64)[:, :2]
    b = np.asarray(b, dtype=np.float64)[:, :2]
    if a.shape != b.shape:
        raise ValueError(f"keypoint sets differ in shape: {a.shape} vs {b.shape}")
    return float(np.linalg.norm(a - b, axis=1).mean())


def count_statistics(generated: list[int] | np.ndarray, true: list[int] | np.ndarray) -> dict:
    """Mean ± std of generated and true point counts, and their Pearson / Spearman correlation.

    A correlation is None when either side is constant (or there are fewer than 3 subjects): then the
    count cannot be said to follow the subject at all.
    """
    g = np.asarray(generated, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    out = {"n": len(g), "generated_mean": _r(g.mean(), 1), "generated_std": _r(g.std(), 1),
           "true_mean": _r(t.mean(), 1), "true_std": _r(t.std(), 1), "pearson": None, "spearman": None}
    if len(g) >= 3 and g.std() > 0 and t.std() > 0:
        from scipy.stats import pearsonr, spearmanr

        out["pearson"] = _r(pearsonr(g, t)[0], 3)
        out["spearman"] = _r(spearmanr(g, t)[0], 3)
    return out


def _r(x: float, digits: int) -> float:
    return round(float(x), digits)
