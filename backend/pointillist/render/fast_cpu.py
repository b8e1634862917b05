"""Forward-only numba compositor for interactive CPU display.

Projection, SH and tile binning are shared with the torch path (``rasterize.py``); only the
compositing loop lives here. The torch path must evaluate every (pixel, Gaussian) pair of a
tile to stay vectorised; this kernel visits, per Gaussian, only the pixels inside its
alpha >= 1/255 ellipse, with no per-pixel ``exp``, and stops per pixel exactly where gsplat
does. Results match the torch path to float rounding. ``AVAILABLE`` is False when numba
cannot be imported; ``rasterize`` then uses the torch path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .jit import AVAILABLE, numba, parallel_jit, prange
from .rasterize import (ALPHA_THRESHOLD, MAX_ALPHA, T_THRESHOLD, TILE_SIZE, ProjectedGaussians,
                        TileBins)

# Columns of the packed per-intersection table the kernel reads sequentially: mean, conic,
# opacity, the level L = ln(255 o) (alpha >= 1/255 needs sigma <= L), the half-height of that
# ellipse, then the features.
_MX, _MY, _CA, _CB, _CC, _OP, _LEVEL, _EY, _FEAT0 = range(9)
# Safety margin (pixels) on the ellipse spans so float rounding can never drop a pixel that
# gsplat's per-pixel test would keep; the exact alpha test still runs on every visited pixel.
_SPAN_PAD = 0.01


@parallel_jit
def _composite_tiles(packed, offsets, tiles_x, tiles_y, tile_size, width, height, n_workers,
                     out):  # pragma: no cover - compiled
    """Splat-major compositing of premultiplied features into ``out`` (H, W, C).

    Per tile, walk its Gaussians front to back and, row by row, visit only the pixel span
    inside each one's alpha >= 1/255 ellipse. Each pixel still sees its Gaussians in depth
    order with gsplat's exact per-pixel rules; the spans only skip pixels whose alpha would be
    below 1/255 anyway. Tiles are dealt round-robin to the workers to balance the load
    (a head in the middle of the frame makes tile costs very uneven)."""
    n_feat = out.shape[2]
    n_tiles = tiles_x * tiles_y
    n_pix = tile_size * tile_size
    for w in prange(n_workers):
        T = np.empty(n_pix, dtype=np.float64)
        done = np.empty(n_pix, dtype=np.bool_)
        acc = np.empty((n_pix, n_feat), dtype=np.float64)
        for t in range(w, n_tiles, n_workers):
            start = offsets[t]
            end = offsets[t + 1]
            if start == end:
                continue
            ty = t // tiles_x
            tx = t - ty * tiles_x
            x_lo = tx * tile_size
            y_lo = ty * tile_size
            x_hi = min(x_lo + tile_size, width)  # exclusive
            y_hi = min(y_lo + tile_size, height)
            n_live = (x_hi - x_lo) * (y_hi - y_lo)
            T[:] = 1.0
            done[:] = False
            acc[:, :] = 0.0
            for i in range(start, end):
                mx = packed[i, _MX]
                my = packed[i, _MY]
                ca = packed[i, _CA]
                cb = packed[i, _CB]
                cc = packed[i, _CC]
                op = packed[i, _OP]
                level = packed[i, _LEVEL]
                ey = packed[i, _EY]
                q = math.exp(-ca)
                py0 = max(y_lo, int(math.ceil(my - ey - 0.5)))
                py1 = min(y_hi, int(math.floor(my + ey - 0.5)) + 1)
                for py in range(py0, py1):
                    dy = my - (py + 0.5)
                    # sigma(dx) = 0.5 ca dx^2 + cb dy dx + 0.5 cc dy^2 <= level: solve for dx.
                    disc = (cb * dy) ** 2 - ca * (cc * dy * dy - 2.0 * level)
                    if disc < 0.0:
                        continue
                    root = math.sqrt(disc)
                    dx_lo = (-cb * dy - root) / ca - _SPAN_PAD
                    dx_hi = (-cb * dy + root) / ca + _SPAN_PAD
                    # dx = mx - (px + 0.5)  =>  px in [mx - dx_hi - 0.5, mx - dx_lo - 0.5]
                    px0 = max(x_lo, int(math.ceil(mx - dx_hi - 0.5)))
                    px1 = min(x_hi, int(math.floor(mx - dx_lo - 0.5)) + 1)
                    row = (py - y_lo) * tile_size - x_lo
                    if px0 >= px1:
                        continue
                    # exp(-sigma) along the row without a per-pixel exp: sigma is quadratic in
                    # px, so g = exp(-sigma) steps by r = exp(-(sigma(px+1) - sigma(px))) and
                    # r itself by exp(-ca).
                    dx = mx - (px0 + 0.5)
                    g = math.exp(-(0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy))
                    r = math.exp(-(0.5 * ca - ca * dx - cb * dy))
                    for px in range(px0, px1):
                        p = row + px
                        g_px = g
                        g *= r
                        r *= q
                        if done[p]:
                            continue
                        dx = mx - (px + 0.5)
                        if 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy < 0.0:
                            continue
                        alpha = min(MAX_ALPHA, op * g_px)
                        if alpha < ALPHA_THRESHOLD:
                            continue
                        next_T = T[p] * (1.0 - alpha)
                        if next_T <= T_THRESHOLD:
                            done[p] = True
                            n_live -= 1
                            continue
                        vis = alpha * T[p]
                        for k in range(n_feat):
                            acc[p, k] += packed[i, _FEAT0 + k] * vis
                        T[p] = next_T
                if n_live == 0:
                    break
            for py in range(y_lo, y_hi):
                for px in range(x_lo, x_hi):
                    p = (py - y_lo) * tile_size + (px - x_lo)
                    for k in range(n_feat):
                        out[py, px, k] = acc[p, k]


def composite(
    proj: ProjectedGaussians,
    opacities: Tensor,  # (N,)
    feats: Tensor,  # (N, C)
    bins: TileBins,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
) -> np.ndarray:
    """Premultiplied features (H, W, C) as float32 numpy (accumulated in float64)."""
    if not AVAILABLE:
        raise RuntimeError("numba is not available")
    with torch.no_grad():
        op = opacities.detach().cpu().double()
        conics = proj.conics.detach().cpu().double()
        a, b, c = conics.unbind(-1)
        det = torch.clamp_min(a * c - b * b, 1e-30)
        # alpha >= 1/255 needs sigma = 0.5 d^T Sigma^-1 d <= ln(255 o): an ellipse whose
        # half-height is sqrt(2 ln(255 o) Sigma_yy). Both are padded against rounding.
        level = torch.log(torch.clamp_min(op / ALPHA_THRESHOLD, 1.0))
        ey = torch.sqrt(2.0 * level * a / det) * 1.001 + _SPAN_PAD
        table = torch.cat([
            proj.means2d.detach().cpu().double(), conics, op[:, None],
            (level * 1.0001 + 1e-6)[:, None], ey[:, None], feats.detach().cpu().double(),
        ], dim=1).numpy()
        # One row per (tile, Gaussian) intersection, in the order the kernel reads them.
        packed = np.ascontiguousarray(table[bins.gauss_ids.cpu().numpy()])
    offsets = bins.offsets.cpu().numpy()
    out = np.zeros((height, width, feats.shape[-1]), dtype=np.float32)
    if len(packed):
        _composite_tiles(packed, offsets, bins.tiles_x, bins.tiles_y, tile_size, width, height,
                         numba.get_num_threads(), out)
    return out
