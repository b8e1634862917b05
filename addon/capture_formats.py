"""Performance-capture files as rig channels, without bpy: Live Link Face / ARKit CSV and FLAME parameter .npz.

A take becomes {channel: values per sample} plus sample times in seconds, in the rig's channels
(`face_motion`): ARKit blendshapes drive shape keys of the same name; jawOpen and eyeLook* drive the jaw and eye
bones exactly as the backend's controls do (`pointillist.avatar.face_angles`); HeadYaw/Pitch/Roll drive the
neck. FLAME sequences (VHAP / GaussianAvatars `flame_param.npz`: expr, jaw_pose, neck_pose, eyes_pose,
rotation, translation, one row per frame) drive Exp000... shape keys and the bones. Anything with no
meaning here is listed in `unused`, so the import can say which curves had no target.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pointillist.avatar.face_angles import ARKIT_52, JAW_OPEN_FULL_DEG, eye_look_offset

from .face_motion import PITCH, ROLL, YAW

#: Live Link Face writes head rotation in radians (HeadYaw, HeadPitch, HeadRoll).
HEAD_COLUMNS = {"headyaw": YAW, "headpitch": PITCH, "headroll": ROLL}
#: Columns Live Link Face writes that are bookkeeping, not curves.
BOOKKEEPING = {"timecode", "blendshapecount"}
#: Per-eye rotation columns Live Link Face adds; the eye bones follow the eyeLook* curves instead.
EYE_ROTATION = re.compile(r"^(left|right)eye(yaw|pitch|roll)$")
_ARKIT_BY_LOWER = {name.lower(): name for name in ARKIT_52}
_MAX_ROWS = 2_000_000


class CaptureFormatError(ValueError):
    """A capture file that cannot be read; the message names the file and what is wrong."""


@dataclass
class CaptureTake:
    times: np.ndarray  # (T,) seconds from the first sample
    shapes: dict[str, np.ndarray] = field(default_factory=dict)  # expression name -> (T,)
    bones: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (bone, euler index) -> (T,) radians
    root_location: np.ndarray | None = None  # (T, 3) head-space metres (FLAME translation), or None
    unused: list[str] = field(default_factory=list)  # columns / keys that drive nothing in our rig
    source_fps: float = 0.0

    @property
    def frames(self) -> int:
        return int(self.times.shape[0])


# ------------------------------------------------------------------------------------------------ rotations
def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: (..., 3) rotation vectors -> (..., 3, 3)."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    axis = aa / np.maximum(angle, 1e-12)
    x, y, z = np.moveaxis(axis, -1, 0)
    zeros = np.zeros_like(x)
    K = np.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], axis=-1).reshape(*aa.shape[:-1], 3, 3)
    s, c = np.sin(angle)[..., None], np.cos(angle)[..., None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def matrix_to_zxy_euler(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) Euler (pitch x, yaw y, roll z) with R = Ry(yaw) Rx(pitch) Rz(roll).

    That is Blender's rotation mode 'ZXY' on a bone whose local axes are head space.
    """
    R = np.asarray(R, dtype=np.float64)
    x = np.arcsin(np.clip(-R[..., 1, 2], -1.0, 1.0))
    y = np.arctan2(R[..., 0, 2], R[..., 2, 2])
    z = np.arctan2(R[..., 1, 0], R[..., 1, 1])
    return np.stack([x, y, z], axis=-1)


def axis_angle_to_zxy_euler(aa: np.ndarray) -> np.ndarray:
    return matrix_to_zxy_euler(axis_angle_to_matrix(aa))


# ------------------------------------------------------------------------------------------------ Live Link Face
def parse_timecode(text: str, fps: float) -> float:
    """Live Link Face 'HH:MM:SS:FF.sub' (or 'HH:MM:SS:FF', or plain seconds) -> seconds."""
    text = text.strip()
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return float(parts[0])
        if len(parts) != 4:
            raise ValueError
        h, m, s = (int(p) for p in parts[:3])
        frame = float(parts[3])
    except ValueError:
        raise CaptureFormatError(f"timecode {text!r}: expected HH:MM:SS:FF[.sub]") from None
    return h * 3600 + m * 60 + s + frame / fps


