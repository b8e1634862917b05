"""GaussianAvatars round trip on a synthetic FLAME file with GaussianAvatars' teeth (10,144 triangles)."""

from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData

from pointillist.avatar.binding import closest_point_barycentrics, triangle_frames
from pointillist.avatar.gaussian_avatars import read_gaussian_avatars, write_gaussian_avatars
from pointillist.avatar.gaussians import Avatar, AvatarFormatError, Binding, Gaussians, HeadIdentity
from pointillist.head.flame import convert_flame
from pointillist.head.model import HeadModel
from tests.head.flame_fixture import flame_arrays, write_chumpy_pickle


@pytest.fixture(scope="module")
def flame_head(tmp_path_factory) -> HeadModel:
    pkl = write_chumpy_pickle(tmp_path_factory.mktemp("ga") / "generic_model.pkl", flame_arrays(seed=3))
    return HeadModel(convert_flame(pkl, n_shape=300, n_expr=100))


def make_avatar(head: HeadModel, n: int = 500) -> Avatar:
    rng = np.random.default_rng(4)
    shape = (rng.normal(size=300) * 0.5).astype(np.float32)
    offsets = rng.normal(0, 0.001, (head.num_vertices, 3)).astype(np.float32)
    import torch

    verts = head.identity_vertices(torch.as_tensor(shape)[None], torch.as_tensor(offsets)[None])[0].detach().double().numpy()
    tri = rng.integers(0, head.num_faces, n)
    corners = verts[head.data.faces[tri]]
    means = (corners * rng.dirichlet(np.ones(3), n)[..., None]).sum(1) + rng.normal(0, 0.002, (n, 3))
    q = rng.normal(size=(n, 4))
    g = Gaussians(means=means.astype(np.float32), log_scales=rng.normal(-6, 0.5, (n, 3)).astype(np.float32),
                  quats=(q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
                  opacity_logits=rng.normal(size=n).astype(np.float32), sh_dc=rng.normal(size=(n, 3)).astype(np.float32),
                  sh_rest=rng.normal(0, 0.1, (n, 3, 3)).astype(np.float32))
    return Avatar(gaussians=g, binding=Binding(tri.astype(np.int64), closest_point_barycentrics(means, corners).astype(np.float32)),
                  identity=HeadIdentity(head.model_id, shape, offsets))


def test_round_trip(flame_head, tmp_path):
    assert flame_head.num_faces == 10144  # FLAME + GaussianAvatars' teeth
    avatar = make_avatar(flame_head)
    ply_path, npz_path = write_gaussian_avatars(avatar, tmp_path / "ga", flame_head)
    back = read_gaussian_avatars(ply_path, npz_path, flame_head)
    a, b = avatar.gaussians, back.gaussians
    np.testing.assert_allclose(b.means, a.means, atol=2e-6)
    np.testing.assert_allclose(b.log_scales, a.log_scales, atol=1e-5)
    sign = np.sign((a.quats * b.quats).sum(1, keepdims=True))
    np.testing.assert_allclose(b.quats * sign, a.quats, atol=1e-5)
    for field in ("opacity_logits", "sh_dc", "sh_rest"):
        np.testing.assert_array_equal(getattr(b, field), getattr(a, field))
    np.testing.assert_array_equal(back.binding.triangles, avatar.binding.triangles)
    np.testing.assert_allclose(back.binding.barycentrics, avatar.binding.barycentrics, atol=1e-4)
    np.testing.assert_allclose(back.identity.vertex_offsets, avatar.identity.vertex_offsets, atol=1e-7)


def test_files_are_gaussian_avatars_shaped(flame_head, tmp_path):
    avatar = make_avatar(flame_head, n=50)
    ply_path, npz_path = write_gaussian_avatars(avatar, tmp_path / "ga", flame_head)
    vertex = PlyData.read(str(ply_path))["vertex"]
    names = [p.name for p in vertex.properties]
    assert names[:3] == ["x", "y", "z"] and names[-1] == "binding_0" and "bary_0" not in names
    assert vertex["binding_0"].dtype.kind == "f"
    np.testing.assert_array_equal(vertex["binding_0"].astype(np.int64), avatar.binding.triangles)
    # stored positions are triangle-local: world = R local s + c on the canonical mesh
    import torch

    verts = flame_head.identity_vertices(torch.as_tensor(avatar.identity.shape)[None], torch.as_tensor(avatar.identity.vertex_offsets)[None])[0].detach().double().numpy()
    c, R, s = triangle_frames(verts, flame_head.data.faces)
    t = avatar.binding.triangles
    local = np.stack([vertex["x"], vertex["y"], vertex["z"]], 1)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", R[t], local) * s[t, None] + c[t], avatar.gaussians.means, atol=2e-6)
    with np.load(npz_path, allow_pickle=False) as params:
        assert params["shape"].shape == (300,) and params["static_offset"].shape == (1, flame_head.num_vertices, 3)
        assert params["expr"].shape == (1, 100) and params["eyes_pose"].shape == (1, 6)


def test_mismatched_head_is_explained(flame_head, head, tmp_path):
    avatar = make_avatar(flame_head, n=50)
    ply_path, npz_path = write_gaussian_avatars(avatar, tmp_path / "ga", flame_head)
    with pytest.raises(AvatarFormatError, match="10,144"):
        read_gaussian_avatars(ply_path, npz_path, head)  # our procedural head has fewer triangles
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(AvatarFormatError, match="unreadable flame_param"):
        read_gaussian_avatars(ply_path, tmp_path / "bad.npz", flame_head)
