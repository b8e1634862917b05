"""The render bridge's maths without Blender: film requests, cameras, rotation skinning, registered attributes.

Oracles: the backend's torch LBS (`orthonormalize`, `matrix_to_quaternion`), scipy rotations, the PLY reader's
SH layout, and projecting the same points through OpenGL matrices and through the backend camera.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pointillist.render.colour import srgb_to_linear
from pointillist.render.film import FAR_DEPTH

from addon import render_bridge as rb
from addon import rig_build


def test_requests_ask_for_blenders_film_and_an_empty_frame_is_the_film_alone():
    view = rb.View(np.eye(4), np.array([[100.0, 0, 2], [0, 100.0, 1], [0, 0, 1]]), 4, 2, 0.1, 10.0)
    transparent = rb.render_request(view, [], None, want_depth=True)
    assert transparent.raw and transparent.film and transparent.transparent and not transparent.background.any()
    opaque = rb.render_request(view, [], np.float32([0.5, 0.5, 0.5]), want_depth=False)
    assert opaque.film and not opaque.transparent
    rgba, depth = rb.empty_film(4, 2, np.float32([0.5, 0.2, 0.0]), want_depth=True)
    np.testing.assert_allclose(rgba[..., :3], np.broadcast_to(srgb_to_linear([0.5, 0.2, 0.0]), (2, 4, 3)), atol=1e-7)
    assert (rgba[..., 3] == 1).all() and (depth == rb.BACKGROUND_DEPTH).all()
    clear, none = rb.empty_film(4, 2, None, want_depth=False)
    assert not clear.any() and none is None
    rows = rb.film_pixels(np.frombuffer(rgba.tobytes(), np.float32).reshape(2, 4, 4))
    assert rows.shape == (8, 4) and rows.dtype == np.float32
    assert rb.BACKGROUND_DEPTH == FAR_DEPTH  # the add-on's empty frames and the backend's film agree


def test_render_region_border_follows_blender():
    assert rb.render_region(1920, 1080, 50, None) == rb.Region(960, 540, 0, 0, 960, 540)
    r = rb.render_region(200, 100, 100, (0.1, 0.55, 0.2, 0.9))
    assert (r.x0, r.width, r.y0, r.height) == (20, 90, 10, 70)  # y measured from the bottom in Blender
    with pytest.raises(ValueError, match="border"):
        rb.render_region(100, 100, 100, (0.5, 0.501, 0.2, 0.9))


def _gl_projection(K, w, h, near, far, ortho):
    """OpenGL projection of the same camera (Blender's window matrix layout)."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    P = np.zeros((4, 4))
    P[0, 0], P[1, 1] = 2 * fx / w, 2 * fy / h
    if ortho:
        P[0, 3], P[1, 3] = 2 * cx / w - 1, 1 - 2 * cy / h
        P[2, 2], P[2, 3], P[3, 3] = -2 / (far - near), -(far + near) / (far - near), 1.0
    else:
        P[0, 2], P[1, 2] = 1 - 2 * cx / w, 2 * cy / h - 1
        P[2, 2], P[2, 3], P[3, 2] = -(far + near) / (far - near), -2 * far * near / (far - near), -1.0
    return P


@pytest.mark.parametrize("ortho", [False, True])
def test_view_from_matrices_projects_like_opengl(ortho):
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(1)
    cam_world = np.eye(4)
    cam_world[:3, :3] = Rotation.from_euler("xyz", [80, 5, 10], degrees=True).as_matrix()
    cam_world[:3, 3] = (0.1, -1.0, 0.2)
    view_gl = np.linalg.inv(cam_world)
    K = np.array([[300.0 if not ortho else 400.0, 0, 70.0], [0, 310.0, 45.0], [0, 0, 1]])
    P = _gl_projection(K, 160, 90, 0.05, 20.0, ortho)
    view = rb.view_from_matrices(view_gl, P, 160, 90)
    assert view.ortho is ortho and view.near == pytest.approx(0.05) and view.far == pytest.approx(20.0)
    pts = (cam_world[:3, :3] @ np.c_[rng.uniform(-0.2, 0.2, (20, 2)), -rng.uniform(0.5, 2, 20)].T).T + cam_world[:3, 3]
    clip = (P @ view_gl @ np.c_[pts, np.ones(20)].T).T
    ndc = clip[:, :2] / clip[:, 3:]
    want = np.c_[(ndc[:, 0] + 1) * 80, (1 - ndc[:, 1]) * 45]
    cam = pts @ view.viewmat[:3, :3].T + view.viewmat[:3, 3]
    got = (cam[:, :2] if ortho else cam[:, :2] / cam[:, 2:]) @ view.K[:2, :2].T + view.K[:2, 2]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_orthographic_camera_maps_ortho_scale_to_the_fitted_side():
    cam = rb.CameraParams(matrix_world=np.eye(4), kind="ORTHO", ortho_scale=2.0, shift_x=0.25)
    view = rb.view_from_camera(cam, rb.render_region(200, 100, 100, None))
    assert view.ortho and view.K[0, 0] == pytest.approx(100.0) and view.K[1, 1] == pytest.approx(100.0)
    assert view.K[0, 2] == pytest.approx(100.0 - 0.25 * 200)
    cropped = rb.view_from_camera(cam, rb.render_region(200, 100, 100, (0.5, 1.0, 0.0, 0.5)))
    assert (cropped.width, cropped.height) == (100, 50)
    assert cropped.K[0, 2] == pytest.approx(view.K[0, 2] - 100) and cropped.K[1, 2] == pytest.approx(view.K[1, 2] - 50)
    with pytest.raises(ValueError, match="panoramic"):
        rb.view_from_camera(rb.CameraParams(matrix_world=np.eye(4), kind="PANO"), rb.render_region(8, 8, 100, None))


def test_matrix_to_quat_matches_scipy():
    from scipy.spatial.transform import Rotation

    rots = Rotation.random(200, random_state=3)
    q = rb.matrix_to_quat(rots.as_matrix())
    want = rots.as_quat()[:, [3, 0, 1, 2]]
    np.testing.assert_allclose(np.abs(np.einsum("ni,ni->n", q, want)), 1.0, atol=1e-9)


def test_skinning_matches_the_backend_lbs():
    """Blended bone rotations, polar-orthonormalised, times the rest rotation: as `animate()` does."""
    import torch
    from pointillist.head.lbs import (
        matrix_to_quaternion,
        orthonormalize,
        quaternion_multiply,
    )
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(7)
    n, j = 300, 5
    weights = rng.dirichlet(np.ones(j) * 0.5, n).astype(np.float32)
    weights[:5] = 0.0  # unweighted points keep their rest rotation
    bones = np.tile(np.eye(4), (j, 1, 1))
    bones[:, :3, :3] = Rotation.random(j, random_state=4).as_matrix() * 0.3 + np.eye(3) * 0.7
    bones[:, :3, :3] = np.stack([Rotation.from_matrix(b).as_matrix() for b in bones[:, :3, :3]])
    rest = rng.normal(size=(n, 4)).astype(np.float32)
    obj_rot = Rotation.from_euler("z", 30, degrees=True).as_matrix()
    got = rb.skin_rotations(weights * 3.0, bones, rest, obj_rot)  # unnormalised weights: Blender normalises

    blended = torch.einsum("nj,jab->nab", torch.from_numpy(weights).double(), torch.from_numpy(bones[:, :3, :3]))
    skin = matrix_to_quaternion(orthonormalize(blended) @ torch.from_numpy(obj_rot))
    want = quaternion_multiply(skin, torch.from_numpy(rest).double()).numpy()
    want[:5] = rig_build.quat_multiply(rb.matrix_to_quat(obj_rot), rest[:5])
    assert rb.quats_angle(got, want).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(rest, axis=1), rtol=1e-5)
    static = rb.skin_rotations(None, None, rest, np.eye(3))
    np.testing.assert_allclose(static, rest, atol=1e-7)