def read_live_link_csv(path: str | os.PathLike, fps: float = 60.0, head_degrees: bool = False) -> CaptureTake:
    """A Live Link Face / ARKit CSV (Timecode, BlendShapeCount, 52 blendshapes, HeadYaw.., eye rotations)."""
    path = Path(path)
    if fps <= 0 or not math.isfinite(fps):
        raise CaptureFormatError(f"{path.name}: the capture frame rate must be positive")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptureFormatError(f"{path.name}: cannot read ({exc})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2:
        raise CaptureFormatError(f"{path.name}: no samples (need a header row and at least one data row)")
    if len(rows) > _MAX_ROWS:
        raise CaptureFormatError(f"{path.name}: {len(rows)} rows is more than {_MAX_ROWS}")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    if "timecode" not in lower:
        raise CaptureFormatError(f"{path.name}: no Timecode column (is this a Live Link Face CSV?)")
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    if any(len(r) != len(header) for r in body):
        bad = next(i for i, r in enumerate(rows[1:], 2) if len(r) != len(header) and any(c.strip() for c in r))
        raise CaptureFormatError(f"{path.name}: row {bad} has a different number of columns than the header")
    t_col = lower.index("timecode")
    times = np.array([parse_timecode(r[t_col], fps) for r in body])
    take = CaptureTake(times=times - times[0], source_fps=fps)
    if np.any(np.diff(times) < 0):
        raise CaptureFormatError(f"{path.name}: timecodes go backwards")
    jaw = np.zeros(len(body))
    eyes = {"left_eye": np.zeros((len(body), 2)), "right_eye": np.zeros((len(body), 2))}
    eyes_used = False
    for c, (name, key) in enumerate(zip(header, lower)):
        if key in BOOKKEEPING:
            continue
        try:
            values = np.array([float(r[c]) for r in body])
        except ValueError:
            raise CaptureFormatError(f"{path.name}: column {name!r} holds a value that is not a number") from None
        if not np.isfinite(values).all():
            raise CaptureFormatError(f"{path.name}: column {name!r} holds NaN or Inf")
        if key in HEAD_COLUMNS:
            take.bones[("neck", HEAD_COLUMNS[key])] = np.radians(values) if head_degrees else values
        elif key in _ARKIT_BY_LOWER:
            arkit = _ARKIT_BY_LOWER[key]
            if arkit == "jawOpen":
                jaw += np.radians(JAW_OPEN_FULL_DEG) * values
            elif (look := eye_look_offset(arkit, 1.0)) is not None:
                side, dx, dy = look  # degrees per unit value
                eyes[side] += values[:, None] * np.array([dx, dy])
                eyes_used = True
            else:
                take.shapes[arkit] = values
        elif EYE_ROTATION.match(key):
            take.unused.append(f"{name} (the eye bones follow the eyeLook* curves)")
        else:
            take.unused.append(name)
    if "jawopen" in lower:
        take.bones[("jaw", PITCH)] = jaw
    if eyes_used:
        for side, deg in eyes.items():  # gaze (toward the subject's left, up) -> euler (pitch = -up, yaw = left)
            take.bones[(side, YAW)] = np.radians(deg[:, 0])
            take.bones[(side, PITCH)] = -np.radians(deg[:, 1])
    return take


# ------------------------------------------------------------------------------------------------ FLAME
FLAME_BONES = {"rotation": "root", "neck_pose": "neck", "jaw_pose": "jaw"}


def flame_expression_name(i: int) -> str:
    return f"Exp{i:03d}"


def read_flame_npz(path: str | os.PathLike, fps: float = 30.0) -> CaptureTake:
    """A FLAME parameter sequence (.npz of per-frame expr, jaw_pose, neck_pose, eyes_pose, rotation, translation)."""
    path = Path(path)
    if fps <= 0 or not math.isfinite(fps):
        raise CaptureFormatError(f"{path.name}: the capture frame rate must be positive")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except Exception as exc:  # BadZipFile, ValueError (pickled objects), OSError
        raise CaptureFormatError(f"{path.name}: not a readable .npz ({exc})") from None
    per_frame = {k: v for k, v in arrays.items() if k in ("expr", "jaw_pose", "neck_pose", "eyes_pose", "rotation", "translation")}
    if not per_frame:
        raise CaptureFormatError(f"{path.name}: no FLAME sequence keys (expected expr, jaw_pose, neck_pose, eyes_pose, rotation)")
    counts = {k: (v.shape[0] if v.ndim >= 1 else 0) for k, v in per_frame.items()}
    n = max(counts.values())
    expect = {"jaw_pose": 3, "neck_pose": 3, "rotation": 3, "translation": 3, "eyes_pose": 6}
    for k, v in per_frame.items():
        if v.ndim != 2 or v.shape[0] != n or v.dtype.kind not in "fi" or (k in expect and v.shape[1] != expect[k]):
            want = f"({n}, {expect.get(k, 'E')})"
            raise CaptureFormatError(f"{path.name}: key {k!r} must be {want} numbers, got {v.shape} {v.dtype}")
        if not np.isfinite(v).all():
            raise CaptureFormatError(f"{path.name}: key {k!r} holds NaN or Inf")
    if n == 0:
        raise CaptureFormatError(f"{path.name}: the sequence has no frames")
    take = CaptureTake(times=np.arange(n) / fps, source_fps=fps)
    if "expr" in per_frame:
        for i in range(per_frame["expr"].shape[1]):
            take.shapes[flame_expression_name(i)] = per_frame["expr"][:, i].astype(np.float64)
    for key, bone in FLAME_BONES.items():
        if key in per_frame:
            euler = axis_angle_to_zxy_euler(per_frame[key])
            for axis in range(3):
                take.bones[(bone, axis)] = euler[:, axis]
    if "eyes_pose" in per_frame:  # FLAME joint order: left eye (joint 3) then right eye (joint 4)
        for side, cols in (("left_eye", slice(0, 3)), ("right_eye", slice(3, 6))):
            euler = axis_angle_to_zxy_euler(per_frame["eyes_pose"][:, cols])
            for axis in range(3):
                take.bones[(side, axis)] = euler[:, axis]
    if "translation" in per_frame:
        take.root_location = per_frame["translation"].astype(np.float64)
    take.unused += sorted(k for k in arrays if k not in per_frame and k not in ("shape", "static_offset"))
    return take


def read_capture(path: str | os.PathLike, fps: float | None = None, head_degrees: bool = False) -> CaptureTake:
    """Dispatch on the extension (.csv: Live Link Face, .npz: FLAME); `fps` None = the format's default."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_live_link_csv(path, fps or 60.0, head_degrees)
    if suffix == ".npz":
        return read_flame_npz(path, fps or 30.0)
    raise CaptureFormatError(f"{Path(path).name}: unknown capture format (expected a Live Link Face .csv or a FLAME .npz)")
