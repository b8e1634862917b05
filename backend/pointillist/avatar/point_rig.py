"""Per-Gaussian rig arrays from the head model: the one definition the backend and Blender both build from.

numpy only (no torch, no scipy), so the Blender add-on builds its vertex groups, shape keys and bones from
exactly the numbers `animate.AvatarAnimator` poses with (DESIGN §3 "Binding"). A Gaussian's rig data is
the barycentric blend of its bound triangle's vertex data; joints come from the identity-shaped template only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..head.data import HeadModelData
from .gaussians import Avatar, AvatarFormatError


@dataclass
class PointRig:
    """Per-Gaussian rig arrays (numpy, float32), N Gaussians, E expressions, J = 5 joints."""

    lbs_weights: np.ndarray  # (N, 5) rows sum to 1 -> vertex groups root, neck, jaw, left_eye, right_eye
    expr_offsets: np.ndarray  # (N, 3, E) displacement of each Gaussian per unit expression -> shape keys
    expr_names: list[str]
    pose_offsets: np.ndarray | None  # (36, N, 3) FLAME pose correctives per rotation-matrix element, or None
    rest_joints: np.ndarray  # (5, 3) joint locations of the avatar's identity -> armature bones


def check_identity(avatar: Avatar, data: HeadModelData) -> None:
    """Refuse an avatar made for another head model, or bound to triangles this head does not have."""
    ident = avatar.identity
    if ident is not None and ident.model_id != data.model_id:
        raise AvatarFormatError(f"field 'identity.model_id': avatar was made for head model {ident.model_id!r}, not {data.model_id!r}")
    if avatar.binding is not None:
        tri = np.asarray(avatar.binding.triangles)
        if tri.size and (tri.min() < 0 or tri.max() >= data.num_faces):
            raise AvatarFormatError(f"field 'binding': triangle index out of range for head model {data.model_id!r} ({data.num_faces} triangles)")


def identity_vertices(avatar: Avatar, data: HeadModelData) -> np.ndarray:
    """Neutral vertices (V, 3) of the avatar's identity: template + shape blendshapes + identity offsets.

    Accumulated in float32 in the same order as `HeadModel.identity_vertices`, so the joints agree with the
    torch model to float precision.
    """
    check_identity(avatar, data)
    v = data.vertices.astype(np.float32, copy=True)
    ident = avatar.identity
    if ident is None:
        return v
    shape = np.asarray(ident.shape, dtype=np.float32).reshape(-1)
    if shape.size > data.num_shape:
        raise AvatarFormatError(f"field 'identity.shape': {shape.size} coefficients, head model {data.model_id!r} has {data.num_shape}")
    if shape.size:
        v = v + np.einsum("vcs,s->vc", data.shape_dirs[:, :, : shape.size], shape).astype(np.float32)
    if ident.vertex_offsets is not None:
        off = np.asarray(ident.vertex_offsets, dtype=np.float32)
        if off.shape != v.shape:
            raise AvatarFormatError(f"field 'identity.vertex_offsets': expected {v.shape}, got {off.shape}")
        v = v + off
    return v


def rest_joints(avatar: Avatar, data: HeadModelData) -> np.ndarray:
    """Joint locations (5, 3) regressed from the identity-shaped vertices (fixed under expressions)."""
    return (data.joint_regressor.astype(np.float32) @ identity_vertices(avatar, data)).astype(np.float32)


def build_point_rig(avatar: Avatar, data: HeadModelData) -> PointRig:
    """Blend the bound triangles' vertex data with each Gaussian's barycentrics."""
    if avatar.binding is None:
        raise AvatarFormatError("field 'binding': this avatar is not bound to a head (a plain 3DGS PLY cannot be animated)")
    check_identity(avatar, data)
    if avatar.binding.barycentrics is None:
        raise AvatarFormatError("field 'bary': barycentrics are missing (compute them with binding.closest_point_barycentrics)")
    corners = data.faces[np.asarray(avatar.binding.triangles, dtype=np.int64)]  # (N, 3)
    bary = np.asarray(avatar.binding.barycentrics, dtype=np.float64)

    def blend(per_vertex: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * (per_vertex.ndim - 1)
        out = sum(bary[:, k].reshape(shape) * per_vertex[corners[:, k]] for k in range(3))
        return np.asarray(out, dtype=np.float32)

    pose_offsets = None
    if data.pose_dirs is not None:
        per_vertex = data.pose_dirs.reshape(data.pose_dirs.shape[0], -1, 3).transpose(1, 0, 2)  # (V, 36, 3)
        pose_offsets = blend(per_vertex).transpose(1, 0, 2)
    return PointRig(
        lbs_weights=blend(data.lbs_weights),
        expr_offsets=blend(data.expr_dirs),
        expr_names=list(data.expr_names),
        pose_offsets=pose_offsets,
        rest_joints=rest_joints(avatar, data),
    )
