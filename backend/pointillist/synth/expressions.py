"""Random facial expressions and head poses for the posed portrait view of a synthetic subject.

Conditioning photos are rarely neutral: people smile, talk, squint, raise their brows and tilt their
heads. A draw here is a named preset (neutral, smile, grin, talk, surprise, frown, angry, squint, wink,
pucker) with randomised strengths, a few small random extra coefficients, a jaw opening, a slight neck
rotation and a gaze, expressed in the head model's controls: expression coefficients in the order of
``head.data.expr_names`` (ARKit-style blendshapes; names the model lacks are skipped) and a (5, 3)
axis-angle pose for the joints (root, neck, jaw, left_eye, right_eye). The root stays zero: the camera
already varies the view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: preset -> (probability weight, {blendshape: (lo, hi)}, jaw opening range in radians)
PRESETS: dict[str, tuple[float, dict[str, tuple[float, float]], tuple[float, float]]] = {
    "neutral": (0.20, {}, (0.0, 0.02)),
    "smile": (0.20, {"mouthSmileLeft": (0.4, 1.0), "mouthSmileRight": (0.4, 1.0), "cheekSquintLeft": (0.0, 0.4),
                     "cheekSquintRight": (0.0, 0.4), "eyeSquintLeft": (0.0, 0.3), "eyeSquintRight": (0.0, 0.3)}, (0.0, 0.03)),
    "grin": (0.10, {"mouthSmileLeft": (0.6, 1.0), "mouthSmileRight": (0.6, 1.0), "mouthUpperUpLeft": (0.2, 0.6),
                    "mouthUpperUpRight": (0.2, 0.6), "cheekSquintLeft": (0.2, 0.6), "cheekSquintRight": (0.2, 0.6)}, (0.08, 0.22)),
    "talk": (0.14, {"mouthFunnel": (0.0, 0.4), "mouthLowerDownLeft": (0.0, 0.5), "mouthLowerDownRight": (0.0, 0.5),
                    "mouthStretchLeft": (0.0, 0.3), "mouthStretchRight": (0.0, 0.3)}, (0.05, 0.25)),
    "surprise": (0.07, {"browInnerUp": (0.5, 1.0), "browOuterUpLeft": (0.4, 1.0), "browOuterUpRight": (0.4, 1.0),
                        "eyeWideLeft": (0.3, 0.9), "eyeWideRight": (0.3, 0.9)}, (0.12, 0.35)),
    "frown": (0.07, {"mouthFrownLeft": (0.3, 0.9), "mouthFrownRight": (0.3, 0.9), "browInnerUp": (0.2, 0.7),
                     "mouthShrugLower": (0.0, 0.5)}, (0.0, 0.03)),
    "angry": (0.05, {"browDownLeft": (0.4, 1.0), "browDownRight": (0.4, 1.0), "noseSneerLeft": (0.0, 0.5),
                     "noseSneerRight": (0.0, 0.5), "mouthPressLeft": (0.2, 0.7), "mouthPressRight": (0.2, 0.7)}, (0.0, 0.03)),
    "squint": (0.06, {"eyeSquintLeft": (0.4, 1.0), "eyeSquintRight": (0.4, 1.0), "cheekSquintLeft": (0.1, 0.5),
                      "cheekSquintRight": (0.1, 0.5)}, (0.0, 0.03)),
    "wink": (0.04, {"eyeBlinkLeft": (0.8, 1.0), "mouthSmileLeft": (0.2, 0.7)}, (0.0, 0.03)),
    "pucker": (0.07, {"mouthPucker": (0.4, 1.0), "mouthFunnel": (0.0, 0.4), "cheekPuff": (0.0, 0.5)}, (0.0, 0.05)),
}
PRESET_NAMES = tuple(PRESETS)
JAW, NECK, LEFT_EYE, RIGHT_EYE = 2, 1, 3, 4


@dataclass(frozen=True)
class FaceControls:
    preset: str
    expression: np.ndarray  # (E,) float32 in the head model's expression order
    pose: np.ndarray  # (5, 3) float32 axis-angle per joint

    @property
    def expression_magnitude(self) -> float:
        """L2 norm of the expression coefficients (0 at neutral)."""
        return float(np.linalg.norm(self.expression))

    @property
    def jaw_deg(self) -> float:
        return float(np.degrees(np.linalg.norm(self.pose[JAW])))

    @property
    def neck_deg(self) -> float:
        return float(np.degrees(np.linalg.norm(self.pose[NECK])))


def rest_controls(expr_names: list[str] | tuple[str, ...]) -> FaceControls:
    return FaceControls("rest", np.zeros(len(expr_names), np.float32), np.zeros((5, 3), np.float32))


def sample_controls(rng: np.random.Generator, expr_names: list[str] | tuple[str, ...], neck_deg: float = 8.0,
                    mirror: bool | None = None) -> FaceControls:
    """A random expression + pose. Left/right presets are mirrored half the time."""
    weights = np.array([w for w, _, _ in PRESETS.values()])
    preset = str(rng.choice(PRESET_NAMES, p=weights / weights.sum()))
    _, coeffs, jaw_range = PRESETS[preset]
    index = {n: i for i, n in enumerate(expr_names)}
    flip = bool(rng.random() < 0.5) if mirror is None else mirror
    expr = np.zeros(len(expr_names), np.float64)
    for name, (lo, hi) in coeffs.items():
        if flip:
            name = name.replace("Left", "#").replace("Right", "Left").replace("#", "Right")
        if name in index:
            expr[index[name]] = rng.uniform(lo, hi)
    if preset != "neutral":  # a little of something else: faces are never one pure blendshape
        extra = rng.choice(len(expr_names), size=int(rng.integers(0, 4)), replace=False)
        expr[extra] = np.maximum(expr[extra], rng.uniform(0.0, 0.25, len(extra)))
    pose = np.zeros((5, 3), np.float64)
    pose[JAW, 0] = rng.uniform(*jaw_range)
    n = math.radians(neck_deg)
    pose[NECK] = (rng.uniform(-n, n), rng.uniform(-n, n), rng.uniform(-0.5 * n, 0.5 * n))
    gaze = (rng.uniform(-0.08, 0.06), rng.uniform(-0.12, 0.12), 0.0)
    pose[LEFT_EYE] = pose[RIGHT_EYE] = gaze
    return FaceControls(preset, expr.astype(np.float32), pose.astype(np.float32))
