"""`HeadModel`: the one interface every head (procedural template or FLAME) is used through.

forward(shape, expression, pose[5x3 axis-angle], translation) -> vertices, joint transforms.
The order of operations is FLAME's: identity shape (+ optional per-vertex identity offsets) →
joints from that identity-shaped mesh → expression blendshapes → pose correctives → LBS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..assets import REPO_ASSETS, asset_path
from .data import JOINT_NAMES, JOINT_PARENTS, HeadModelData
from .lbs import apply_transforms, axis_angle_to_matrix, blend_transforms, kinematic_transforms

#: The procedural head template shipped with the project.
#: The procedural head template in a checkout (an installed backend finds it through `assets.asset_path`).
DEFAULT_HEAD_PATH = REPO_ASSETS / "head_template.npz"


@dataclass
class HeadOutput:
    vertices: torch.Tensor  # (B, V, 3) posed vertices
    joint_transforms: torch.Tensor  # (B, 5, 4, 4) skinning transforms (rest space -> posed space)
    joints: torch.Tensor  # (B, 5, 3) posed joint locations
    rest_joints: torch.Tensor  # (B, 5, 3) joint locations of the identity at rest


class HeadModel(nn.Module):
    """A batched, differentiable head model over `HeadModelData` arrays held as buffers."""

    joint_names = JOINT_NAMES
    joint_parents = JOINT_PARENTS

    def __init__(self, data: HeadModelData):
        super().__init__()
        data.validate()
        self.data = data
        self.model_id = data.model_id
        self.expr_names = list(data.expr_names)
        self.shape_names = list(data.shape_names)
        f32 = torch.float32
        self.register_buffer("v_template", torch.as_tensor(data.vertices, dtype=f32))
        self.register_buffer("faces", torch.as_tensor(data.faces, dtype=torch.long))
        self.register_buffer("shape_dirs", torch.as_tensor(data.shape_dirs, dtype=f32))
        self.register_buffer("expr_dirs", torch.as_tensor(data.expr_dirs, dtype=f32))
        self.register_buffer("joint_regressor", torch.as_tensor(data.joint_regressor, dtype=f32))
        self.register_buffer("lbs_weights", torch.as_tensor(data.lbs_weights, dtype=f32))
        pose_dirs = data.pose_dirs if data.pose_dirs is not None else None
        self.register_buffer("pose_dirs", None if pose_dirs is None else torch.as_tensor(pose_dirs, dtype=f32))

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "HeadModel":
        """Load a head-model `.npz` (the bundled procedural template when `path` is None)."""
        return cls(HeadModelData.load(path or asset_path("head_template.npz")))

    # ------------------------------------------------------------------ sizes
    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def num_shape(self) -> int:
        return self.shape_dirs.shape[2]

    @property
    def num_expr(self) -> int:
        return self.expr_dirs.shape[2]

    # ------------------------------------------------------------------ building blocks
    def _coeffs(self, x: torch.Tensor | None, n: int, batch: int, what: str) -> torch.Tensor:
        """Accept (B, k) or (k,) coefficients with k <= n; pad missing ones with zeros."""
        if x is None:
            return self.v_template.new_zeros(batch, n)
        x = torch.as_tensor(x, dtype=self.v_template.dtype, device=self.v_template.device)
        if x.ndim == 1:
            x = x[None].expand(batch, -1)
        if x.shape[-1] > n:
            raise ValueError(f"{what}: got {x.shape[-1]} coefficients, this head model has {n}")
        if x.shape[-1] < n:
            x = torch.cat([x, x.new_zeros(x.shape[0], n - x.shape[-1])], dim=-1)
        return x

    def _batch_size(self, *tensors: torch.Tensor | None) -> int:
        """The common batch size; a batch of 1 broadcasts against any other."""
        sizes = {t.shape[0] for t in tensors if t is not None and torch.as_tensor(t).ndim >= 2} - {1}
        if len(sizes) > 1:
            raise ValueError(f"inconsistent batch sizes {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    def identity_vertices(self, shape: torch.Tensor | None = None, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Neutral vertices of an identity: template + shape blendshapes + identity offsets. (B, V, 3)."""
        B = self._batch_size(shape, offsets if offsets is None or offsets.ndim == 3 else None)
        beta = self._coeffs(shape, self.num_shape, B, "shape")
        v = self.v_template + torch.einsum("vcs,bs->bvc", self.shape_dirs, beta)
        if offsets is not None:
            v = v + torch.as_tensor(offsets, dtype=v.dtype, device=v.device).reshape(-1, *v.shape[1:])
        return v

    def rest_joints(self, identity_vertices: torch.Tensor) -> torch.Tensor:
        """Joint locations regressed from identity vertices (B, V, 3) -> (B, 5, 3)."""
        return torch.einsum("jv,bvc->bjc", self.joint_regressor, identity_vertices)

    def expression_offsets(self, expression: torch.Tensor, batch: int) -> torch.Tensor:
        psi = self._coeffs(expression, self.num_expr, batch, "expression")
        return torch.einsum("vce,be->bvc", self.expr_dirs, psi)

    def pose_rotations(self, pose: torch.Tensor | None, batch: int) -> torch.Tensor:
        if pose is None:
            pose = self.v_template.new_zeros(batch, len(JOINT_NAMES), 3)
        pose = torch.as_tensor(pose, dtype=self.v_template.dtype, device=self.v_template.device)
        if pose.ndim == 2:
            pose = pose[None].expand(batch, -1, -1)
        if pose.shape[-2:] != (len(JOINT_NAMES), 3):
            raise ValueError(f"pose must be (B, 5, 3) axis-angle for joints {JOINT_NAMES}, got {tuple(pose.shape)}")
        return axis_angle_to_matrix(pose)

    def pose_correctives(self, rotations: torch.Tensor) -> torch.Tensor | None:
        """FLAME pose-corrective offsets (B, V, 3), or None when the model has none."""
        if self.pose_dirs is None:
            return None
        eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
        feature = (rotations[:, 1:] - eye).reshape(rotations.shape[0], -1)
        return (feature @ self.pose_dirs).reshape(rotations.shape[0], -1, 3)

    def skinning(self, rest_joints: torch.Tensor, rotations: torch.Tensor, translation: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Skinning transforms (B, 5, 4, 4) with the global translation folded in, and posed joints."""
        A, joints = kinematic_transforms(rotations, rest_joints, JOINT_PARENTS)
        if translation is not None:
            t = torch.as_tensor(translation, dtype=A.dtype, device=A.device).reshape(-1, 1, 3)
            A = A.clone()
            A[..., :3, 3] = A[..., :3, 3] + t
            joints = joints + t
        return A, joints

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        shape: torch.Tensor | None = None,  # (B, S') S' <= S identity coefficients
        expression: torch.Tensor | None = None,  # (B, E') E' <= E expression coefficients
        pose: torch.Tensor | None = None,  # (B, 5, 3) axis-angle: root, neck, jaw, left_eye, right_eye
        translation: torch.Tensor | None = None,  # (B, 3)
        offsets: torch.Tensor | None = None,  # (B|1, V, 3) identity vertex offsets (e.g. static_offset)
    ) -> HeadOutput:
        B = self._batch_size(shape, expression, pose if pose is None or torch.as_tensor(pose).ndim == 3 else None, translation)
        v_id = self.identity_vertices(shape if shape is not None else None, offsets)
        if v_id.shape[0] != B:
            v_id = v_id.expand(B, -1, -1)
        J = self.rest_joints(v_id)
        v = v_id + self.expression_offsets(expression, B)
        R = self.pose_rotations(pose, B)
        correctives = self.pose_correctives(R)
        if correctives is not None:
            v = v + correctives
        A, joints = self.skinning(J, R, translation)
        T = blend_transforms(self.lbs_weights[None], A)
        return HeadOutput(vertices=apply_transforms(T, v), joint_transforms=A, joints=joints, rest_joints=J)
