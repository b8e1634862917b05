"""Animating an avatar: each Gaussian follows its bound triangle's blendshapes and LBS weights.

A Gaussian's rig data is the barycentric blend of its triangle's vertex data (the paper's scheme):
LBS weights (→ Blender vertex groups), one displacement per expression (→ shape keys) and, with FLAME,
pose correctives (→ corrective shape keys). `PointRig` (point_rig.py, numpy only) holds exactly those
arrays, and the Blender add-on builds them with the same function, so both sides animate the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..head.lbs import (
    apply_transforms,
    blend_transforms,
    matrix_to_quaternion,
    orthonormalize,
    quaternion_multiply,
)
from ..head.model import HeadModel
from .gaussians import Avatar, AvatarFormatError
from .point_rig import PointRig, build_point_rig

__all__ = ["AvatarAnimator", "PointRig", "PosedGaussians", "animate", "point_rig", "identity_tensors"]


@dataclass
class PosedGaussians:
    means: torch.Tensor  # (B, N, 3)
    quats: torch.Tensor  # (B, N, 4) w-first, canonical norm preserved
    log_scales: torch.Tensor  # (B, N, 3) unchanged by posing
    rotations: torch.Tensor  # (B, N, 3, 3) the rotation applied to each Gaussian (canonical -> posed), for SH


def point_rig(avatar: Avatar, head: HeadModel) -> PointRig:
    """Blend the bound triangles' vertex data with each Gaussian's barycentrics (numpy, shared with Blender)."""
    return build_point_rig(avatar, head.data)


def identity_tensors(avatar: Avatar, head: HeadModel) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(shape (1, S'), offsets (1, V, 3) | None) of the avatar's identity, checked against the head model."""
    ident = avatar.identity
    if ident is None:
        return None, None
    if ident.model_id != head.model_id:
        raise AvatarFormatError(f"field 'identity.model_id': avatar was made for head model {ident.model_id!r}, not {head.model_id!r}")
    shape = torch.as_tensor(np.asarray(ident.shape, dtype=np.float32))[None] if ident.shape is not None and len(ident.shape) else None
    offsets = None
    if ident.vertex_offsets is not None:
        offsets = torch.as_tensor(np.asarray(ident.vertex_offsets, dtype=np.float32))[None]
    return shape, offsets


class AvatarAnimator:
    """Poses one avatar many times: the per-point rig is blended once, each frame is a few matmuls."""

    def __init__(self, avatar: Avatar, head: HeadModel, device: torch.device | str = "cpu"):
        self.avatar = avatar
        self.head = head
        self.rig = point_rig(avatar, head)
        dev = torch.device(device)
        g = avatar.gaussians
        self.means = torch.as_tensor(g.means, dtype=torch.float32, device=dev)
        self.quats = torch.as_tensor(g.quats, dtype=torch.float32, device=dev)
        self.log_scales = torch.as_tensor(g.log_scales, dtype=torch.float32, device=dev)
        self.weights = torch.as_tensor(self.rig.lbs_weights, device=dev)
        self.expr_offsets = torch.as_tensor(self.rig.expr_offsets, device=dev)
        self.pose_offsets = None if self.rig.pose_offsets is None else torch.as_tensor(self.rig.pose_offsets, device=dev)
        self.rest_joints = torch.as_tensor(self.rig.rest_joints, device=dev)[None]

    @property
    def expr_names(self) -> list[str]:
        return self.rig.expr_names

    def __call__(
        self,
        expression: torch.Tensor | np.ndarray | None = None,  # (E',) or (B, E')
        pose: torch.Tensor | np.ndarray | None = None,  # (5, 3) or (B, 5, 3) axis-angle
        translation: torch.Tensor | np.ndarray | None = None,  # (3,) or (B, 3)
    ) -> PosedGaussians:
        dev = self.means.device
        if _is_rest(expression) and _is_rest(pose) and _is_rest(translation):
            # Exactly the canonical values at rest, so Blender/backend round trips are bit-exact.
            eye = torch.eye(3, device=dev).expand(1, len(self.means), 3, 3)
            return PosedGaussians(self.means[None].clone(), self.quats[None].clone(), self.log_scales[None].clone(), eye.clone())
        means, quats, rot = self.pose_tensors(self.means, self.quats, expression, pose, translation)
        return PosedGaussians(means, quats, self.log_scales[None].expand(len(means), -1, -1), rot)

    def pose_tensors(self, means: torch.Tensor, quats: torch.Tensor, expression=None, pose=None, translation=None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(means (B, N, 3), quats (B, N, 4), rotations (B, N, 3, 3)) of Gaussians at `means`/`quats` posed with
        this avatar's rig: differentiable in `means` and `quats`, so a decoder whose output is bound like this
        avatar can be trained against photos of a posed face (the rig itself is fixed per avatar)."""
        dev = means.device
        B = max(_batch(expression, 1), _batch(pose, 2), _batch(translation, 1))
        psi = self.head._coeffs(None if expression is None else torch.as_tensor(expression, dtype=torch.float32), self.head.num_expr, B, "expression").to(dev)
        points = means[None] + torch.einsum("nce,be->bnc", self.expr_offsets, psi)
        R = self.head.pose_rotations(None if pose is None else torch.as_tensor(pose, dtype=torch.float32), B).to(dev)
        if self.pose_offsets is not None:
            eye = torch.eye(3, device=dev)
            feature = (R[:, 1:] - eye).reshape(B, -1)  # (B, 36)
            points = points + torch.einsum("bk,knc->bnc", feature, self.pose_offsets)
        A, _ = self.head.skinning(self.rest_joints.expand(B, -1, -1), R, None if translation is None else torch.as_tensor(translation, dtype=torch.float32).reshape(-1, 3).to(dev))
        T = blend_transforms(self.weights[None], A)  # (B, N, 4, 4)
        rot = orthonormalize(T[..., :3, :3])
        return apply_transforms(T, points), quaternion_multiply(matrix_to_quaternion(rot), quats[None].expand(B, -1, -1)), rot


def animate(avatar: Avatar, head: HeadModel, expression=None, pose=None, translation=None) -> PosedGaussians:
    """One-off posing; use `AvatarAnimator` for many frames of the same avatar."""
    return AvatarAnimator(avatar, head)(expression, pose, translation)


def _is_rest(x) -> bool:
    return x is None or not bool(torch.as_tensor(x).abs().gt(0).any())


def _batch(x, base_ndim: int) -> int:
    if x is None:
        return 1
    t = torch.as_tensor(x)
    return int(t.shape[0]) if t.ndim > base_ndim else 1
