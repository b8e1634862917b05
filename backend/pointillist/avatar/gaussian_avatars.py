"""GaussianAvatars' format ↔ our canonical avatar.

GaussianAvatars stores each Gaussian in its bound triangle's local frame: position `xyz_local`, log-scale
and rotation relative to the triangle, with world values at a mesh given by
`xyz = R·xyz_local·s + c`, `scale = exp(log_scale_local)·s`, `rot = quat(R) ⊗ normalize(rot_local)`
(c = triangle centroid, R = triangle frame, s = triangle scale; `binding.triangle_frames`). Its
`flame_param.npz` holds FLAME shape, per-frame pose/expression and `static_offset`. Our canonical form is
the identity's neutral mesh (shape + static_offset, zero expression and pose), where local and world
coordinates are related by the frames of that mesh.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..head.lbs import matrix_to_quaternion, quaternion_multiply
from ..head.model import HeadModel
from .binding import closest_point_barycentrics, triangle_frames
from .gaussians import Avatar, AvatarFormatError, Binding, Gaussians, HeadIdentity, validate_avatar
from .ply import atomic_write_bytes, gaussians_to_ply_bytes, read_gaussian_ply


def _canonical_vertices(head: HeadModel, shape: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    with torch.no_grad():
        v = head.identity_vertices(torch.as_tensor(shape, dtype=torch.float32)[None],
                                   None if offsets is None else torch.as_tensor(offsets, dtype=torch.float32)[None])
    return v[0].double().numpy()


def _frame_quats(rotations: np.ndarray) -> np.ndarray:
    return matrix_to_quaternion(torch.as_tensor(rotations)).numpy()


def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return quaternion_multiply(torch.as_tensor(a), torch.as_tensor(b)).numpy()


def read_gaussian_avatars(ply_path: str | os.PathLike, flame_param_path: str | os.PathLike, head: HeadModel) -> Avatar:
    """Read `point_cloud.ply` + `flame_param.npz` into a canonical, bound avatar."""
    local, binding = read_gaussian_ply(ply_path)
    if binding is None:
        raise AvatarFormatError(f"{ply_path}: no 'binding_0' property (not a GaussianAvatars point cloud)")
    if binding.triangles.size and binding.triangles.max() >= head.num_faces:
        raise AvatarFormatError(
            f"{ply_path}: binding_0 reaches triangle {int(binding.triangles.max())} but head model {head.model_id!r} has "
            f"{head.num_faces}; GaussianAvatars binds to FLAME + teeth (10,144): convert FLAME with teeth"
        )
    try:
        with np.load(flame_param_path, allow_pickle=False) as npz:
            params = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise AvatarFormatError(f"{flame_param_path}: unreadable flame_param.npz ({exc})") from None
    if "shape" not in params:
        raise AvatarFormatError(f"{flame_param_path}: missing key 'shape'")
    shape = np.asarray(params["shape"], dtype=np.float64).reshape(-1)[: head.num_shape]
    offsets = params.get("static_offset")
    if offsets is not None:
        offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 3)
        if offsets.shape[0] != head.num_vertices:
            raise AvatarFormatError(f"{flame_param_path}: static_offset has {offsets.shape[0]} vertices, head model has {head.num_vertices}")
    for name, value in (("shape", shape), ("static_offset", offsets)):
        if value is not None and not np.isfinite(value).all():
            raise AvatarFormatError(f"{flame_param_path}: key {name!r} contains NaN or Inf")
    verts = _canonical_vertices(head, shape, offsets)
    faces = head.data.faces
    centres, rot, scale = triangle_frames(verts, faces)
    t = binding.triangles
    means = np.einsum("nij,nj->ni", rot[t], local.means.astype(np.float64)) * scale[t, None] + centres[t]
    quats = _qmul(_frame_quats(rot[t]), local.quats / np.linalg.norm(local.quats, axis=1, keepdims=True))
    gaussians = Gaussians(
        means=means.astype(np.float32),
        log_scales=(local.log_scales + np.log(scale[t])[:, None]).astype(np.float32),
        quats=quats.astype(np.float32), opacity_logits=local.opacity_logits, sh_dc=local.sh_dc, sh_rest=local.sh_rest,
    )
    bary = closest_point_barycentrics(means, verts[faces[t]]).astype(np.float32)
    avatar = Avatar(
        gaussians=gaussians, binding=Binding(triangles=t, barycentrics=bary),
        identity=HeadIdentity(model_id=head.model_id, shape=shape.astype(np.float32),
                              vertex_offsets=None if offsets is None else offsets.astype(np.float32)),
        meta={"imported_from": "GaussianAvatars"},
    )
    validate_avatar(avatar, num_faces=head.num_faces, num_vertices=head.num_vertices)
    return avatar


def write_gaussian_avatars(avatar: Avatar, out_dir: str | os.PathLike, head: HeadModel) -> tuple[Path, Path]:
    """Write `point_cloud.ply` (triangle-local, float binding_0) + `flame_param.npz` (one neutral frame)."""
    if avatar.binding is None:
        raise AvatarFormatError("field 'binding': GaussianAvatars needs a bound avatar")
    validate_avatar(avatar, num_faces=head.num_faces, num_vertices=head.num_vertices)
    ident = avatar.identity
    if ident is not None and ident.model_id != head.model_id:
        raise AvatarFormatError(f"field 'identity.model_id': avatar uses {ident.model_id!r}, head model is {head.model_id!r}")
    shape = np.zeros(head.num_shape) if ident is None else np.asarray(ident.shape, dtype=np.float64)
    offsets = None if ident is None or ident.vertex_offsets is None else np.asarray(ident.vertex_offsets, np.float64)
    verts = _canonical_vertices(head, shape, offsets)
    centres, rot, scale = triangle_frames(verts, head.data.faces)
    g = avatar.gaussians
    t = avatar.binding.triangles
    local_means = np.einsum("nji,nj->ni", rot[t], g.means.astype(np.float64) - centres[t]) / scale[t, None]
    conj = _frame_quats(rot[t]) * np.array([1.0, -1.0, -1.0, -1.0])
    local = Gaussians(
        means=local_means.astype(np.float32),
        log_scales=(g.log_scales - np.log(scale[t])[:, None]).astype(np.float32),
        quats=_qmul(conj, g.quats.astype(np.float64)).astype(np.float32),
        opacity_logits=g.opacity_logits, sh_dc=g.sh_dc, sh_rest=g.sh_rest,
    )
    ply = gaussians_to_ply_bytes(local, None)
    ply = _append_float_binding(ply, local, t)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "point_cloud.ply", ply)
    n_shape = max(300, len(shape))
    params = {
        "shape": np.pad(shape, (0, n_shape - len(shape))).astype(np.float32),
        "expr": np.zeros((1, 100), np.float32), "rotation": np.zeros((1, 3), np.float32),
        "neck_pose": np.zeros((1, 3), np.float32), "jaw_pose": np.zeros((1, 3), np.float32),
        "eyes_pose": np.zeros((1, 6), np.float32), "translation": np.zeros((1, 3), np.float32),
        "static_offset": (np.zeros((1, head.num_vertices, 3)) if offsets is None else offsets[None]).astype(np.float32),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    atomic_write_bytes(out / "flame_param.npz", buffer.getvalue())
    return out / "point_cloud.ply", out / "flame_param.npz"


def _append_float_binding(ply_bytes: bytes, gaussians: Gaussians, triangles: np.ndarray) -> bytes:
    """GaussianAvatars writes binding_0 as a float property after the Inria ones."""
    from plyfile import PlyData, PlyElement

    data = PlyData.read(io.BytesIO(ply_bytes))["vertex"].data
    rows = np.zeros(len(data), dtype=data.dtype.descr + [("binding_0", "f4")])
    for name in data.dtype.names:
        rows[name] = data[name]
    rows["binding_0"] = triangles.astype(np.float32)
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(rows, "vertex")], byte_order="<").write(buffer)
    return buffer.getvalue()
