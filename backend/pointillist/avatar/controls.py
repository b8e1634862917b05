"""Artist-facing face controls → the head model's expression vector and joint pose.

One place that says what "jaw 15°", "gaze left" or "jawOpen = 0.5" mean, shared by the CLI, previews
and (later) capture import, so they cannot drift apart. Angles are in degrees; gaze X is toward the
subject's own left (+X in head space), gaze Y is up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..head.data import JOINT_NAMES
from .face_angles import EYE_LOOK_FULL_DEG, JAW_OPEN_FULL_DEG, eye_look_offset, euler_yxz_axis_angle  # noqa: F401 (re-exported)


class ControlError(ValueError):
    """A face control the head model cannot express (unknown name, malformed value)."""


@dataclass
class FaceControls:
    expressions: dict[str, float] = field(default_factory=dict)
    jaw_deg: float = 0.0
    neck_yaw_deg: float = 0.0  # turn toward the subject's left
    neck_pitch_deg: float = 0.0  # nod down
    neck_roll_deg: float = 0.0
    gaze_deg: tuple[float, float] = (0.0, 0.0)  # (toward subject's left, up)

    def to_model(self, expr_names: list[str], strict: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(expression (E,), pose (5, 3) axis-angle) for a head model with these expression names.

        ARKit's jawOpen and eyeLook* are joint rotations here, not blendshapes, so they are folded
        into the pose; any other unknown name is an error that lists the valid ones (or, with
        strict=False, is skipped: procedural motion written for ARKit names still drives a FLAME head's joints).
        """
        expr = torch.zeros(len(expr_names))
        jaw = self.jaw_deg
        gaze_x, gaze_y = self.gaze_deg
        eye_extra = {"left_eye": [0.0, 0.0], "right_eye": [0.0, 0.0]}
        for name, value in self.expressions.items():
            if name in expr_names:
                expr[expr_names.index(name)] += float(value)
            elif name == "jawOpen":
                jaw += JAW_OPEN_FULL_DEG * float(value)
            elif name.startswith("eyeLook") and name.endswith(("Left", "Right")):
                look = eye_look_offset(name, value)  # ARKit: In/Out are relative to the nose
                if look is None:
                    raise ControlError(f"unknown expression {name!r}")
                side, dx, dy = look
                eye_extra[side][0] += dx
                eye_extra[side][1] += dy
            elif not strict:
                continue
            else:
                valid = ", ".join(expr_names + ["jawOpen", "eyeLook{Up,Down,In,Out}{Left,Right}"])
                raise ControlError(f"unknown expression {name!r}; valid names: {valid}")
        pose = torch.zeros(len(JOINT_NAMES), 3)
        pose[JOINT_NAMES.index("jaw"), 0] = math.radians(jaw)
        pose[JOINT_NAMES.index("neck")] = _euler_yxz(self.neck_yaw_deg, self.neck_pitch_deg, self.neck_roll_deg)
        for side in ("left_eye", "right_eye"):
            x = gaze_x + eye_extra[side][0]
            y = gaze_y + eye_extra[side][1]
            pose[JOINT_NAMES.index(side)] = _euler_yxz(x, -y, 0.0)
        return expr, pose


def _euler_yxz(yaw_deg: float, pitch_deg: float, roll_deg: float) -> torch.Tensor:
    """Axis-angle of R = Ry(yaw) Rx(pitch) Rz(roll) (head space: yaw about +Y, pitch about +X)."""
    return torch.as_tensor(euler_yxz_axis_angle(yaw_deg, pitch_deg, roll_deg), dtype=torch.float32)


def parse_expression_assignments(items: list[str]) -> dict[str, float]:
    """CLI `--expr NAME=VALUE` items -> {name: value}, with a message naming the bad item."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ControlError(f"--expr {item!r}: expected NAME=VALUE, e.g. mouthSmileLeft=0.8")
        try:
            out[name] = float(value)
        except ValueError:
            raise ControlError(f"--expr {item!r}: {value!r} is not a number") from None
        if not math.isfinite(out[name]):
            raise ControlError(f"--expr {item!r}: value must be finite")
    return out


def talk_controls(t: float, seed: int = 0) -> FaceControls:
    """Speech-like motion at time t (seconds): syllable-rate jaw, lip shapes, blinks, a passing smile."""
    syllable = 0.5 - 0.5 * math.cos(2 * math.pi * 4.2 * t + seed)
    phrase = 0.6 + 0.4 * math.sin(2 * math.pi * 0.45 * t + 1.3 * seed)
    jaw = 14.0 * syllable * phrase
    blink_phase = (t + 0.37 * seed) % 2.7
    blink = max(0.0, 1.0 - abs(blink_phase - 1.3) / 0.09)
    smile = max(0.0, math.sin(2 * math.pi * 0.23 * t))
    pucker = max(0.0, math.sin(2 * math.pi * 1.1 * t + 0.7)) ** 3 * 0.6
    return FaceControls(
        expressions={"eyeBlinkLeft": blink, "eyeBlinkRight": blink, "mouthSmileLeft": 0.8 * smile,
                     "mouthSmileRight": 0.8 * smile, "mouthPucker": pucker, "browInnerUp": 0.4 * smile},
        jaw_deg=jaw,
        neck_yaw_deg=6.0 * math.sin(2 * math.pi * 0.3 * t),
        neck_pitch_deg=3.0 * math.sin(2 * math.pi * 0.5 * t + 0.4),
        gaze_deg=(8.0 * math.sin(2 * math.pi * 0.2 * t), 0.0),
    )
