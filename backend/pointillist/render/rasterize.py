"""Gaussian-splat rasterizer: one stateless ``rasterize`` front end over three back ends.

* ``"torch"``: pure-torch, differentiable through autograd, device agnostic (CPU or CUDA).
* ``"fast"``: numba forward-only CPU path for interactive display (see ``fast_cpu``).
* ``"gsplat"``: gsplat's CUDA kernels, when CUDA and a working gsplat exist.

All three follow gsplat 1.5.3's "classic" 3DGS semantics so a scene trained on a GPU renders
the same on a laptop:

* EWA splatting: the perspective Jacobian is evaluated with x/z, y/z clamped to 1.3x the
  image half-extent (gsplat's ``persp_proj``), then ``eps2d = 0.3`` px^2 is added to the 2D
  covariance diagonal (no antialias compensation).
* Culling: camera z outside ``[near, far]``, non-positive 2D determinant, opacity < 1/255,
  or a bounding box that misses the image.
* Per-axis, opacity-aware bounding box (gsplat >= 1.5): ``r = ceil(e * sqrt(cov2d_ii))`` with
  ``e = min(3.33, sqrt(2 ln(255 * opacity)))``; Gaussians are binned on 16x16 tiles by it and
  a pixel only sees the Gaussians binned to its tile.
* Front-to-back compositing in camera-z order with, per pixel centre ``(x + 0.5, y + 0.5)``:
  ``alpha = min(0.999, o * exp(-s))``, ``s = 0.5 d^T Sigma^-1 d``; skip when ``s < 0`` or
  ``alpha < 1/255``; stop *before* the Gaussian whose ``T * (1 - alpha) <= 1e-4``.

Alpha is the sum of the blending weights ``w_i = alpha_i T_i`` (equal to ``1 - T_final``),
and depth the expected camera z ``sum(w_i z_i) / alpha`` (0 where alpha is 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .sh import sh_degree_from_coeffs, sh_to_rgb

log = logging.getLogger(__name__)

TILE_SIZE = 16
EPS2D = 0.3
ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
T_THRESHOLD = 1e-4
MAX_EXTEND = 3.33

Backend = Literal["auto", "torch", "fast", "gsplat"]
CameraModel = Literal["pinhole", "ortho"]

# Elements (pixels x Gaussian slots) processed per compositing chunk by the torch path; bounds
# peak memory (~15 temporaries of this size live at once) independently of the scene size.
_CHUNK_ELEMENTS = 1 << 21
_MAX_SLOTS_PER_CHUNK = 512


class RenderOutput(NamedTuple):
    """Rendered image; tensors live on the input device with the input dtype."""

    rgb: Tensor  # (H, W, 3), background already composited
    alpha: Tensor  # (H, W) accumulated opacity = 1 - final transmittance
    depth: Tensor  # (H, W) expected camera-space z, 0 where alpha == 0


@dataclass
class ProjectedGaussians:
    """Per-Gaussian screen-space quantities shared by every back end."""

    means2d: Tensor  # (N, 2) pixel coordinates of the projected centres
    conics: Tensor  # (N, 3) upper triangle (a, b, c) of the inverse 2D covariance
    depths: Tensor  # (N,) camera-space z
    radii: Tensor  # (N, 2) int32 half-extents of the bounding box in pixels; 0 = culled

    @property
    def visible(self) -> Tensor:  # (N,) bool
        return (self.radii > 0).all(dim=-1)


@dataclass
class TileBins:
    """Gaussian ids per 16x16 tile, front to back, in CSR layout."""

    tiles_x: int
    tiles_y: int
    offsets: Tensor  # (tiles + 1,) int64: tile t owns gauss_ids[offsets[t]:offsets[t + 1]]
    gauss_ids: Tensor  # (n_intersections,) int64, sorted by (tile, depth)


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices (N, 3, 3) from quaternions (N, 4) in wxyz order (normalised here)."""
    q = torch.nn.functional.normalize(quats, dim=-1)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(q.shape[:-1] + (3, 3))


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances (N, 3, 3) = R S S^T R^T from wxyz quats (N, 4) and scales (N, 3)."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # (N, 3) world
    quats: Tensor,  # (N, 4) wxyz
    scales: Tensor,  # (N, 3) activated, metres
    opacities: Tensor,  # (N,) in [0, 1]
    viewmat: Tensor,  # (4, 4) world -> camera (OpenCV)
    K: Tensor,  # (3, 3) intrinsics in pixels
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 100.0,
    eps2d: float = EPS2D,
    camera_model: CameraModel = "pinhole",
) -> ProjectedGaussians:
    """EWA projection exactly as gsplat's ``fully_fused_projection`` (pinhole or ortho, classic).

    ``camera_model="ortho"`` is gsplat's orthographic camera: ``u = fx x + cx``, ``v = fy y + cy`` with
    ``K`` in pixels per metre, and the constant Jacobian ``[[fx, 0, 0], [0, fy, 0]]``.

    Differentiable w.r.t. means, quats and scales through ``means2d``, ``conics`` and
    ``depths``; ``radii`` (the culling decision) is piecewise constant and carries no gradient.
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    means_c = means @ R.T + t
    M_c = R @ (quat_to_rotmat(quats) * scales[..., None, :])  # camera-frame R S
    cov_c = M_c @ M_c.transpose(-1, -2)

    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near) & (z <= far)
    # Culled Gaussians never reach the compositor, but 1/z must stay finite for their
    # (zero) gradients not to turn into NaN.
    z = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    zero = torch.zeros_like(z)
    if camera_model == "ortho":
        J = torch.stack([fx + zero, zero, zero, zero, fy + zero, zero], dim=-1).reshape(-1, 2, 3)
        means2d = torch.stack([fx * x + cx, fy * y + cy], dim=-1)
    elif camera_model == "pinhole":
        rz = 1.0 / z
        rz2 = rz * rz
        tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
        ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
        J = torch.stack(
            [fx * rz, zero, -fx * tx * rz2, zero, fy * rz, -fy * ty * rz2], dim=-1
        ).reshape(-1, 2, 3)
        means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    else:
        raise ValueError(f"unknown camera_model {camera_model!r}; expected 'pinhole' or 'ortho'")
    cov2d = J @ cov_c @ J.transpose(-1, -2)

    c00 = cov2d[:, 0, 0] + eps2d
    c11 = cov2d[:, 1, 1] + eps2d
    c01 = cov2d[:, 0, 1]
    det = c00 * c11 - c01 * cov2d[:, 1, 0]
    ok_det = det > 0
    det_safe = torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], dim=-1)

    with torch.no_grad():
        op = opacities.detach()
        ok_op = op >= ALPHA_THRESHOLD
        extend = torch.sqrt(2.0 * torch.log(torch.clamp_min(op / ALPHA_THRESHOLD, 1.0)))
        extend = torch.clamp_max(extend, MAX_EXTEND)
        rx = torch.ceil(extend * torch.sqrt(torch.clamp_min(c00.detach(), 0.0)))
        ry = torch.ceil(extend * torch.sqrt(torch.clamp_min(c11.detach(), 0.0)))
        m2 = means2d.detach()
        inside = (
            (m2[:, 0] + rx > 0) & (m2[:, 0] - rx < width)
            & (m2[:, 1] + ry > 0) & (m2[:, 1] - ry < height)
        )
        keep = in_depth & ok_det & ok_op & inside & (rx > 0) & (ry > 0)
        radii = torch.stack([rx, ry], dim=-1) * keep[:, None]
        radii = radii.to(torch.int32)
    return ProjectedGaussians(means2d=means2d, conics=conics, depths=means_c[:, 2], radii=radii)


# --------------------------------------------------------------------------------------------
# Tile binning
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def bin_gaussians(proj: ProjectedGaussians, width: int, height: int,
                  tile_size: int = TILE_SIZE) -> TileBins:
    """Assign visible Gaussians to every tile their bounding box touches, sorted by depth."""
    device = proj.means2d.device
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    n_tiles = tiles_x * tiles_y
    ids = torch.nonzero(proj.visible).squeeze(1)
    if ids.numel() == 0:
        return TileBins(tiles_x, tiles_y,
                        torch.zeros(n_tiles + 1, dtype=torch.int64, device=device),
                        torch.zeros(0, dtype=torch.int64, device=device))
    # Same float arithmetic as gsplat's intersect_tile kernel (float32, divide then floor/ceil).
    m = proj.means2d.detach()[ids].float() / tile_size
    r = proj.radii[ids].float() / tile_size
    x0 = torch.floor(m[:, 0] - r[:, 0]).clamp(0, tiles_x).long()
    x1 = torch.ceil(m[:, 0] + r[:, 0]).clamp(0, tiles_x).long()
    y0 = torch.floor(m[:, 1] - r[:, 1]).clamp(0, tiles_y).long()
    y1 = torch.ceil(m[:, 1] + r[:, 1]).clamp(0, tiles_y).long()
    w = x1 - x0
    counts = w * (y1 - y0)
    total = int(counts.sum())
    # Expand each Gaussian into its rectangle of tiles.
    gid = torch.repeat_interleave(torch.arange(ids.numel(), device=device), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=device) - starts[gid]
    wg = w[gid]
    tile = (y0[gid] + local // wg) * tiles_x + (x0[gid] + local % wg)
    # Front-to-back within a tile; equal depths keep Gaussian index order (gsplat's stable sort).
    depth_rank = torch.empty_like(ids)
    depth_rank[torch.argsort(proj.depths.detach()[ids], stable=True)] = torch.arange(
        ids.numel(), device=device)
    key = tile * ids.numel() + depth_rank[gid]
    order = torch.argsort(key)
    gauss_ids = ids[gid[order]]
    tile_counts = torch.bincount(tile, minlength=n_tiles)
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(tile_counts, 0)
    return TileBins(tiles_x, tiles_y, offsets, gauss_ids)


# --------------------------------------------------------------------------------------------
# Torch compositing
# --------------------------------------------------------------------------------------------


def _composite_slots(
    pix: Tensor,  # (G, P, 2) pixel centres
    mu: Tensor,  # (G, L, 2) means2d of the Gaussians in each tile's slots
    con: Tensor,  # (G, L, 3) conics
    op: Tensor,  # (G, L) opacities
    feat: Tensor,  # (G, L, C) features to composite (colour + depth)
    slot_ok: Tensor,  # (G, L) bool, False for padding
    T_in: Tensor,  # (G, P) transmittance before these slots
    T_stop_in: Tensor,  # (G, P) T including a terminating Gaussian: <= 1e-4 once a pixel is done
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite one depth-ordered batch of slots for a group of tiles, vectorised.

    The sequential rule "stop before the first Gaussian that would push T to <= 1e-4" is
    expressed without a loop: T after each slot is a cumulative product, it never increases,
    so the Gaussians still composited are exactly those whose running T stays above 1e-4.
    That running T (``T_stop``, which also counts the Gaussian that triggered the stop) is
    carried between batches so a finished pixel stays finished.
    Returns the feature contribution (G, P, C), T after the batch and T_stop after it.
    """
    dx = mu[:, None, :, 0] - pix[:, :, None, 0]  # (G, P, L)
    dy = mu[:, None, :, 1] - pix[:, :, None, 1]
    a, b, c = con[:, None, :, 0], con[:, None, :, 1], con[:, None, :, 2]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(op[:, None, :] * torch.exp(-sigma), MAX_ALPHA)
    with torch.no_grad():
        hit = slot_ok[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
        T_run = T_stop_in[..., None] * torch.cumprod(1.0 - alpha * hit, dim=-1)
        keep = hit & (T_run > T_THRESHOLD)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    T_incl = torch.cumprod(one_minus, dim=-1)
    T_excl = torch.cat([torch.ones_like(T_incl[..., :1]), T_incl[..., :-1]], dim=-1)
    weights = alpha * T_excl * T_in[..., None]  # (G, P, L)
    contrib = torch.einsum("gpl,glc->gpc", weights, feat)
    return contrib, T_in * T_incl[..., -1], T_run[..., -1]


def _tile_groups(counts: Tensor, pixels_per_tile: int) -> list[Tensor]:
    """Non-empty tile ids, sorted by list length and grouped so each padded
    (tiles x pixels x slots) block stays within ``_CHUNK_ELEMENTS``."""
    nonempty = torch.nonzero(counts).squeeze(1)
    nonempty = nonempty[torch.argsort(counts[nonempty], stable=True)]
    sizes = torch.clamp_max(counts[nonempty], _MAX_SLOTS_PER_CHUNK).tolist()
    groups, start = [], 0
    for end in range(1, len(sizes) + 1):
        # Close the group before tile `end` if adding it (the longest so far) busts the budget.
        if end == len(sizes) or (end + 1 - start) * pixels_per_tile * sizes[end] > _CHUNK_ELEMENTS:
            groups.append(nonempty[start:end])
            start = end
    return groups


def composite_torch(
    proj: ProjectedGaussians,
    opacities: Tensor,  # (N,)
    feats: Tensor,  # (N, C)
    bins: TileBins,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
) -> Tensor:
    """Differentiable tile compositing; returns premultiplied features (H, W, C).

    Tiles are processed in groups padded to the group's longest list, then in depth batches
    of at most ``_MAX_SLOTS_PER_CHUNK`` slots; each (group, batch) is checkpointed when
    gradients are needed so memory stays bounded whatever the scene size.
    """
    device, dtype = feats.device, feats.dtype
    C = feats.shape[-1]
    P = tile_size * tile_size
    counts = (bins.offsets[1:] - bins.offsets[:-1]).cpu()
    need_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (proj.means2d, proj.conics, opacities, feats))

    local = torch.arange(P, device=device)
    local_xy = torch.stack([local % tile_size, local // tile_size], dim=-1).to(dtype) + 0.5
    results: list[Tensor] = []
    tile_ids: list[Tensor] = []
    for group in _tile_groups(counts, P):
        group = group.to(device)
        origin = torch.stack([group % bins.tiles_x, group // bins.tiles_x], dim=-1) * tile_size
        pix = origin.to(dtype)[:, None, :] + local_xy[None]  # (G, P, 2) pixel centres
        first = bins.offsets[group]
        n_in_tile = bins.offsets[group + 1] - first
        longest = int(n_in_tile.max())
        acc = torch.zeros(len(group), P, C, device=device, dtype=dtype)
        T = torch.ones(len(group), P, device=device, dtype=dtype)
        T_stop = T
        for s0 in range(0, longest, _MAX_SLOTS_PER_CHUNK):
            slots = torch.arange(s0, min(longest, s0 + _MAX_SLOTS_PER_CHUNK), device=device)
            slot_ok = slots[None, :] < n_in_tile[:, None]  # (G, Ls); False = padding
            flat = torch.where(slot_ok, first[:, None] + slots[None, :], 0)
            gids = bins.gauss_ids[flat]
            args = (pix, proj.means2d[gids], proj.conics[gids], opacities[gids], feats[gids],
                    slot_ok, T, T_stop)
            if need_grad:
                contrib, T, T_stop = checkpoint(_composite_slots, *args, use_reentrant=False)
            else:
                contrib, T, T_stop = _composite_slots(*args)
            acc = acc + contrib
            if bool((T_stop <= T_THRESHOLD).all()):
                break  # every pixel of the group is finished: later slots cannot contribute
        results.append(acc)
        tile_ids.append(group)

    out = torch.zeros(bins.tiles_x * bins.tiles_y, P, C, device=device, dtype=dtype)
    if tile_ids:
        out = out.index_copy(0, torch.cat(tile_ids), torch.cat(results))
    elif need_grad:
        # Nothing visible: keep an (empty) graph so a training step's backward still works.
        out = out + (proj.means2d[:0].sum() + proj.conics[:0].sum() + opacities[:0].sum()
                     + feats[:0].sum())
    return _untile(out, bins, tile_size, width, height)


def _untile(x: Tensor, bins: TileBins, tile_size: int, width: int, height: int) -> Tensor:
    """(tiles, tile_size^2, C) -> (H, W, C), cropping partial edge tiles."""
    C = x.shape[-1]
    x = x.reshape(bins.tiles_y, bins.tiles_x, tile_size, tile_size, C).permute(0, 2, 1, 3, 4)
    return x.reshape(bins.tiles_y * tile_size, bins.tiles_x * tile_size, C)[:height, :width]


# --------------------------------------------------------------------------------------------
# Front end
# --------------------------------------------------------------------------------------------


def _as_tensor(x: Tensor | np.ndarray, like: Tensor) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(
        device=like.device, dtype=like.dtype)


def _camera_center(viewmat: Tensor) -> Tensor:
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    return -R.T @ t


def gaussian_colors(
    means: Tensor,  # (N, 3)
    viewmat: Tensor,  # (4, 4)
    colors: Tensor | None = None,  # (N, 3)
    sh: Tensor | None = None,  # (N, K, 3)
    sh_degree: int | None = None,
    sh_frames: Tensor | None = None,  # (N, 3, 3) canonical -> posed rotations
) -> Tensor:
    """Per-Gaussian RGB (N, 3) for this view: given colours, or SH evaluated toward the camera.

    With ``sh_frames`` the view direction is taken back into each Gaussian's canonical frame
    (``R^T d``) so view-dependent colour follows the Gaussian when an avatar is posed.
    """
    if (colors is None) == (sh is None):
        raise ValueError("pass exactly one of `colors` (N, 3) or `sh` (N, K, 3)")
    if colors is not None:
        return colors
    assert sh is not None
    degree = sh_degree_from_coeffs(sh.shape[-2]) if sh_degree is None else sh_degree
    if degree == 0:
        return sh_to_rgb(0, sh, torch.ones_like(means))
    dirs = means - _camera_center(viewmat)
    if sh_frames is not None:
        dirs = torch.einsum("nji,nj->ni", sh_frames, dirs)
    return sh_to_rgb(degree, sh, dirs)


_gsplat_failed = False


def _gsplat_available() -> bool:
    """gsplat importable and not already failed in this process (e.g. no CUDA build)."""
    if _gsplat_failed:
        return False
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def _render_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                   rgb: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
                   near: float, far: float, camera_model: CameraModel = "pinhole"
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """gsplat CUDA path; returns premultiplied rgb (H, W, 3), alpha (H, W), depth sum (H, W)."""
    from gsplat import rasterization

    render, alphas, _ = rasterization(
        means, quats, scales, opacities, rgb, viewmat[None], K[None], width, height,
        near_plane=near, far_plane=far, eps2d=EPS2D, sh_degree=None, packed=False,
        tile_size=TILE_SIZE, render_mode="RGB+D", rasterize_mode="classic", camera_model=camera_model,
    )
    return render[0, ..., :3], alphas[0, ..., 0], render[0, ..., 3]


def _render_projected(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                      rgb: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
                      near: float, far: float, camera_model: CameraModel = "pinhole", *,
                      fast: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Torch or numba path; returns premultiplied rgb (H, W, 3), alpha (H, W), depth sum (H, W)."""
    proj = project_gaussians(means, quats, scales, opacities, viewmat, K, width, height, near, far,
                             camera_model=camera_model)
    bins = bin_gaussians(proj, width, height)
    # Compositing a constant 1 yields alpha as the sum of blending weights, which keeps full
    # relative precision for faint pixels (1 - T would cancel) and makes depth a true average.
    feats = torch.cat([rgb, proj.depths[:, None], torch.ones_like(proj.depths)[:, None]], dim=-1)
    if fast:
        from . import fast_cpu

        img = fast_cpu.composite(proj, opacities, feats, bins, width, height)
        img = torch.from_numpy(img).to(device=means.device, dtype=means.dtype)
    else:
        img = composite_torch(proj, opacities, feats, bins, width, height)
    return img[..., :3], img[..., 4], img[..., 3]


def _select_backend(backend: str, on_cuda: bool, wants_grad: bool, float32: bool = True) -> str:
    """Resolve ``"auto"``: gsplat on CUDA (float32 only, its kernels' dtype); on CPU, torch
    when differentiating, else numba."""
    if backend not in ("auto", "torch", "fast", "gsplat"):
        raise ValueError(f"unknown backend {backend!r}")
    if backend == "fast" and not _fast_available():
        raise RuntimeError("backend='fast' needs numba, which is not importable")
    if backend != "auto":
        return backend
    if on_cuda:
        return "gsplat" if float32 and _gsplat_available() else "torch"
    return "fast" if not wants_grad and _fast_available() else "torch"


def _fast_available() -> bool:
    try:
        from . import fast_cpu
    except Exception:  # numba missing or broken: the torch path still works
        return False
    return fast_cpu.AVAILABLE


def rasterize(
    means: Tensor,  # (N, 3) world positions
    quats: Tensor,  # (N, 4) rotations, wxyz, normalised here
    scales: Tensor,  # (N, 3) activated (linear) standard deviations in metres
    opacities: Tensor,  # (N,) activated opacities in [0, 1]
    colors: Tensor | None = None,  # (N, 3) RGB; exclusive with `sh`
    sh: Tensor | None = None,  # (N, K, 3) SH coefficients, K = (deg + 1)^2
    *,
    viewmat: Tensor | np.ndarray,  # (4, 4) world -> camera, OpenCV axes
    K: Tensor | np.ndarray,  # (3, 3) pinhole intrinsics in pixels
    width: int,
    height: int,
    background: Tensor | np.ndarray | None = None,  # (3,) RGB composited behind the splats
    sh_degree: int | None = None,  # SH degree to evaluate; default: largest that K allows
    sh_frames: Tensor | None = None,  # (N, 3, 3) canonical -> posed rotation per Gaussian
    near: float = 0.01,  # camera-z near cull plane (metres)
    far: float = 100.0,  # camera-z far cull plane (metres)
    backend: Backend = "auto",
    camera_model: CameraModel = "pinhole",  # "ortho": K in pixels per metre, no perspective divide
) -> RenderOutput:
    """Render Gaussians into an (H, W) image with gsplat's classic 3DGS conventions.

    ``backend="auto"`` picks gsplat on CUDA (falling back to torch if it fails), and on CPU
    the differentiable torch path when any input requires grad, otherwise the numba fast
    path when available. Outputs are on the input device with the dtype of ``means``.
    """
    N = means.shape[0]
    for name, x, shape in (("means", means, (N, 3)), ("quats", quats, (N, 4)),
                           ("scales", scales, (N, 3)), ("opacities", opacities, (N,))):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    viewmat_t = _as_tensor(viewmat, means)
    K_t = _as_tensor(K, means)
    rgb = gaussian_colors(means, viewmat_t, colors, sh, sh_degree, sh_frames)

    inputs = [t for t in (means, quats, scales, opacities, colors, sh, sh_frames, viewmat, K)
              if isinstance(t, Tensor)]
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    chosen = _select_backend(backend, means.is_cuda, wants_grad, means.dtype == torch.float32)

    args = (means, quats, scales, opacities, rgb, viewmat_t, K_t, width, height, near, far, camera_model)
    if chosen == "gsplat":
        try:
            color, alpha, depth_sum = _render_gsplat(*args)
        except Exception as exc:  # no CUDA build, unsupported dtype, ...
            if backend != "auto":
                raise
            global _gsplat_failed
            _gsplat_failed = True  # do not retry (and re-fail) on every frame
            log.warning("gsplat rasterization failed (%s); using the torch rasterizer", exc)
            color, alpha, depth_sum = _render_projected(*args, fast=False)
    else:
        color, alpha, depth_sum = _render_projected(*args, fast=chosen == "fast")

    has_alpha = alpha > 0
    depth = torch.where(has_alpha, depth_sum / alpha.clamp_min(1e-10), torch.zeros_like(depth_sum))
    if background is not None:
        color = color + (1.0 - alpha)[..., None] * _as_tensor(background, means)
    return RenderOutput(rgb=color, alpha=alpha, depth=depth)
