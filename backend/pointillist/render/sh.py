"""Real spherical-harmonics colour evaluation, degrees 0-3, in the gsplat/Inria convention.

The basis ordering, signs and constants are those of the 3DGS reference code (and of gsplat's
``_eval_sh_bases_fast``), so SH coefficients trained with either can be used as-is. The
``+0.5`` offset and clamping that turn the SH value into an RGB colour live in ``sh_to_rgb``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)

MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients used by a given degree: (degree + 1)^2."""
    return (degree + 1) ** 2


def sh_degree_from_coeffs(num_coeffs: int) -> int:
    """Largest degree whose basis fits in ``num_coeffs`` coefficients."""
    degree = int(math.isqrt(num_coeffs)) - 1
    if degree < 0:
        raise ValueError("need at least one SH coefficient")
    return min(degree, MAX_SH_DEGREE)


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """SH basis values (..., (degree+1)^2) at unit directions ``dirs`` (..., 3)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in [0, {MAX_SH_DEGREE}], got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate SH colour functions.

    Args:
        degree: SH degree to use (0-3); only the first (degree+1)^2 coefficients are read.
        sh: coefficients (N, K, 3) with K >= (degree+1)^2.
        dirs: view directions (N, 3); normalised here, need not be unit length.

    Returns:
        (N, 3) raw SH values (without the +0.5 offset; see ``sh_to_rgb``).
    """
    k = num_sh_bases(degree)
    if sh.shape[-2] < k:
        raise ValueError(f"degree {degree} needs {k} SH coefficients, got {sh.shape[-2]}")
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    bases = sh_bases(degree, dirs)  # (N, k)
    return torch.einsum("...k,...kc->...c", bases, sh[..., :k, :])


def sh_to_rgb(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """RGB (N, 3) as gsplat/Inria define it: ``max(eval_sh + 0.5, 0)``."""
    return torch.clamp_min(eval_sh(degree, sh, dirs) + 0.5, 0.0)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """DC coefficient that reproduces ``rgb`` for every view direction."""
    return (rgb - 0.5) / SH_C0
