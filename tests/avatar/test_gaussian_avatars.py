"""GaussianAvatars format: round trip through triangle-local storage on a synthetic head model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from plyfile import PlyData

from pointillist.avatar.gaussian_avatars import GA_EXPR_PARAMS, GA_SHAPE_PARAMS, read_gaussian_avatars, write_gaussian_avatars
from pointillist.avatar.gaussians import AvatarFormatError, Binding, HeadIdentity
from pointillist.head.model import HeadModel

from .synthetic import make_bound_avatar, make_head_data, write_inria_ply


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(*q.shape[:-1], 3, 3)


@pytest.mark.parametrize("with_offsets", [True, False])
def test_round_trip(synthetic_head, tmp_path, with_offsets):
    avatar = make_bound_avatar(synthetic_head, n=400, with_offsets=with_offsets)
    ply_path, npz_path = write_gaussian_avatars(avatar, tmp_path / "ga", synthetic_head)
    assert sorted(p.name for p in (tmp_path / "ga").iterdir()) == ["flame_param.npz", "point_cloud.ply"]
    back = read_gaussian_avatars(ply_path, npz_path, synthetic_head)
    a, b = avatar.gaussians, back.gaussians
    np.testing.assert_allclose(b.means, a.means, atol=1e-5)
    np.testing.assert_allclose(b.scales(), a.scales(), rtol=1e-5)
    qa, qb = a.normalized_quats(), b.normalized_quats()
    np.testing.assert_allclose(qb * np.sign((qa * qb).sum(1, keepdims=True)), qa, atol=1e-5)
    np.testing.assert_array_equal(b.colors(), a.colors())
    np.testing.assert_array_equal(b.opacities(), a.opacities())
    np.testing.assert_array_equal(b.sh_rest, a.sh_rest)
    np.testing.assert_array_equal(back.binding.triangles, avatar.binding.triangles)
    np.testing.assert_allclose(back.binding.barycentrics, avatar.binding.barycentrics, atol=1e-4)
    assert back.identity.model_id == synthetic_head.model_id
    np.testing.assert_allclose(back.identity.shape, avatar.identity.shape, atol=1e-7)
    if with_offsets:
        np.testing.assert_array_equal(back.identity.vertex_offsets, avatar.identity.vertex_offsets)
    else:
        assert back.identity.vertex_offsets is None  # all-zero static_offset means "none"
    assert back.meta["imported_from"] == "GaussianAvatars" and back.meta["ga_timesteps"] == 1


def _ga_world(vertex, verts: np.ndarray, faces: np.ndarray):
    """GaussianAvatars' get_xyz / get_scaling / get_rotation, transcribed in torch from the GA sources."""
    v = torch.as_tensor(verts, dtype=torch.float64)
    f = torch.as_tensor(faces)
    v0, v1, v2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]

    def safe_normalize(x):
        return x / torch.sqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=1e-20))

    a0 = safe_normalize(v1 - v0)
    a1 = safe_normalize(torch.cross(a0, v2 - v0, dim=-1))
    a2 = -safe_normalize(torch.cross(a1, a0, dim=-1))
    orien = torch.cat([a0[..., None], a1[..., None], a2[..., None]], dim=-1)
    scaling = ((v1 - v0).norm(dim=-1, keepdim=True) + (a2 * (v2 - v0)).sum(-1, keepdim=True).abs()) / 2
    center = (v0 + v1 + v2) / 3
    binding = torch.as_tensor(np.asarray(vertex["binding_0"]).astype(np.int64))
    col = lambda *names: torch.as_tensor(np.stack([np.asarray(vertex[n], np.float64) for n in names], 1))  # noqa: E731
    xyz = torch.bmm(orien[binding], col("x", "y", "z")[..., None]).squeeze(-1) * scaling[binding] + center[binding]
    scale = torch.exp(col("scale_0", "scale_1", "scale_2")) * scaling[binding]
    R_local = torch.as_tensor(_quat_to_matrix(col("rot_0", "rot_1", "rot_2", "rot_3").numpy()))
    return xyz.numpy(), scale.numpy(), (orien[binding] @ R_local).numpy()  # quat(R) ⊗ q  <=>  R @ R_q


