"""Rasterizer tests against independent oracles.

* projection vs gsplat's pure-torch reference (``gsplat.cuda._torch_impl``);
* whole images vs a brute-force renderer written here: every pixel loops over *all* Gaussians
  in depth order with gsplat's per-pixel rules spelled out as plain scalar code;
* gradients vs autograd through that brute-force renderer (float64);
* the numba fast path vs the torch path; SH frames; degenerate inputs; the gsplat CUDA path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import (_fully_fused_projection, _persp_proj,
                                     _quat_scale_to_covar_preci, _spherical_harmonics,
                                     _world_to_cam)
from scipy.spatial.transform import Rotation

import pointillist.render.rasterize as rz
from pointillist.render import fast_cpu, jit
from pointillist.render.camera import K_from_focal, look_at, orbit_viewmat
from pointillist.render.rasterize import (RenderOutput, covariance_3d, project_gaussians,
                                          rasterize)

TILE = 16
W, H = 70, 45  # not tile multiples: partial edge tiles are exercised everywhere

needs_numba = pytest.mark.skipif(not fast_cpu.AVAILABLE, reason="numba not installed")


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


def make_camera(dtype=torch.float32, width=W, height=H):
    viewmat = torch.as_tensor(orbit_viewmat(20.0, 10.0, 1.0), dtype=dtype)
    # Off-centre principal point and fx != fy so no symmetry hides a transposition.
    K = torch.as_tensor(K_from_focal(62.0, 66.0, 0.47 * width, 0.53 * height), dtype=dtype)
    return viewmat, K


def make_scene(n: int, seed: int, dtype=torch.float32, sh_degree: int | None = None,
               dense: int = 0) -> dict[str, torch.Tensor]:
    """Random Gaussians around the origin, some outside the image / behind the camera.

    ``dense`` extra large opaque Gaussians stacked in the middle make pixels saturate, so the
    early-termination rule is exercised.
    """
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.004), math.log(0.06), generator=g))
    opac = torch.empty(n).uniform_(0.02, 1.0, generator=g)
    if n >= 10:
        opac[:3] = 1.0  # opacity-aware extent hits its 3.33 sigma cap
        opac[3:5] = 0.5 / 255  # culled for low opacity
        means[5] = torch.tensor([0.72, 0.36, 1.44])  # behind the camera at ~(0.34, 0.17, 0.92)
    if dense:
        means = torch.cat([means, 0.03 * torch.randn(dense, 3, generator=g)])
        scales = torch.cat([scales, torch.full((dense, 3), 0.05)])
        opac = torch.cat([opac, torch.empty(dense).uniform_(0.7, 0.99, generator=g)])
        n += dense
    scene = {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),  # unnormalised on purpose
        "scales": scales,
        "opacities": opac,
    }
    if sh_degree is None:
        scene["colors"] = torch.rand(n, 3, generator=g)
    else:
        scene["sh"] = 0.4 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g)
    return {k: v.to(dtype) for k, v in scene.items()}


def render(scene, viewmat, K, width=W, height=H, **kw) -> RenderOutput:
    return rasterize(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                     scene.get("colors"), scene.get("sh"), viewmat=viewmat, K=K, width=width,
                     height=height, **kw)


# ---------------------------------------------------------------------------------------------
# Brute-force reference
# ---------------------------------------------------------------------------------------------


def gsplat_screen_space(means, quats, scales, viewmat, K, width, height):
    """means2d (N, 2), blurred 2D covariance (N, 2, 2), camera z (N,) via gsplat's torch code."""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    means_c, covars_c = _world_to_cam(means, covars, viewmat[None])
    means2d, cov2d = _persp_proj(means_c, covars_c, K[None], width, height)
    eye = torch.eye(2, dtype=means.dtype)
    return means2d[0], cov2d[0] + 0.3 * eye, means_c[0, :, 2]


