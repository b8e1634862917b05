"""One frame's expression and pose, and the avatar's Gaussians posed by it, ready to write anywhere.

Exports take the pose as `FramePose` (plain arrays in the head model's terms), built from artist-facing
`FaceControls` or given directly; posing itself is `AvatarAnimator`'s (the same numbers every render uses).
A posed Gaussian gets the animator's mean and quaternion, keeps its scale and opacity, and its SH bands >= 1
are rotated with it (`sh_rotation`) because a file viewer evaluates them in world space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..avatar.animate import AvatarAnimator
from ..avatar.controls import FaceControls
from ..avatar.gaussians import Gaussians
from ..head.data import JOINT_NAMES
from .errors import ExportError
from .sh_rotation import rotate_sh_rest


@dataclass(frozen=True)
class FramePose:
    """Head-model parameters of one frame: expression (E,), joint pose (5, 3) axis-angle, translation (3,)."""

    expression: np.ndarray
    pose: np.ndarray
    translation: np.ndarray

    @classmethod
    def rest(cls, num_expr: int) -> FramePose:
        return cls(np.zeros(num_expr, np.float32), np.zeros((len(JOINT_NAMES), 3), np.float32), np.zeros(3, np.float32))

    @classmethod
    def from_arrays(cls, num_expr: int, expression=None, pose=None, translation=None) -> FramePose:
        """Pad a shorter expression vector with zeros; check shapes so errors name the argument."""
        expr = np.zeros(num_expr, np.float32)
        if expression is not None:
            e = np.asarray(expression, dtype=np.float32).reshape(-1)
            if e.size > num_expr:
                raise ExportError(f"expression: {e.size} coefficients, the head model has {num_expr}")
            expr[: e.size] = e
        p = np.zeros((len(JOINT_NAMES), 3), np.float32) if pose is None else np.asarray(pose, dtype=np.float32)
        if p.shape != (len(JOINT_NAMES), 3):
            raise ExportError(f"pose: expected (5, 3) axis-angle for joints {', '.join(JOINT_NAMES)}, got {p.shape}")
        t = np.zeros(3, np.float32) if translation is None else np.asarray(translation, dtype=np.float32).reshape(-1)
        if t.shape != (3,):
            raise ExportError(f"translation: expected 3 values, got {t.shape}")
        for name, value in (("expression", expr), ("pose", p), ("translation", t)):
            if not np.isfinite(value).all():
                raise ExportError(f"{name}: contains NaN or Inf")
        return cls(expr, p, t)

    @classmethod
    def from_controls(cls, controls: FaceControls, expr_names: list[str], strict: bool = True) -> FramePose:
        """Artist controls (degrees, ARKit names) -> model parameters, via `FaceControls.to_model`."""
        expr, pose = controls.to_model(expr_names, strict=strict)
        return cls.from_arrays(len(expr_names), expr.numpy(), pose.numpy())

    @property
    def is_rest(self) -> bool:
        return not (self.expression.any() or self.pose.any() or self.translation.any())


def posed_gaussians(animator: AvatarAnimator, frame: FramePose) -> Gaussians:
    """The avatar's Gaussians posed by `frame`; exactly the canonical ones at rest."""
    return posed_gaussians_batch(animator, [frame])[0]


def posed_gaussians_batch(animator: AvatarAnimator, frames: list[FramePose]) -> list[Gaussians]:
    """Pose several frames in one animator call (a batch is a few matmuls over all of them)."""
    g = animator.avatar.gaussians
    if all(f.is_rest for f in frames):
        return [g for _ in frames]
    with torch.no_grad():
        posed = animator(np.stack([f.expression for f in frames]), np.stack([f.pose for f in frames]),
                         np.stack([f.translation for f in frames]))
    out = []
    for b in range(len(frames)):
        out.append(Gaussians(
            means=posed.means[b].numpy().astype(np.float32),
            log_scales=g.log_scales,
            quats=posed.quats[b].numpy().astype(np.float32),
            opacity_logits=g.opacity_logits,
            sh_dc=g.sh_dc,
            sh_rest=rotate_sh_rest(g.sh_rest, posed.rotations[b]),
        ))
    return out
