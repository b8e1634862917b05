"""Rotating spherical-harmonic colour with each Gaussian.

Our renderer evaluates SH bands >= 1 in the Gaussian's canonical frame (it turns the view direction back by
the Gaussian's skinning rotation, DESIGN §3). A splat viewer reading a *posed* export has no such rotation:
it evaluates the stored coefficients toward the world view direction. So posed exports store coefficients
c' with  f'(d) = f(R^T d)  for every direction d: the colour a viewer computes toward d is exactly what our
renderer shows for the posed Gaussian.

Rotations never mix SH bands, and a band-l function rotated is still a band-l function, so c' is found
exactly by sampling: evaluate the rotated function at M fixed directions (M > coefficients, in general
position) and project back with the pseudo-inverse of the basis at those directions. That uses the one
basis definition in `render.sh` (Inria/gsplat signs and order), so there is no second convention to drift.
"""

from __future__ import annotations

import numpy as np
import torch

from ..render.sh import sh_bases

#: Sample directions for the projection: a Fibonacci sphere, well spread, no symmetry that could alias.
_NUM_SAMPLES = 32  # twice the 15 coefficients of bands 1-3: a well-conditioned projection
_CHUNK = 4096


def _sample_directions(m: int = _NUM_SAMPLES) -> torch.Tensor:
    i = torch.arange(m, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / m
    r = torch.sqrt(1.0 - z * z)
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


def rotate_sh_rest(sh_rest: np.ndarray, rotations: np.ndarray | torch.Tensor) -> np.ndarray:
    """SH bands 1..3 (N, K, 3), K in {0, 3, 8, 15}, re-expressed for Gaussians rotated by `rotations` (N, 3, 3).

    The DC band is rotation invariant and is not passed in. Computed in float64, returned as float32.
    """
    sh = torch.as_tensor(np.asarray(sh_rest), dtype=torch.float64)
    n, k = sh.shape[0], sh.shape[1]
    if k == 0:
        return np.asarray(sh_rest, dtype=np.float32).copy()
    degree = {3: 1, 8: 2, 15: 3}.get(k)
    if degree is None:
        raise ValueError(f"sh_rest has {k} coefficients per channel; expected 0, 3, 8 or 15")
    R = torch.as_tensor(rotations, dtype=torch.float64).reshape(n, 3, 3)
    dirs = _sample_directions()  # (M, 3)
    basis = sh_bases(degree, dirs)[:, 1:]  # (M, K): bands 1..degree, without DC
    project = torch.linalg.pinv(basis)  # (K, M)
    out = torch.empty(n, k, 3, dtype=torch.float32)
    for start in range(0, n, _CHUNK):  # bounded memory: (chunk, M, K) float64 at a time
        part = slice(start, start + _CHUNK)
        back = torch.einsum("nji,mj->nmi", R[part], dirs)  # R^T d for each sample, per Gaussian
        rotated_basis = sh_bases(degree, back)[..., 1:]  # (n, M, K)
        wigner = torch.matmul(project, rotated_basis)  # (n, K, K): per-Gaussian rotation of the coefficients
        out[part] = torch.bmm(wigner, sh[part]).to(torch.float32)
    return out.numpy()
