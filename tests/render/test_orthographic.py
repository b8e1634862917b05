"""Orthographic cameras in the rasterizer and the render payload (Blender's orthographic cameras need them).

Oracles: the projection formula itself (a splat lands at u = fx x + cx whatever its depth), and a pinhole
camera far away with the focal length scaled to match, which converges to the orthographic image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pointillist.render.rasterize import project_gaussians, rasterize
from pointillist.server.render_payload import (
    FrameObject,
    RenderRequest,
    encode_render,
    parse_render,
)


def _splats(points):
    n = len(points)
    means = torch.tensor(points, dtype=torch.float32)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * n)
    scales = torch.full((n, 3), 0.01)
    return means, quats, scales, torch.full((n,), 0.9)


def test_ortho_projection_ignores_depth():
    means, quats, scales, opac = _splats([[0.05, -0.02, 1.0], [0.05, -0.02, 7.0]])
    K = torch.tensor([[400.0, 0, 64], [0, 400.0, 60], [0, 0, 1]])
    proj = project_gaussians(means, quats, scales, opac, torch.eye(4), K, 128, 128, 0.1, 10.0,
                             camera_model="ortho")
    np.testing.assert_allclose(proj.means2d.numpy(), [[84.0, 52.0], [84.0, 52.0]], atol=1e-4)
    # same size at both depths: conic = inverse of (fx sigma)^2 + eps2d
    np.testing.assert_allclose(proj.conics[0].numpy(), proj.conics[1].numpy(), rtol=1e-6)
    assert proj.conics[0, 0].item() == pytest.approx(1.0 / (16.0 + 0.3), rel=1e-5)
    persp = project_gaussians(means, quats, scales, opac, torch.eye(4), K, 128, 128, 0.1, 10.0)
    assert abs(persp.means2d[0, 0].item() - persp.means2d[1, 0].item()) > 10  # pinhole does depend on it


def test_ortho_image_is_the_limit_of_a_distant_pinhole():
    rng = np.random.default_rng(3)
    pts = rng.uniform(-0.1, 0.1, (60, 3)) + [0, 0, 2.0]
    means, quats, scales, opac = _splats(pts)
    colors = torch.tensor(rng.uniform(0, 1, (60, 3)), dtype=torch.float32)
    K = np.array([[300.0, 0, 48], [0, 300.0, 40], [0, 0, 1]])
    ortho = rasterize(means, quats, scales, opac, colors, viewmat=np.eye(4), K=K, width=96, height=80,
                      camera_model="ortho", backend="torch")
    far = 2000.0  # move the pinhole back: x/z ~ x/(far + 2), so fx scales by that distance
    view = np.eye(4)
    view[2, 3] = far
    Kp = K.copy()
    Kp[0, 0] = Kp[1, 1] = 300.0 * (far + 2.0)
    persp = rasterize(means.double(), quats.double(), scales.double(), opac.double(), colors.double(),
                      viewmat=view, K=Kp, width=96, height=80, far=1e5, backend="torch")
    assert ortho.alpha.max() > 0.5
    np.testing.assert_allclose(ortho.rgb.numpy(), persp.rgb.float().numpy(), atol=5e-3)
    hit = ortho.alpha.numpy() > 0.05
    np.testing.assert_allclose(ortho.depth.numpy()[hit], persp.depth.numpy()[hit] - far, atol=1e-3)


def test_fast_path_matches_torch_for_ortho():
    rng = np.random.default_rng(4)
    means, quats, scales, opac = _splats(rng.uniform(-0.1, 0.1, (40, 3)) + [0, 0, 1.0])
    colors = torch.tensor(rng.uniform(0, 1, (40, 3)), dtype=torch.float32)
    kw = {"viewmat": np.eye(4), "K": np.array([[250.0, 0, 32], [0, 250.0, 32], [0, 0, 1]]), "width": 64, "height": 64,
              "camera_model": "ortho"}
    try:
        fast = rasterize(means, quats, scales, opac, colors, backend="fast", **kw)
    except RuntimeError:
        pytest.skip("numba is not importable")
    ref = rasterize(means, quats, scales, opac, colors, backend="torch", **kw)
    np.testing.assert_allclose(fast.rgb.numpy(), ref.rgb.numpy(), atol=1e-5)


def test_unknown_camera_model_is_refused():
    means, quats, scales, opac = _splats([[0, 0, 1.0]])
    with pytest.raises(ValueError, match="camera_model"):
        project_gaussians(means, quats, scales, opac, torch.eye(4), torch.eye(3), 8, 8, camera_model="fisheye")


def test_payload_carries_the_ortho_flag():
    obj = FrameObject("a", np.zeros((1, 3), np.float32), np.array([[1, 0, 0, 0]], np.float32))
    for ortho in (False, True):
        req = RenderRequest(width=4, height=4, near=0.1, far=2.0, background=np.zeros(3), viewmat=np.eye(4),
                            K=np.eye(3), objects=[obj], raw=True, ortho=ortho)
        assert parse_render(encode_render(req)).ortho is ortho
