"""Everything the importer puts into Blender, as plain numpy arrays (no bpy), so it is testable without Blender.

Head space (FLAME's: +Y up, +Z out of the face) becomes Blender's (+Z up, face toward -Y) by
(x, y, z) -> (x, -z, y), a +90° rotation about X (DESIGN §3). Positions, expression offsets, joints and
Gaussian rotations all go through that one rotation; a bone pointing along Blender +Z with roll 0 then has
head-space local axes, so head-model axis-angles pose it directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Head -> Blender rotation matrix: (x, y, z) -> (x, -z, y).
HEAD_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
#: The same rotation as a w-first quaternion (+90° about X).
HEAD_TO_BLENDER_QUAT = np.array([math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0])
#: Bones of the rig, FLAME's joint order, and each bone's parent (index into BONES, -1 = none).
BONES: tuple[str, ...] = ("root", "neck", "jaw", "left_eye", "right_eye")
BONE_PARENTS: tuple[int, ...] = (-1, 0, 1, 1, 1)
#: Bone lengths in metres (display only: deformation depends on the head position and the frame).
BONE_LENGTHS: dict[str, float] = {"root": 0.06, "neck": 0.05, "jaw": 0.04, "left_eye": 0.015, "right_eye": 0.015}
#: Splats are drawn as spheres this many standard deviations across each axis.
DISPLAY_SIGMAS = 2.0


def to_blender(points: np.ndarray) -> np.ndarray:
    """Head-space vectors (..., 3) -> Blender axes, float32."""
    p = np.asarray(points, dtype=np.float32)
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], axis=-1)


def from_blender(points: np.ndarray) -> np.ndarray:
    """Blender-axis vectors (..., 3) -> head space (the inverse of `to_blender`)."""
    p = np.asarray(points, dtype=np.float32)
    return np.stack([p[..., 0], p[..., 2], -p[..., 1]], axis=-1)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of w-first quaternions, broadcasting."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def quats_to_blender(quats: np.ndarray) -> np.ndarray:
    """Gaussian rotations (N, 4, w-first) in head space -> Blender object space (q -> R q; norm kept)."""
    return quat_multiply(HEAD_TO_BLENDER_QUAT, quats).astype(np.float32)


@dataclass
class SplatArrays:
    """One vertex per Gaussian: positions and point attributes, ready for `foreach_set` (Blender axes)."""

    positions: np.ndarray  # (N, 3) float32
    #: Inria-named FLOAT attributes: f_dc_*, f_rest_*, opacity (logit), scale_* (log), rot_* (Blender space)
    floats: dict[str, np.ndarray] = field(default_factory=dict)
    display_color: np.ndarray | None = None  # (N, 4) float32 RGBA: SH DC colour and opacity
    display_scale: np.ndarray | None = None  # (N, 3) float32 sphere radii per axis
    display_rotation: np.ndarray | None = None  # (N, 4) float32 unit w-first quaternion

    @property
    def count(self) -> int:
        return int(self.positions.shape[0])


def splat_arrays(gaussians) -> SplatArrays:
    """The point mesh's contents for a `pointillist.avatar.gaussians.Gaussians` (head space in)."""
    n = gaussians.num
    quats = quats_to_blender(gaussians.quats)
    floats: dict[str, np.ndarray] = {}
    for c in range(3):
        floats[f"f_dc_{c}"] = gaussians.sh_dc[:, c]
    k = gaussians.sh_rest.shape[1]
    rest = gaussians.sh_rest.transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major, as the PLY stores it
    for i in range(3 * k):
        floats[f"f_rest_{i}"] = rest[:, i]
    floats["opacity"] = gaussians.opacity_logits
    for c in range(3):
        floats[f"scale_{c}"] = gaussians.log_scales[:, c]
    for c in range(4):
        floats[f"rot_{c}"] = quats[:, c]
    floats = {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in floats.items()}
    unit = quats / np.maximum(np.linalg.norm(quats, axis=1, keepdims=True), 1e-12)
    color = np.concatenate([np.clip(gaussians.colors(), 0.0, 1.0), gaussians.opacities()[:, None]], axis=1)
    return SplatArrays(
        positions=to_blender(gaussians.means),
        floats=floats,
        display_color=color.astype(np.float32),
        display_scale=(gaussians.scales() * DISPLAY_SIGMAS).astype(np.float32),
        display_rotation=unit.astype(np.float32),
    )