def gsplat_radii(means2d, cov2d, z, opacities, width, height, near, far):
    """Per-axis radii (N, 2) following gsplat 1.5.3's CUDA projection kernel, 0 when culled."""
    radii = np.zeros((len(z), 2), dtype=np.int64)
    for i in range(len(z)):
        zi, oi = float(z[i].detach()), float(opacities[i].detach())
        c = cov2d[i].detach().double()
        det = float(c[0, 0] * c[1, 1] - c[0, 1] * c[1, 0])
        if zi < near or zi > far or det <= 0 or oi < 1 / 255:
            continue
        extend = min(3.33, math.sqrt(2 * math.log(oi * 255)))
        rx = math.ceil(extend * math.sqrt(float(c[0, 0])))
        ry = math.ceil(extend * math.sqrt(float(c[1, 1])))
        mx, my = float(means2d[i, 0].detach()), float(means2d[i, 1].detach())
        if rx <= 0 or ry <= 0:
            continue
        if mx + rx <= 0 or mx - rx >= width or my + ry <= 0 or my - ry >= height:
            continue
        radii[i] = rx, ry
    return radii


def reference_render(scene, viewmat, K, width=W, height=H, near=0.01, far=100.0,
                     background=None, sh_frames=None, stats=None):
    """Plain per-pixel loop over every Gaussian, front to back; differentiable via autograd."""
    means, quats, scales, opac = (scene[k] for k in ("means", "quats", "scales", "opacities"))
    dtype = means.dtype
    if "sh" in scene:
        campos = torch.inverse(viewmat)[:3, 3]
        dirs = means - campos
        if sh_frames is not None:
            dirs = torch.einsum("nji,nj->ni", sh_frames, dirs)
        degree = int(math.isqrt(scene["sh"].shape[1])) - 1
        colors = torch.clamp_min(_spherical_harmonics(degree, dirs, scene["sh"]) + 0.5, 0.0)
    else:
        colors = scene["colors"]
    m2d, cov, z = gsplat_screen_space(means, quats, scales, viewmat, K, width, height)
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
    conic = torch.stack([cov[:, 1, 1] / det, -cov[:, 0, 1] / det, cov[:, 0, 0] / det], dim=-1)
    radii = gsplat_radii(m2d, cov, z, opac, width, height, near, far)
    rects = {}
    for i in np.nonzero((radii > 0).all(1))[0]:
        mx, my = float(m2d[i, 0].detach()), float(m2d[i, 1].detach())
        rx, ry = radii[i]
        rects[i] = (math.floor((mx - rx) / TILE), math.ceil((mx + rx) / TILE),
                    math.floor((my - ry) / TILE), math.ceil((my + ry) / TILE))
    order = sorted(rects, key=lambda i: (float(z[i].detach()), i))

    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype),
                            indexing="ij")
    px, py = xs.flatten() + 0.5, ys.flatten() + 0.5
    dx = m2d[None, :, 0] - px[:, None]
    dy = m2d[None, :, 1] - py[:, None]
    sigma = 0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) + conic[:, 1] * dx * dy
    alpha = torch.clamp_max(opac * torch.exp(-sigma), 0.999)  # (P, N)
    sig_np, alp_np = sigma.detach().numpy(), alpha.detach().numpy()
    feats = torch.cat([colors, z[:, None]], dim=-1)

    out_feat, out_alpha, n_breaks = [], [], 0
    for p in range(width * height):
        tx, ty = (p % width) // TILE, (p // width) // TILE
        T, chosen = 1.0, []
        for i in order:
            x0, x1, y0, y1 = rects[i]
            if not (x0 <= tx < x1 and y0 <= ty < y1):
                continue  # not binned to this pixel's tile
            if sig_np[p, i] < 0 or alp_np[p, i] < 1 / 255:
                continue
            next_T = T * (1 - float(alp_np[p, i]))
            if next_T <= 1e-4:
                n_breaks += 1
                break
            chosen.append(i)
            T = next_T
        a = alpha[p, chosen]
        trans = torch.cumprod(torch.cat([torch.ones(1, dtype=dtype), 1 - a]), 0)
        out_feat.append((a * trans[:-1]) @ feats[chosen])
        out_alpha.append(1 - trans[-1])
    feat = torch.stack(out_feat).reshape(height, width, 4)
    alpha_img = torch.stack(out_alpha).reshape(height, width)
    rgb = feat[..., :3]
    depth = torch.where(alpha_img > 0, feat[..., 3] / alpha_img.clamp_min(1e-10),
                        torch.zeros_like(alpha_img))
    if background is not None:
        rgb = rgb + (1 - alpha_img)[..., None] * background
    if stats is not None:
        stats["breaks"] = n_breaks
    return RenderOutput(rgb, alpha_img, depth)