def test_rigid_part_refuses_what_a_gaussian_cannot_follow():
    M = np.diag([2.0, 2.0, 2.0, 1.0])
    R, s = rb.rigid_part(M)
    np.testing.assert_allclose(R, np.eye(3), atol=1e-12)
    assert s == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unevenly"):
        rb.rigid_part(np.diag([1.0, 2.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="mirrored"):
        rb.rigid_part(np.diag([-1.0, 1.0, 1.0, 1.0]))


def test_static_attributes_read_the_importer_layout():
    """SH, opacities, scales and head-space rest rotations from the point attributes the importer writes."""
    from pointillist.avatar.gaussians import Gaussians

    rng = np.random.default_rng(2)
    n = 50
    g = Gaussians(means=rng.normal(size=(n, 3)).astype(np.float32),
                  log_scales=rng.normal(-4, 0.3, (n, 3)).astype(np.float32),
                  quats=rng.normal(size=(n, 4)).astype(np.float32), opacity_logits=rng.normal(size=n).astype(np.float32),
                  sh_dc=rng.normal(size=(n, 3)).astype(np.float32), sh_rest=rng.normal(size=(n, 8, 3)).astype(np.float32))
    floats = rig_build.splat_arrays(g).floats
    attrs = rb.static_attributes(floats, scale=2.0)
    np.testing.assert_allclose(attrs.sh[:, 0], g.sh_dc)
    np.testing.assert_allclose(attrs.sh[:, 1:], g.sh_rest)
    np.testing.assert_allclose(attrs.opacities, g.opacities(), rtol=1e-6)
    np.testing.assert_allclose(attrs.scales, g.scales() * 2.0, rtol=1e-6)
    assert rb.quats_angle(attrs.rest_quats, g.quats).max() < 1e-5  # back in head space, where SH live
    edited = dict(floats, opacity=floats["opacity"] + 0.1)
    assert rb.object_id(attrs) == rb.object_id(rb.static_attributes(floats, 2.0))
    assert rb.object_id(attrs) != rb.object_id(rb.static_attributes(edited, 2.0))
    with pytest.raises(ValueError, match="f_rest"):
        rb.rest_count([*floats, "f_rest_45"])


def test_render_request_encodes_through_the_backend_format():
    from pointillist.server.render_payload import (
        FrameObject,
        encode_render,
        parse_render,
    )

    view = rb.View(np.eye(4), np.array([[100.0, 0, 8], [0, 100.0, 8], [0, 0, 1]]), 16, 16, 0.1, 10.0, ortho=True)
    obj = FrameObject("bl-x", np.zeros((2, 3), np.float32), np.tile(np.float32([1, 0, 0, 0]), (2, 1)))
    req = parse_render(encode_render(rb.render_request(view, [obj], None, want_depth=True)))
    assert req.ortho and req.raw and req.want_depth and not req.background.any()
    small = rb.scaled_view(view, *rb.reduced_size(16, 16, navigating=True))
    assert (small.width, small.height) == (5, 5) and small.K[0, 0] == pytest.approx(100 * 5 / 16)