@dataclass
class RigArrays:
    """The rig in Blender axes: bone heads, vertex-group weights and one shape key per expression."""

    joints: np.ndarray  # (5, 3) float32 bone heads
    weights: np.ndarray  # (N, 5) float32, columns follow BONES
    expr_names: list[str]
    expr_offsets: np.ndarray  # (E, N, 3) float32 displacement per unit expression (Blender axes)
    pose_offsets: np.ndarray | None = None  # (36, N, 3) FLAME pose correctives, Blender axes, or None

    def shape_key_positions(self, rest: np.ndarray, e: int) -> np.ndarray:
        """Flat float32 `co` array of shape key `e` (rest + its unit displacement), for `foreach_set`."""
        return np.ascontiguousarray(rest + self.expr_offsets[e], dtype=np.float32).ravel()


def rig_arrays(point_rig) -> RigArrays:
    """`pointillist.avatar.point_rig.PointRig` (head space) -> Blender axes."""
    pose = None if point_rig.pose_offsets is None else to_blender(point_rig.pose_offsets)
    return RigArrays(
        joints=to_blender(point_rig.rest_joints),
        weights=np.asarray(point_rig.lbs_weights, dtype=np.float32),
        expr_names=list(point_rig.expr_names),
        expr_offsets=to_blender(np.moveaxis(point_rig.expr_offsets, 2, 0)),
        pose_offsets=pose,
    )


#: Shape-key name prefix of FLAME pose correctives (driven by bone rotations, never keyed by hand).
CORRECTIVE_PREFIX = "pose_"
#: Element (r, c) of R - I for a unit quaternion (w, x, y, z), as a driver expression Blender evaluates
#: without Python (its "simple expression" evaluator), so correctives work with auto-run scripts off.
_ROTATION_MINUS_IDENTITY = (
    ("-2*(y*y+z*z)", "2*(x*y-w*z)", "2*(x*z+w*y)"),
    ("2*(x*y+w*z)", "-2*(x*x+z*z)", "2*(y*z-w*x)"),
    ("2*(x*z-w*y)", "2*(y*z+w*x)", "-2*(x*x+y*y)"),
)


@dataclass(frozen=True)
class Corrective:
    """One FLAME pose-corrective shape key: its weight is element (row, col) of (R - I) of `bone`'s local rotation."""

    index: int  # row of `RigArrays.pose_offsets` (FLAME's pose feature order)
    bone: str
    row: int
    col: int

    @property
    def name(self) -> str:
        return f"{CORRECTIVE_PREFIX}{self.bone}_{self.row}{self.col}"

    @property
    def expression(self) -> str:
        return _ROTATION_MINUS_IDENTITY[self.row][self.col]


def correctives() -> list[Corrective]:
    """FLAME's 36 pose features: (R_j - I) flattened row-major for every joint but the root, in joint order.

    The bones' local axes are head space (see the module docstring), so a bone's local rotation is the head
    model's R_j and the same features `animate()` computes drive the same offsets in Blender.
    """
    return [Corrective(k, BONES[1 + k // 9], (k % 9) // 3, k % 3) for k in range(9 * (len(BONES) - 1))]


def is_corrective(name: str) -> bool:
    return name.startswith(CORRECTIVE_PREFIX)


def group_members(weights: np.ndarray, min_weight: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per bone: (vertex indices, weights) of the vertices it moves (weight > min_weight)."""
    out = []
    for j in range(weights.shape[1]):
        idx = np.flatnonzero(weights[:, j] > min_weight)
        out.append((idx, weights[idx, j].astype(np.float32)))
    return out


def shape_key_range(name: str) -> tuple[float, float]:
    """Slider range: ARKit-style names are 0..1 activations; PCA components (Exp000...) go both ways."""
    if name.startswith("Exp") and name[3:].isdigit():
        return -3.0, 3.0
    return 0.0, 1.0


#: Sidebar groups of the expression sliders, by ARKit name prefix (first match wins); the rest is "other".
EXPRESSION_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Brows", ("brow",)),
    ("Eyes", ("eye",)),
    ("Mouth", ("mouth", "tongue")),
    ("Jaw", ("jaw",)),
    ("Cheeks", ("cheek",)),
    ("Nose", ("nose",)),
)


def group_expressions(names: list[str]) -> dict[str, list[str]]:
    """{group label: expression names}, in panel order, empty groups left out; PCA components go to "Other"."""
    groups: dict[str, list[str]] = {label: [] for label, _ in EXPRESSION_GROUPS}
    groups["Other"] = []
    for name in names:
        for label, prefixes in EXPRESSION_GROUPS:
            if name.startswith(prefixes):
                groups[label].append(name)
                break
        else:
            groups["Other"].append(name)
    return {label: members for label, members in groups.items() if members}