def assert_images_close(a: RenderOutput, b: RenderOutput, atol: float = 1e-4):
    for name in ("rgb", "alpha", "depth"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        err = (x.double() - y.double()).abs().max().item()
        assert err <= atol, f"{name}: max abs diff {err:.3g} > {atol}"


# ---------------------------------------------------------------------------------------------
# (a) projection
# ---------------------------------------------------------------------------------------------


def test_covariance_matches_gsplat():
    s = make_scene(100, 0, torch.float64)
    ref, _ = _quat_scale_to_covar_preci(s["quats"], s["scales"], compute_preci=False)
    torch.testing.assert_close(covariance_3d(s["quats"], s["scales"]), ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projection_matches_gsplat(dtype):
    s = make_scene(300, 1, dtype)
    viewmat, K = make_camera(dtype)
    near, far = 0.6, 1.3  # also exercises both cull planes
    proj = project_gaussians(s["means"], s["quats"], s["scales"], s["opacities"], viewmat, K, W, H,
                             near, far)
    covars, _ = _quat_scale_to_covar_preci(s["quats"], s["scales"], compute_preci=False)
    g_radii, g_means2d, g_depths, g_conics, _ = _fully_fused_projection(
        s["means"], covars, viewmat[None], K[None], W, H, eps2d=0.3, near_plane=near, far_plane=far)
    valid = (g_radii[0] > 0).all(-1)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(proj.means2d[valid], g_means2d[0][valid], **tol)
    torch.testing.assert_close(proj.conics[valid], g_conics[0][valid], **tol)
    torch.testing.assert_close(proj.depths, g_depths[0], **tol)
    # Radii and culling: gsplat 1.5.3's CUDA rules (opacity-aware per-axis extent).
    m2d, cov, z = gsplat_screen_space(s["means"], s["quats"], s["scales"], viewmat, K, W, H)
    expected = gsplat_radii(m2d, cov, z, s["opacities"], W, H, near, far)
    np.testing.assert_array_equal(proj.radii.numpy(), expected)
    n_vis = int(proj.visible.sum())
    assert 50 < n_vis < 300  # some culled by each rule, most kept


def test_bins_are_depth_sorted_and_cover_bounding_boxes():
    s = make_scene(200, 2)
    viewmat, K = make_camera()
    proj = project_gaussians(s["means"], s["quats"], s["scales"], s["opacities"], viewmat, K, W, H)
    bins = rz.bin_gaussians(proj, W, H)
    offsets, ids = bins.offsets.tolist(), bins.gauss_ids
    for t in range(bins.tiles_x * bins.tiles_y):
        tile_ids = ids[offsets[t]:offsets[t + 1]]
        d = proj.depths[tile_ids]
        assert bool((d[1:] >= d[:-1]).all())
        tx, ty = t % bins.tiles_x, t // bins.tiles_x
        m, r = proj.means2d[tile_ids], proj.radii[tile_ids]
        assert bool(((m[:, 0] + r[:, 0]) > tx * TILE).all())
        assert bool(((m[:, 0] - r[:, 0]) < (tx + 1) * TILE).all())
        assert bool(((m[:, 1] + r[:, 1]) > ty * TILE).all())
        assert bool(((m[:, 1] - r[:, 1]) < (ty + 1) * TILE).all())
    n_expected = 0
    for i in torch.nonzero(proj.visible).squeeze(1).tolist():
        (mx, my), (rx, ry) = proj.means2d[i].tolist(), proj.radii[i].tolist()
        nx = min(math.ceil((mx + rx) / TILE), bins.tiles_x) - max(math.floor((mx - rx) / TILE), 0)
        ny = min(math.ceil((my + ry) / TILE), bins.tiles_y) - max(math.floor((my - ry) / TILE), 0)
        n_expected += max(nx, 0) * max(ny, 0)
    assert len(ids) == n_expected


# ---------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------


def _front_camera(dtype=torch.float64):
    """Camera at +1 m on Z looking at the origin; the origin lands on pixel (16, 12)'s centre."""
    viewmat = torch.as_tensor(look_at((0, 0, 1), (0, 0, 0)), dtype=dtype)
    return viewmat, torch.as_tensor(K_from_focal(100.0, 100.0, 16.5, 12.5), dtype=dtype)


def _isotropic(means, sigma_m, opacities, colors, dtype=torch.float64):
    n = len(means)
    return {"means": torch.tensor(means, dtype=dtype),
            "quats": torch.tensor([[1.0, 0, 0, 0]] * n, dtype=dtype),
            "scales": torch.full((n, 3), sigma_m, dtype=dtype),
            "opacities": torch.tensor(opacities, dtype=dtype),
            "colors": torch.tensor(colors, dtype=dtype)}


@pytest.mark.parametrize("backend", ["torch", pytest.param("fast", marks=needs_numba)])
def test_single_gaussian_analytic(backend):
    viewmat, K = _front_camera()
    s = _isotropic([[0.0, 0.0, 0.0]], 0.02, [0.6], [[0.2, 0.4, 0.8]])
    out = render(s, viewmat, K, 33, 25, backend=backend)
    var = (100.0 * 0.02) ** 2 + 0.3  # (f sigma / z)^2 plus gsplat's 0.3 px^2 low-pass
    for dx, dy in [(0, 0), (1, 0), (2, -1), (-3, 2), (0, 5)]:
        expected = 0.6 * math.exp(-0.5 * (dx * dx + dy * dy) / var)
        if expected < 1 / 255:
            expected = 0.0
        assert float(out.alpha[12 + dy, 16 + dx]) == pytest.approx(expected, abs=1e-6)
        torch.testing.assert_close(out.rgb[12 + dy, 16 + dx], s["colors"][0] * expected,
                                   atol=1e-6, rtol=0)
    assert float(out.alpha[12, 23]) == 0.0  # 7 px away: alpha = 0.6 exp(-5.7) < 1/255
    d = out.depth[out.alpha > 0]
    torch.testing.assert_close(d, torch.ones_like(d), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["torch", pytest.param("fast", marks=needs_numba)])
def test_alpha_clamp_and_exclusive_early_termination(backend):
    viewmat, K = _front_camera()
    # Opacity 1 clamps to alpha 0.999 at the centre pixel.
    out = render(_isotropic([[0.0, 0.0, 0.0]], 0.05, [1.0], [[1.0, 1.0, 1.0]]), viewmat, K, 33, 25,
                 backend=backend)
    assert float(out.alpha[12, 16]) == pytest.approx(0.999, abs=1e-6)
    # Three layers of alpha 0.995 at the centre: T goes 1 -> 5e-3, and the second layer would
    # take it to 2.5e-5 <= 1e-4, so gsplat stops *before* it: neither it nor the third counts.
    s = _isotropic([[0.0, 0.0, 0.0], [0.0, 0.0, -0.1], [0.0, 0.0, -0.2]], 0.05,
                   [0.995, 0.995, 0.995], [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    out = render(s, viewmat, K, 33, 25, backend=backend)
    assert float(out.alpha[12, 16]) == pytest.approx(0.995, abs=1e-6)
    torch.testing.assert_close(out.rgb[12, 16], torch.tensor([0.995, 0, 0], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert float(out.depth[12, 16]) == pytest.approx(1.0)
    # Off-centre the layers are fainter and all three are composited.
    assert float(out.rgb[12, 18, 1]) > 0.0 and float(out.rgb[12, 18, 2]) > 0.0


# ---------------------------------------------------------------------------------------------
# (b) whole images vs brute force
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,dtype", [(0, torch.float32), (1, torch.float32), (2, torch.float64)])
def test_torch_path_matches_brute_force(seed, dtype):
    s = make_scene(150, seed, dtype, dense=40)
    viewmat, K = make_camera(dtype)
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=dtype)
    stats = {}
    with torch.no_grad():
        ref = reference_render(s, viewmat, K, background=bg, stats=stats)
        ours = render(s, viewmat, K, background=bg, backend="torch")
    assert stats["breaks"] > 50, "scene should exercise early termination"
    assert 0.1 < float(ref.alpha.mean()) < 0.9
    assert ours.rgb.dtype == dtype
    assert_images_close(ours, ref)


def test_torch_path_sh_and_near_far_match_brute_force():
    s = make_scene(120, 3, torch.float32, sh_degree=3)
    viewmat, K = make_camera()
    frames = torch.as_tensor(Rotation.random(120, random_state=3).as_matrix(), dtype=torch.float32)
    with torch.no_grad():
        ref = reference_render(s, viewmat, K, near=0.8, far=1.2, sh_frames=frames)
        ours = render(s, viewmat, K, near=0.8, far=1.2, sh_frames=frames, backend="torch")
    assert_images_close(ours, ref)


def test_chunking_does_not_change_the_image(monkeypatch):
    """Tiny chunks force many tile groups and depth batches (T carried between batches)."""
    s = make_scene(100, 4, torch.float64, dense=60)
    viewmat, K = make_camera(torch.float64)
    with torch.no_grad():
        full = render(s, viewmat, K, backend="torch")
        monkeypatch.setattr(rz, "_CHUNK_ELEMENTS", 2048)
        monkeypatch.setattr(rz, "_MAX_SLOTS_PER_CHUNK", 5)
        chunked = render(s, viewmat, K, backend="torch")
    assert_images_close(chunked, full, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# (c) gradients
# ---------------------------------------------------------------------------------------------


def _grads(fn, scene, params, weights):
    leaves = {k: v.clone().requires_grad_(k in params) for k, v in scene.items()}
    out = fn(leaves)
    loss = sum((getattr(out, k) * w).sum() for k, w in weights.items())
    loss.backward()
    return {k: leaves[k].grad for k in params}


@pytest.mark.parametrize("use_sh", [False, True])
def test_gradients_match_brute_force(use_sh, monkeypatch):
    dtype = torch.float64
    width, height = 40, 30
    s = make_scene(40, 5, dtype, sh_degree=2 if use_sh else None, dense=10)
    viewmat, K = make_camera(dtype, width, height)
    frames = torch.as_tensor(Rotation.random(50, random_state=5).as_matrix(), dtype=dtype)
    if use_sh:
        s["sh_frames"] = frames
    g = torch.Generator().manual_seed(0)
    weights = {"rgb": torch.randn(height, width, 3, generator=g, dtype=dtype),
               "alpha": torch.randn(height, width, generator=g, dtype=dtype),
               "depth": torch.randn(height, width, generator=g, dtype=dtype)}
    params = ["means", "quats", "scales", "opacities", "sh" if use_sh else "colors"]
    if use_sh:
        params.append("sh_frames")
    bg = torch.tensor([0.3, 0.3, 0.3], dtype=dtype)
    # Small chunks so gradients also flow through checkpointed multi-batch compositing.
    monkeypatch.setattr(rz, "_MAX_SLOTS_PER_CHUNK", 16)

    def ours(p):
        return rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p.get("colors"),
                         p.get("sh"), viewmat=viewmat, K=K, width=width, height=height,
                         background=bg, sh_frames=p.get("sh_frames"), backend="auto")

    def ref(p):
        sub = {k: v for k, v in p.items() if k != "sh_frames"}
        return reference_render(sub, viewmat, K, width, height, background=bg,
                                sh_frames=p.get("sh_frames"))

    g_ours, g_ref = _grads(ours, s, params, weights), _grads(ref, s, params, weights)
    for k in params:
        assert g_ours[k] is not None and float(g_ours[k].abs().max()) > 0, k
        torch.testing.assert_close(g_ours[k], g_ref[k], rtol=1e-7, atol=1e-9, msg=k)


def test_gradcheck_tiny_scene():
    """Finite differences on a tiny smooth scene (no alpha clamp, no culling changes)."""
    dtype = torch.float64
    viewmat = torch.as_tensor(look_at((0, 0, 1), (0, 0, 0)), dtype=dtype)
    K = torch.as_tensor(K_from_focal(40.0, 40.0, 9.0, 7.0), dtype=dtype)
    g = torch.Generator().manual_seed(1)
    means = (torch.rand(4, 3, generator=g, dtype=dtype) - 0.5) * 0.2
    quats = torch.randn(4, 4, generator=g, dtype=dtype)
    scales = 0.02 + 0.03 * torch.rand(4, 3, generator=g, dtype=dtype)
    opac = 0.3 + 0.5 * torch.rand(4, generator=g, dtype=dtype)
    colors = torch.rand(4, 3, generator=g, dtype=dtype)

    def fn(m, q, sc, o, c):
        out = rasterize(m, q, sc, o, c, viewmat=viewmat, K=K, width=18, height=14, backend="torch")
        return out.rgb, out.alpha, out.depth

    inputs = tuple(t.clone().requires_grad_() for t in (means, quats, scales, opac, colors))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


# ---------------------------------------------------------------------------------------------
# (d) fast path
# ---------------------------------------------------------------------------------------------


@needs_numba
@pytest.mark.parametrize("seed", [0, 6])
def test_fast_path_matches_torch(seed):
    s = make_scene(200, seed, sh_degree=3, dense=80)
    viewmat, K = make_camera()
    bg = torch.tensor([1.0, 1.0, 1.0])
    with torch.no_grad():
        a = render(s, viewmat, K, background=bg, backend="torch")
        b = render(s, viewmat, K, background=bg, backend="fast")
    assert_images_close(b, a)


@needs_numba
def test_fast_path_matches_torch_on_head_scene():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_render import head_scene

    s = head_scene(3000, seed=1)
    viewmat = torch.as_tensor(orbit_viewmat(-30.0, 5.0, 0.6), dtype=torch.float32)
    K = torch.as_tensor(K_from_focal(240.0, 240.0, 64.0, 64.0), dtype=torch.float32)
    with torch.no_grad():
        a = render(s, viewmat, K, 128, 128, backend="torch")
        b = render(s, viewmat, K, 128, 128, backend="fast")
    assert float(a.alpha.mean()) > 0.3
    assert_images_close(b, a)


def _parallel_sum(x):
    total = 0.0
    for i in jit.prange(x.shape[0]):
        total += x[i]
    return total


@needs_numba
def test_kernel_compiles_without_a_cache_location(monkeypatch):
    """numba rejects cache=True when no cache directory is writable; that must not matter."""
    real = jit.numba.njit

    def njit(*args, cache=False, **kwargs):
        if cache:
            raise RuntimeError("cannot cache function: no locator available")
        return real(*args, **kwargs)

    monkeypatch.setattr(jit.numba, "njit", njit)

    assert jit.parallel_jit(_parallel_sum)(np.arange(10.0)) == 45.0


def test_auto_backend_selection(monkeypatch):
    calls = []
    if fast_cpu.AVAILABLE:
        real = fast_cpu.composite
        monkeypatch.setattr(fast_cpu, "composite", lambda *a, **k: calls.append(1) or real(*a, **k))
    s = make_scene(50, 7)
    viewmat, K = make_camera()
    with torch.no_grad():
        out = render(s, viewmat, K)
    assert out.rgb.grad_fn is None
    assert len(calls) == (1 if fast_cpu.AVAILABLE else 0)
    s["means"].requires_grad_(True)
    out = render(s, viewmat, K)
    assert out.rgb.grad_fn is not None
    assert len(calls) == (1 if fast_cpu.AVAILABLE else 0)  # differentiable: torch path
    out.rgb.sum().backward()
    assert s["means"].grad is not None
    # A camera being optimised also needs the differentiable path.
    s["means"].requires_grad_(False)
    viewmat.requires_grad_(True)
    render(s, viewmat, K).rgb.sum().backward()
    assert viewmat.grad is not None and float(viewmat.grad.abs().max()) > 0


def test_select_backend(monkeypatch):
    monkeypatch.setattr(rz, "_gsplat_failed", False)
    fast = "fast" if fast_cpu.AVAILABLE else "torch"
    assert rz._select_backend("auto", on_cuda=False, wants_grad=False) == fast
    assert rz._select_backend("auto", on_cuda=False, wants_grad=True) == "torch"
    assert rz._select_backend("auto", on_cuda=True, wants_grad=True) == "gsplat"
    assert rz._select_backend("auto", on_cuda=True, wants_grad=False, float32=False) == "torch"
    assert rz._select_backend("torch", on_cuda=True, wants_grad=False) == "torch"
    monkeypatch.setattr(rz, "_gsplat_failed", True)
    assert rz._select_backend("auto", on_cuda=True, wants_grad=False) == "torch"
    with pytest.raises(ValueError):
        rz._select_backend("opengl", on_cuda=False, wants_grad=False)


def test_gsplat_failure_falls_back_only_in_auto_mode(monkeypatch):
    def broken(*args):
        raise RuntimeError("no CUDA kernels here")

    s = make_scene(40, 16)
    viewmat, K = make_camera()
    with torch.no_grad():
        expected = render(s, viewmat, K, backend="torch")
        monkeypatch.setattr(rz, "_gsplat_failed", False)
        monkeypatch.setattr(rz, "_select_backend", lambda *a, **k: "gsplat")
        monkeypatch.setattr(rz, "_render_gsplat", broken)
        assert_images_close(render(s, viewmat, K), expected, atol=0.0)
        assert rz._gsplat_failed  # remembered: later frames go straight to the fallback
        with pytest.raises(RuntimeError, match="no CUDA"):
            render(s, viewmat, K, backend="gsplat")


def test_numpy_cameras_and_dtype():
    s = make_scene(60, 8, torch.float64)
    viewmat, K = make_camera(torch.float64)
    a = render(s, viewmat.numpy(), K.numpy(), backend="torch")
    b = render(s, viewmat, K, backend="torch")
    assert a.rgb.dtype == torch.float64 and a.alpha.shape == (H, W) and a.depth.shape == (H, W)
    assert_images_close(a, b, atol=0.0)
    with pytest.raises(ValueError):
        rasterize(s["means"], s["quats"], s["scales"], s["opacities"], viewmat=viewmat, K=K,
                  width=W, height=H)
    with pytest.raises(ValueError):
        rasterize(s["means"], s["quats"][:5], s["scales"], s["opacities"], s["colors"],
                  viewmat=viewmat, K=K, width=W, height=H)


# ---------------------------------------------------------------------------------------------
# (e) SH frames
# ---------------------------------------------------------------------------------------------


def _quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


@pytest.mark.parametrize("backend", ["torch", pytest.param("fast", marks=needs_numba)])
def test_sh_frames_follow_a_rigid_motion(backend):
    """Rotate Gaussians (means, shapes, SH frames) and camera together: same image. Without the
    frames the view-dependent colour would not follow, and the image changes."""
    dtype = torch.float64
    s = make_scene(80, 9, dtype, sh_degree=3)
    s["sh"][:, 0] = 0.5  # keep colours away from the clamp at 0
    viewmat, K = make_camera(dtype)
    rot = Rotation.from_euler("xyz", [35, -60, 20], degrees=True)
    Q = torch.as_tensor(rot.as_matrix(), dtype=dtype)
    qx, qy, qz, qw = rot.as_quat()
    q = torch.tensor([qw, qx, qy, qz], dtype=dtype)
    moved = dict(s, means=s["means"] @ Q.T, quats=_quat_mul(q.expand(80, 4), s["quats"]))
    Q4 = torch.eye(4, dtype=dtype)
    Q4[:3, :3] = Q
    viewmat_moved = viewmat @ Q4.T  # world' -> world -> camera
    frames = Q.expand(80, 3, 3)
    with torch.no_grad():
        a = render(s, viewmat, K, backend=backend)
        b = render(moved, viewmat_moved, K, sh_frames=frames, backend=backend)
        c = render(moved, viewmat_moved, K, backend=backend)
    assert_images_close(b, a, atol=1e-5)
    assert float((c.rgb - a.rgb).abs().max()) > 1e-2


def test_sh_frames_rotate_view_direction_per_gaussian():
    dtype = torch.float64
    g = torch.Generator().manual_seed(10)
    means = torch.randn(30, 3, generator=g, dtype=dtype) * 0.1
    sh = torch.randn(30, 16, 3, generator=g, dtype=dtype)
    frames = torch.as_tensor(Rotation.random(30, random_state=10).as_matrix(), dtype=dtype)
    viewmat, _ = make_camera(dtype)
    rgb = rz.gaussian_colors(means, viewmat, sh=sh, sh_frames=frames)
    campos = torch.inverse(viewmat)[:3, 3]
    local = torch.stack([frames[i].T @ (means[i] - campos) for i in range(30)])
    expected = torch.clamp_min(_spherical_harmonics(3, local, sh) + 0.5, 0)
    torch.testing.assert_close(rgb, expected)


# ---------------------------------------------------------------------------------------------
# (f) degenerate inputs
# ---------------------------------------------------------------------------------------------


def _degenerate_scenes():
    empty = {k: v[:0] for k, v in make_scene(10, 11).items()}
    behind = make_scene(30, 12)
    behind["means"] = behind["means"] * 0.1 + torch.tensor([0.4, 0.2, 1.2])  # behind the camera
    outside = make_scene(30, 13)
    # In front of the camera (z ~ 1 m) but ~2 m to its right: ~90 px past the image edge.
    outside["means"] = outside["means"] * 0.1 + torch.tensor([1.88, 0.0, -0.68])
    faint = make_scene(30, 14)
    faint["opacities"] = torch.full((30,), 0.001)
    return {"empty": empty, "behind": behind, "outside": outside, "faint": faint}


@pytest.mark.parametrize("backend", ["torch", pytest.param("fast", marks=needs_numba)])
@pytest.mark.parametrize("case", ["empty", "behind", "outside", "faint"])
def test_degenerate_inputs_give_background(case, backend):
    s = _degenerate_scenes()[case]
    viewmat, K = make_camera()
    bg = torch.tensor([0.1, 0.2, 0.3])
    out = render(s, viewmat, K, background=bg, backend=backend)
    torch.testing.assert_close(out.rgb, bg.expand(H, W, 3))
    assert float(out.alpha.abs().max()) == 0.0 and float(out.depth.abs().max()) == 0.0


def test_degenerate_inputs_backward():
    s = _degenerate_scenes()["behind"]
    s = {k: v.requires_grad_() for k, v in s.items()}
    viewmat, K = make_camera()
    out = render(s, viewmat, K, background=torch.ones(3))
    out.rgb.sum().backward()
    assert all(float(s[k].grad.abs().max()) == 0 for k in ("means", "quats", "scales"))
    assert all(torch.isfinite(s[k].grad).all() for k in s)


# ---------------------------------------------------------------------------------------------
# gsplat CUDA path
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gsplat_cuda_matches_torch_path():
    s = {k: v.cuda() for k, v in make_scene(300, 15, sh_degree=3, dense=50).items()}
    viewmat, K = (t.cuda() for t in make_camera())
    bg = torch.tensor([0.5, 0.5, 0.5], device="cuda")
    with torch.no_grad():
        a = render(s, viewmat, K, background=bg, backend="gsplat")
        b = render(s, viewmat, K, background=bg, backend="torch")
        c = render(s, viewmat, K, background=bg)  # auto -> gsplat on CUDA
    assert a.rgb.is_cuda and b.rgb.is_cuda
    assert_images_close(a, b, atol=2e-3)  # gsplat uses fast-math exp
    assert_images_close(c, a, atol=0.0)
    # The torch path also trains on CUDA tensors.
    s["means"].requires_grad_(True)
    render(s, viewmat, K, backend="torch").rgb.sum().backward()
    assert s["means"].grad.is_cuda
