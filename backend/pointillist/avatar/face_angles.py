"""What ARKit's joint-like blendshapes mean as joint angles, and the one Euler convention for neck and eyes.

numpy only, so `controls.py` (backend) and the Blender add-on's capture import share these definitions.
ARKit's jawOpen and eyeLook* are joint rotations in our rig, not blendshapes. Angles are in degrees; gaze X
is toward the subject's own left (+X in head space), gaze Y is up.
"""

from __future__ import annotations

import math

import numpy as np

#: ARKit's jawOpen = 1 opens the jaw this far (FLAME fits of wide-open mouths reach ~25-30°).
JAW_OPEN_FULL_DEG = 25.0
#: ARKit eyeLook* = 1 turns the eye this far.
EYE_LOOK_FULL_DEG = 30.0

#: Apple's 52 ARKit blendshape names (ARFaceAnchor.BlendShapeLocation), the order Live Link Face writes.
ARKIT_52: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose",
    "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)


def eye_look_offset(name: str, value: float) -> tuple[str, float, float] | None:
    """(eye joint, degrees toward the subject's left, degrees up) for an ARKit eyeLook* value, else None.

    ARKit's In/Out are relative to the nose: for the left eye "Out" is toward +X, for the right eye toward -X.
    """
    if not (name.startswith("eyeLook") and name.endswith(("Left", "Right"))):
        return None
    side = "left_eye" if name.endswith("Left") else "right_eye"
    direction = name[len("eyeLook"):-len("Left" if side == "left_eye" else "Right")]
    amount = EYE_LOOK_FULL_DEG * float(value)
    sign_out = 1.0 if side == "left_eye" else -1.0
    offsets = {"Up": (0.0, amount), "Down": (0.0, -amount), "Out": (sign_out * amount, 0.0), "In": (-sign_out * amount, 0.0)}
    if direction not in offsets:
        return None
    return (side, *offsets[direction])


def euler_yxz_axis_angle(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Axis-angle (3,) of R = Ry(yaw) Rx(pitch) Rz(roll) in head space (yaw about +Y, pitch about +X).

    In Blender this is a bone in rotation mode 'ZXY' (Z applied first) with rotation_euler = (pitch, yaw, roll),
    since a bone along +Z with roll 0 has head-space local axes.
    """
    y, x, z = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    cy, sy, cx, sx, cz, sz = math.cos(y), math.sin(y), math.cos(x), math.sin(x), math.cos(z), math.sin(z)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return matrix_to_axis_angle(ry @ rx @ rz)


def matrix_to_axis_angle(R: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) of a 3x3 rotation matrix, stable near 0 and pi."""
    R = np.asarray(R, dtype=np.float64)
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    angle = math.acos(cos)
    if angle < 1e-8:
        return np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / 2.0
    if math.pi - angle < 1e-4:  # near pi: the axis is the dominant column of (R + I) / 2
        S = (R + np.eye(3)) / 2.0
        i = int(np.argmax(np.diag(S)))
        axis = S[:, i] / math.sqrt(max(S[i, i], 1e-12))
        if np.dot([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]], axis) < 0:
            axis = -axis
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2.0 * math.sin(angle))
    return axis * angle
