"""Keyframe values for the one-click "blink and talk" clip, and the channel names the rig is driven through.

No bpy: a clip is a dict {channel: (times in seconds, values)} that `expressions.py` writes as F-curves.
Channels are ("shape", expression name) or ("bone", bone name, euler index). Bones use rotation mode 'ZXY'
with rotation_euler = (pitch, yaw, roll) in radians, the convention of `pointillist.avatar.face_angles`.
"""

from __future__ import annotations

import math

import numpy as np

try:  # the one definition of what jawOpen means (numpy-only backend module, carried by the add-on)
    from pointillist.avatar.face_angles import JAW_OPEN_FULL_DEG
except ImportError:  # pragma: no cover - the extension always carries pointillist
    JAW_OPEN_FULL_DEG = 25.0

Channel = tuple
Clip = dict[Channel, tuple[np.ndarray, np.ndarray]]

#: Euler indices of a bone's rotation_euler in mode 'ZXY'.
PITCH, YAW, ROLL = 0, 1, 2


def shape_path(name: str) -> str:
    """F-curve data path of a shape key's value (on the mesh's Key datablock)."""
    return f'key_blocks["{name}"].value'


def bone_path(bone: str) -> str:
    """F-curve data path of a pose bone's Euler rotation (on the armature object)."""
    return f'pose.bones["{bone}"].rotation_euler'


def blink_and_talk(expr_names: list[str], seconds: float = 3.0) -> Clip:
    """A short, readable clip: two blinks, six syllables of jaw motion with lip shapes, a smile, a head turn.

    Key poses rather than dense samples, so an artist can edit the curves afterwards.
    """
    have = set(expr_names)
    clip: Clip = {}

    def add(channel: Channel, times, values) -> None:
        if channel[0] == "shape" and channel[1] not in have:
            return
        clip[channel] = (np.asarray(times, dtype=np.float64), np.asarray(values, dtype=np.float64))

    for side in ("Left", "Right"):
        times, values = [0.0], [0.0]
        for t in (0.8, 2.3):
            times += [t - 0.08, t, t + 0.12]
            values += [0.0, 1.0, 0.0]
        add(("shape", f"eyeBlink{side}"), times + [seconds], values + [0.0])
    syllables = np.linspace(0.3, seconds - 0.5, 6)
    jaw_t, jaw_v = [0.0], [0.0]
    for k, t in enumerate(syllables):
        opening = (0.35 + 0.25 * (k % 3 == 1)) * math.radians(JAW_OPEN_FULL_DEG)
        jaw_t += [t, t + 0.14]
        jaw_v += [opening, 0.05 * opening]
    add(("bone", "jaw", PITCH), jaw_t + [seconds], jaw_v + [0.0])
    add(("shape", "mouthFunnel"), [0.0, syllables[1], syllables[1] + 0.2, syllables[2], seconds], [0, 0.5, 0.1, 0.0, 0])
    add(("shape", "mouthPucker"), [0.0, syllables[3], syllables[3] + 0.25, seconds], [0, 0.6, 0.0, 0])
    for side in ("Left", "Right"):
        add(("shape", f"mouthSmile{side}"), [0.0, 1.0, 2.0, seconds], [0.0, 0.7, 0.6, 0.0])
    add(("shape", "browInnerUp"), [0.0, 1.0, 1.6, seconds], [0.0, 0.4, 0.0, 0.0])
    add(("bone", "neck", YAW), [0.0, 1.2, 2.4, seconds], [0.0, math.radians(7), math.radians(-5), 0.0])
    add(("bone", "neck", PITCH), [0.0, 1.5, seconds], [0.0, math.radians(3), 0.0])
    for eye in ("left_eye", "right_eye"):
        add(("bone", eye, YAW), [0.0, 1.0, 2.0, seconds], [0.0, math.radians(8), math.radians(-6), 0.0])
    return clip