def test_files_read_independently_and_pose_like_gaussian_avatars(synthetic_head, tmp_path):
    avatar = make_bound_avatar(synthetic_head, n=60)
    ply_path, npz_path = write_gaussian_avatars(avatar, tmp_path / "ga", synthetic_head)
    vertex = PlyData.read(str(ply_path))["vertex"]
    names = [p.name for p in vertex.properties]
    assert names[:6] == ["x", "y", "z", "nx", "ny", "nz"] and names[-5:] == ["rot_0", "rot_1", "rot_2", "rot_3", "binding_0"]
    assert "bary_0" not in names and vertex["binding_0"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(vertex["binding_0"].astype(np.int64), avatar.binding.triangles)
    with np.load(npz_path, allow_pickle=False) as params:
        V = synthetic_head.num_vertices
        shapes = {k: params[k].shape for k in params.files}
        assert shapes == {"shape": (GA_SHAPE_PARAMS,), "expr": (1, GA_EXPR_PARAMS), "rotation": (1, 3), "neck_pose": (1, 3),
                          "jaw_pose": (1, 3), "eyes_pose": (1, 6), "translation": (1, 3), "static_offset": (1, V, 3),
                          "dynamic_offset": (1, V, 3)}
        assert all(params[k].dtype == np.float32 for k in params.files)
        np.testing.assert_array_equal(params["shape"][:synthetic_head.num_shape], avatar.identity.shape)
        assert not params["shape"][synthetic_head.num_shape:].any() and not params["expr"].any()
        np.testing.assert_array_equal(params["static_offset"][0], avatar.identity.vertex_offsets)
        offsets = params["static_offset"]
    # GA's own posing, on GA's v_shaped at rest (template + shape + static_offset), reproduces our Gaussians
    with torch.no_grad():
        verts = synthetic_head.identity_vertices(torch.as_tensor(avatar.identity.shape)[None], torch.as_tensor(offsets))[0].double().numpy()
    xyz, scale, R = _ga_world(vertex, verts, synthetic_head.data.faces)
    g = avatar.gaussians
    np.testing.assert_allclose(xyz, g.means, atol=1e-5)
    np.testing.assert_allclose(scale, g.scales(), rtol=1e-5)
    np.testing.assert_allclose(R, _quat_to_matrix(g.quats.astype(np.float64)), atol=1e-5)


def test_static_offset_variants(synthetic_head, tmp_path):
    avatar = make_bound_avatar(synthetic_head, n=30)
    ply_path, npz_path = write_gaussian_avatars(avatar, tmp_path / "ga", synthetic_head)
    with np.load(npz_path) as npz:
        params = {k: npz[k] for k in npz.files}
    V = synthetic_head.num_vertices
    # (V, 3) instead of (1, V, 3); shorter (fitted without the teeth vertices: zero-padded like GA does)
    for offsets in (params["static_offset"][0], params["static_offset"][:, : V - 20]):
        np.savez(tmp_path / "p.npz", **{**params, "static_offset": offsets})
        back = read_gaussian_avatars(ply_path, tmp_path / "p.npz", synthetic_head)
        expected = np.asarray(offsets).reshape(-1, 3)
        np.testing.assert_array_equal(back.identity.vertex_offsets[: len(expected)], expected)
        assert not back.identity.vertex_offsets[len(expected):].any()
    for offsets, message in ((np.zeros((1, V + 1, 3), np.float32), f"{V + 1} vertices but head model"),
                             (np.zeros((1, V, 2), np.float32), "must be \\(1, V, 3\\)"),
                             (np.full((1, V, 3), np.nan, np.float32), "'static_offset' contains NaN")):
        np.savez(tmp_path / "p.npz", **{**params, "static_offset": offsets})
        with pytest.raises(AvatarFormatError, match=message):
            read_gaussian_avatars(ply_path, tmp_path / "p.npz", synthetic_head)


def test_errors_are_explained(synthetic_head, tmp_path):
    avatar = make_bound_avatar(synthetic_head, n=30)
    ply_path, npz_path = write_gaussian_avatars(avatar, tmp_path / "ga", synthetic_head)
    small = HeadModel(make_head_data(seed=1, subdivisions=2))  # 320 triangles: binding_0 reaches further
    assert avatar.binding.triangles.max() >= small.num_faces
    with pytest.raises(AvatarFormatError, match=f"has {small.num_faces} triangles; GaussianAvatars binds to FLAME with teeth \\(10,144"):
        read_gaussian_avatars(ply_path, npz_path, small)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(AvatarFormatError, match="unreadable flame_param.npz"):
        read_gaussian_avatars(ply_path, tmp_path / "bad.npz", synthetic_head)
    with pytest.raises(AvatarFormatError, match="flame_param.npz not found"):
        read_gaussian_avatars(ply_path, tmp_path / "missing.npz", synthetic_head)
    np.savez(tmp_path / "noshape.npz", expr=np.zeros((1, 100), np.float32))
    with pytest.raises(AvatarFormatError, match="missing key 'shape'"):
        read_gaussian_avatars(ply_path, tmp_path / "noshape.npz", synthetic_head)
    np.savez(tmp_path / "wide.npz", shape=np.ones(300, np.float32))
    with pytest.raises(AvatarFormatError, match=f"uses 300 coefficients but head model .* has {synthetic_head.num_shape}"):
        read_gaussian_avatars(ply_path, tmp_path / "wide.npz", synthetic_head)
    write_inria_ply(tmp_path / "plain.ply", 5)
    with pytest.raises(AvatarFormatError, match="no 'binding_0' property"):
        read_gaussian_avatars(tmp_path / "plain.ply", npz_path, synthetic_head)
    # writing
    with pytest.raises(AvatarFormatError, match="'binding'"):
        write_gaussian_avatars(replace(avatar, binding=None), tmp_path / "w", synthetic_head)
    with pytest.raises(AvatarFormatError, match="'identity.model_id'"):
        write_gaussian_avatars(replace(avatar, identity=HeadIdentity("other", avatar.identity.shape)), tmp_path / "w", synthetic_head)
    far = Binding(np.full(avatar.gaussians.num, synthetic_head.num_faces), avatar.binding.barycentrics)
    with pytest.raises(AvatarFormatError, match="out of range"):
        write_gaussian_avatars(replace(avatar, binding=far), tmp_path / "w", synthetic_head)
    assert not (tmp_path / "w").exists()


def test_unbound_identity_writes_zeros(synthetic_head, tmp_path):
    avatar = replace(make_bound_avatar(synthetic_head, n=20), identity=None)  # canonical mesh = the template
    _, npz_path = write_gaussian_avatars(avatar, tmp_path / "ga", synthetic_head)
    with np.load(npz_path) as params:
        assert not params["shape"].any() and not params["static_offset"].any()


def test_failed_write_leaves_the_old_pair(synthetic_head, tmp_path, monkeypatch):
    from pointillist.avatar import ply as ply_module

    out = tmp_path / "ga"
    write_gaussian_avatars(make_bound_avatar(synthetic_head, n=10, seed=1), out, synthetic_head)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_fsync, calls = ply_module.os.fsync, []

    def flaky_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # while writing the second file, after the first is complete
            raise OSError("disk full")
        return real_fsync(fd)

    monkeypatch.setattr(ply_module.os, "fsync", flaky_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_gaussian_avatars(make_bound_avatar(synthetic_head, n=25, seed=2), out, synthetic_head)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files, old pair intact
