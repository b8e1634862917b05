"""Film passes: a display-sRGB splat render re-expressed as a compositor's scene-linear film.

Splat colours are display sRGB (3DGS fits them that way), while a DCC's render result is scene-linear with
premultiplied alpha, rows from the bottom, and a depth pass that is "far away" where nothing was hit
(Blender's Combined and Z passes). The conversion touches every pixel of every frame, so the backend does it
in one parallel pass while copying the rasterizer's output into the response buffer (`render_payload`'s
FILM flag): the client then hands the received bytes to its film unchanged. Doing it client-side in numpy
cost more than the rest of the bridge together (11 ms at 512², against about 1 ms here).

Imports numpy (and numba when present), never torch.
"""

from __future__ import annotations

import numpy as np

from .colour import srgb_to_linear
from .jit import AVAILABLE, parallel_jit, prange

#: What the film's depth pass holds where no splat was hit (Blender's "nothing here" Z, as Cycles writes it).
FAR_DEPTH = 1.0e10
#: Straight alpha below this counts as empty when un-premultiplying (its colour is 0).
MIN_ALPHA = 1e-6
_LUT_SIZE = 65536
_NO_DEPTH = np.zeros((1, 1), np.float32)  # the kernel's depth arguments when no depth pass is wanted


#: `srgb_to_linear` on a 65,536-step grid of [0, 1]: nearest entry is within 2e-5 of the exact curve, far
#: below a 16-bit step, and one load per channel instead of a `pow`.
SRGB_TO_LINEAR_LUT = srgb_to_linear(np.linspace(0.0, 1.0, _LUT_SIZE)).astype(np.float32)


def _film_pixels(rgb, alpha, depth, lut, transparent, out_rgba, out_depth, with_depth):  # pragma: no cover - compiled
    height, width = alpha.shape
    top = np.float32(lut.shape[0] - 1)
    zero, one, half = np.float32(0.0), np.float32(1.0), np.float32(0.5)
    for i in prange(height):
        row = height - 1 - i
        for j in range(width):
            a = alpha[i, j]
            if transparent:
                inv = one / a if a > MIN_ALPHA else zero
                cover = a
            else:
                inv = one
                cover = one
            for c in range(3):
                x = rgb[i, j, c] * inv
                if not x > zero:  # also NaN
                    x = zero
                elif x > one:
                    x = one
                out_rgba[row, j, c] = lut[np.int32(x * top + half)] * cover
            out_rgba[row, j, 3] = cover
            if with_depth:
                out_depth[row, j] = depth[i, j] if a > zero else np.float32(FAR_DEPTH)


_film_kernel = parallel_jit(_film_pixels) if AVAILABLE else None


def film_passes_numpy(rgb: np.ndarray, alpha: np.ndarray, depth: np.ndarray | None, transparent: bool,
                      out_rgba: np.ndarray, out_depth: np.ndarray | None) -> None:
    """`film_passes` in plain numpy: the reference the compiled kernel is tested against, and the path
    taken where numba is missing."""
    src_a = alpha[::-1, :, None]
    src = rgb[::-1]
    if transparent:  # times the reciprocal, as the kernel does, so both pick the same table entries
        inv = np.divide(np.float32(1.0), src_a, out=np.zeros(src_a.shape, np.float32), where=src_a > MIN_ALPHA)
        straight = src * inv
    else:
        straight = src
    idx = np.nan_to_num(np.clip(straight, 0.0, 1.0), nan=0.0) * np.float32(_LUT_SIZE - 1) + np.float32(0.5)
    linear = SRGB_TO_LINEAR_LUT[idx.astype(np.int32)]
    cover = src_a if transparent else np.float32(1.0)
    out_rgba[..., :3] = linear * cover
    out_rgba[..., 3] = cover[..., 0] if transparent else 1.0
    if out_depth is not None and depth is not None:
        out_depth[...] = np.where(alpha[::-1] > 0, depth[::-1], np.float32(FAR_DEPTH))


def film_passes(rgb: np.ndarray, alpha: np.ndarray, depth: np.ndarray | None, transparent: bool,
                out_rgba: np.ndarray, out_depth: np.ndarray | None = None) -> None:
    """Write the film for a render into `out_rgba` (H, W, 4) and `out_depth` (H, W), both float32.

    `rgb` (H, W, 3) is display sRGB composited over the request's background, top row first; `alpha` (H, W)
    the coverage; `depth` (H, W) camera z. With `transparent` the background was black, so `rgb` is
    premultiplied: each pixel is un-premultiplied, linearised and premultiplied again, and alpha is the
    coverage. Otherwise the composited colour is linearised and alpha is 1 (an opaque film). Rows come out
    bottom first; depth is `FAR_DEPTH` where alpha is 0.
    """
    height, width = alpha.shape
    if rgb.shape != (height, width, 3) or out_rgba.shape != (height, width, 4):
        raise ValueError(f"film: rgb {rgb.shape} and output {out_rgba.shape} must match alpha {alpha.shape}")
    with_depth = out_depth is not None and depth is not None
    if _film_kernel is None:  # pragma: no cover
        film_passes_numpy(rgb, alpha, depth, transparent, out_rgba, out_depth)
        return
    rgb, alpha = np.ascontiguousarray(rgb, np.float32), np.ascontiguousarray(alpha, np.float32)
    depth = np.ascontiguousarray(depth, np.float32) if with_depth else alpha
    _film_kernel(rgb, alpha, depth, SRGB_TO_LINEAR_LUT, bool(transparent), out_rgba,
                 out_depth if with_depth else _NO_DEPTH, with_depth)


def covered_block(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """(first row, end row, first column, end column), top-down, of the smallest block holding every pixel with
    alpha > 0; (0, 0, 0, 0) when nothing is covered. Outside it the film is `empty_pixel` everywhere."""
    rows = np.flatnonzero((alpha > 0).any(axis=1))
    if not rows.size:
        return 0, 0, 0, 0
    cols = np.flatnonzero((alpha[rows[0]:rows[-1] + 1] > 0).any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def empty_pixel(background: np.ndarray, transparent: bool) -> np.ndarray:
    """The film RGBA of a pixel no splat covers (alpha 0, so the render holds exactly the background there),
    by the same arithmetic as `film_passes`: 0 0 0 0 on a transparent film, else the linearised background
    with alpha 1."""
    out = np.empty((1, 1, 4), np.float32)
    film_passes_numpy(np.asarray(background, np.float32).reshape(1, 1, 3), np.zeros((1, 1), np.float32), None,
                      transparent, out, None)
    return out[0, 0]
