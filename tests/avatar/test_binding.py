"""Binding maths: exact closest points, nearest-triangle binding, GaussianAvatars' triangle frames."""

from __future__ import annotations

import numpy as np
import pytest

from pointillist.avatar import binding as binding_module
from pointillist.avatar.binding import bind_to_nearest_triangles, closest_point_barycentrics, triangle_frames

from .synthetic import icosphere


def _brute_force_distance(points: np.ndarray, tri: np.ndarray, steps: int = 120) -> np.ndarray:
    """Distance to a dense barycentric grid over each triangle (an upper bound within grid spacing)."""
    u, v = np.meshgrid(np.linspace(0, 1, steps + 1), np.linspace(0, 1, steps + 1))
    keep = u + v <= 1 + 1e-12
    grid = np.stack([u[keep], v[keep], 1 - u[keep] - v[keep]], 1).clip(0, 1)
    samples = np.einsum("gk,nkc->ngc", grid, tri)
    return np.linalg.norm(samples - points[:, None], axis=2).min(1)


def test_closest_point_matches_brute_force_in_every_region():
    rng = np.random.default_rng(3)
    tri = rng.normal(size=(300, 3, 3))
    points = rng.normal(size=(300, 3)) * 2.0  # far enough out to land in vertex and edge regions too
    bary = closest_point_barycentrics(points, tri)
    assert bary.shape == (300, 3) and np.allclose(bary.sum(1), 1) and (bary >= 0).all() and (bary <= 1).all()
    found = np.linalg.norm(np.einsum("nk,nkc->nc", bary, tri) - points, axis=1)
    brute = _brute_force_distance(points, tri)
    assert (found <= brute + 1e-12).all()  # never worse than any sampled point
    edge = np.linalg.norm(tri[:, 1] - tri[:, 0], axis=1).max()
    assert (brute - found).max() < 2 * edge / 120  # and within the grid spacing of the best one
    regions = {"vertex": ((bary == 1).sum(1) == 1), "edge": ((bary == 0).sum(1) == 1), "face": (bary > 0).all(1)}
    assert all(mask.sum() > 10 for mask in regions.values()), {k: int(m.sum()) for k, m in regions.items()}


def test_closest_point_known_cases():
    tri = np.array([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]] * 5)
    points = np.array([[0.2, 0.3, 5.0],  # above the face: its projection
                       [-1, -1, 0],  # beyond vertex A
                       [2, -0.5, 0],  # beyond vertex B
                       [0.5, -1, 1],  # outside edge AB
                       [1, 1, 0]])  # outside edge BC, at its middle
    expected = [[0.5, 0.2, 0.3], [1, 0, 0], [0, 1, 0], [0.5, 0.5, 0], [0, 0.5, 0.5]]
    np.testing.assert_allclose(closest_point_barycentrics(points, tri), expected, atol=1e-12)


def test_closest_point_on_degenerate_triangles():
    tri = np.array([[[0.0, 0, 0], [2, 0, 0], [1, 0, 0]],  # collinear
                    [[1.0, 1, 1], [1, 1, 1], [1, 1, 1]]])  # a single point
    points = np.array([[1.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    bary = closest_point_barycentrics(points, tri)
    assert np.isfinite(bary).all() and np.allclose(bary.sum(1), 1)
    np.testing.assert_allclose(np.einsum("nk,nkc->nc", bary, tri), [[1.5, 0, 0], [1, 1, 1]], atol=1e-12)


def test_bind_to_nearest_triangles_is_the_true_nearest(monkeypatch):
    verts, faces = icosphere(2)
    verts = verts * np.array([0.08, 0.1, 0.09])
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 3)) * 0.06
    monkeypatch.setattr(binding_module, "CHUNK", 128)  # exercise chunking
    binding = bind_to_nearest_triangles(points, verts, faces)
    assert binding.triangles.dtype == np.int64 and binding.barycentrics.dtype == np.float32
    tri = verts[faces]
    # exhaustive: exact distance to every triangle
    all_d = np.stack([np.linalg.norm(np.einsum("nk,nkc->nc", closest_point_barycentrics(points, np.repeat(tri[f:f + 1], len(points), 0)),
                                                         np.repeat(tri[f:f + 1], len(points), 0)) - points, axis=1)
                      for f in range(len(faces))], 1)
    chosen = np.linalg.norm(np.einsum("nk,nkc->nc", binding.barycentrics.astype(np.float64), tri[binding.triangles]) - points, axis=1)
    np.testing.assert_allclose(chosen, all_d.min(1), atol=1e-6)
    # restricted vocabulary
    allowed = np.zeros(len(faces), bool)
    allowed[::7] = True
    restricted = bind_to_nearest_triangles(points, verts, faces, allowed=allowed)
    assert allowed[restricted.triangles].all()
    with pytest.raises(ValueError, match="no triangles"):
        bind_to_nearest_triangles(points, verts, faces, allowed=np.zeros(len(faces), bool))


def _ga_face_orientation(verts: np.ndarray, faces: np.ndarray):
    """GaussianAvatars' compute_face_orientation, transcribed term by term in torch as a reference."""
    import torch

    v = torch.as_tensor(verts, dtype=torch.float64)
    f = torch.as_tensor(faces)
    v0, v1, v2 = v[..., f[:, 0], :], v[..., f[:, 1], :], v[..., f[:, 2], :]

    def length(x):
        return torch.sqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=1e-20))

    a0 = (v1 - v0) / length(v1 - v0)
    n = torch.cross(a0, v2 - v0, dim=-1)
    a1 = n / length(n)
    m = torch.cross(a1, a0, dim=-1)
    a2 = -m / length(m)
    orientation = torch.cat([a0[..., None], a1[..., None], a2[..., None]], dim=-1)
    scale = (length(v1 - v0) + (a2 * (v2 - v0)).sum(-1, keepdim=True).abs()) / 2
    return orientation.numpy(), scale[..., 0].numpy()


def test_triangle_frames_follow_gaussian_avatars():
    verts, faces = icosphere(1)
    rng = np.random.default_rng(2)
    verts = verts + rng.normal(0, 0.05, verts.shape)
    centres, R, s = triangle_frames(verts, faces)
    R_ref, s_ref = _ga_face_orientation(verts, faces)
    np.testing.assert_allclose(R, R_ref, atol=1e-12)
    np.testing.assert_allclose(s, s_ref, atol=1e-12)
    np.testing.assert_allclose(centres, verts[faces].mean(1), atol=1e-15)
    np.testing.assert_allclose(R.transpose(0, 2, 1) @ R, np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    # a hand-checked triangle: first edge along +X, normal +Z, a2 = -(Z x X) = -Y
    c, R1, s1 = triangle_frames(np.array([[0.0, 0, 0], [2, 0, 0], [0.5, 1, 0]]), np.array([[0, 1, 2]]))
    np.testing.assert_allclose(R1[0], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-15)
    np.testing.assert_allclose(s1, [(2 + 1) / 2])
    # batched vertices (B, V, 3) give batched frames
    batch = np.stack([verts, verts * 2])
    cb, Rb, sb = triangle_frames(batch, faces)
    assert cb.shape == (2, len(faces), 3) and Rb.shape == (2, len(faces), 3, 3) and sb.shape == (2, len(faces))
    np.testing.assert_allclose(Rb[1], R, atol=1e-12)
    np.testing.assert_allclose(sb[1], 2 * s, atol=1e-12)
