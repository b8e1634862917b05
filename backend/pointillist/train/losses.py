"""Image losses without downloaded weights: L1 and a Gaussian-window SSIM (Wang et al. 2004)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _window(size: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: Tensor, b: Tensor, size: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of (B, C, H, W) images in [0, 1]."""
    return ssim_map(a, b, size, sigma).mean()


def ssim_map(a: Tensor, b: Tensor, size: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-pixel SSIM (B, C, H, W) of (B, C, H, W) images in [0, 1] (to average over a region)."""
    C = a.shape[1]
    w = _window(size, sigma, a.device, a.dtype).expand(C, 1, size, size)
    blur = lambda x: F.conv2d(x, w, padding=size // 2, groups=C)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def psnr(a: Tensor, b: Tensor) -> Tensor:
    return -10 * torch.log10(F.mse_loss(a, b).clamp_min(1e-10))
