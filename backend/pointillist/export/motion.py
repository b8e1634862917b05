"""Per-frame poses for sequence and animation exports.

Frames are numbered from 1 like Blender's (frame f is at time (f - 1) / fps), so `frame_0001.ply` is the
first frame. Three sources:

- `"talk"`: the speech-like motion the talking previews use (`controls.talk_controls`), any length;
- a FaceControls JSON: `{"fps": 25, "frames": [{"expressions": {...}, "jaw_deg": 5, ...}, ...]}`;
- a FLAME parameter file (`.npz` in GaussianAvatars' `flame_param.npz` layout): per-timestep `expr`,
  `rotation`, `neck_pose`, `jaw_pose`, `eyes_pose` (left then right eye), `translation`.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..avatar.controls import FaceControls, talk_controls
from ..head.data import JOINT_NAMES
from .errors import ExportError
from .posing import FramePose

DEFAULT_FPS = 25.0
#: FLAME pose keys of GaussianAvatars' flame_param.npz -> our joints (eyes_pose holds both eyes).
_FLAME_POSE_KEYS = {"rotation": "root", "neck_pose": "neck", "jaw_pose": "jaw"}


class MotionError(ExportError):
    """A motion source that cannot drive this head model (unreadable file, wrong shapes, frame out of range)."""


@dataclass(frozen=True)
class FrameRange:
    """Inclusive, 1-based frame numbers `first..last`."""

    first: int
    last: int

    def __post_init__(self):
        if self.first < 1 or self.last < self.first:
            raise MotionError(f"frame range {self.first}:{self.last}: frames start at 1 and last >= first")

    @classmethod
    def parse(cls, text: str) -> FrameRange:
        """'1:50' or '7' (one frame)."""
        first, sep, last = text.partition(":")
        try:
            a = int(first)
            b = int(last) if sep else a
        except ValueError:
            raise MotionError(f"frame range {text!r}: expected FIRST:LAST, e.g. 1:50") from None
        return cls(a, b)

    def __iter__(self):
        return iter(range(self.first, self.last + 1))

    def __len__(self) -> int:
        return self.last - self.first + 1


@dataclass
class Motion:
    """A finite motion (files) or a function of time (built-in), sampled per frame number."""

    name: str
    fps: float
    expr_names: list[str]
    frames: list[FramePose] | None = None  # None: procedural, `_procedural` gives any frame
    seed: int = 0

    @property
    def num_frames(self) -> int | None:
        return None if self.frames is None else len(self.frames)

    def frame(self, number: int) -> FramePose:
        if number < 1:
            raise MotionError(f"frame {number}: frames start at 1")
        if self.frames is None:
            t = (number - 1) / self.fps
            return FramePose.from_controls(talk_controls(t, self.seed), self.expr_names, strict=False)
        if number > len(self.frames):
            raise MotionError(f"frame {number}: motion {self.name!r} has {len(self.frames)} frames")
        return self.frames[number - 1]

    def default_range(self) -> FrameRange:
        """Every frame of a file motion; four seconds of the built-in one."""
        n = self.num_frames or round(4 * self.fps)
        return FrameRange(1, n)


def load_motion(source: str, expr_names: list[str], head_is_flame: bool, fps: float | None = None) -> Motion:
    """`"talk"`, a `.json` controls sequence or a FLAME `.npz`; `fps` overrides the file's own."""
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise MotionError(f"fps must be a positive number, got {fps}")
    if source == "talk":
        return Motion("talk", fps or DEFAULT_FPS, list(expr_names))
    path = Path(source)
    if not path.is_file():
        raise MotionError(f"motion {source!r}: not 'talk' and no such file (expected .json controls or a FLAME .npz)")
    if path.suffix.lower() == ".json":
        return _controls_motion(path, expr_names, fps)
    if path.suffix.lower() == ".npz":
        return _flame_motion(path, expr_names, head_is_flame, fps)
    raise MotionError(f"motion {source!r}: unknown file type (expected .json controls or a FLAME .npz)")


def _controls_motion(path: Path, expr_names: list[str], fps: float | None) -> Motion:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MotionError(f"{path}: unreadable controls JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), list) or not doc["frames"]:
        raise MotionError(f"{path}: expected an object with a non-empty 'frames' list")
    allowed = {f.name for f in fields(FaceControls)}
    frames = []
    for i, item in enumerate(doc["frames"], start=1):
        if not isinstance(item, dict) or set(item) - allowed:
            extra = sorted(set(item) - allowed) if isinstance(item, dict) else []
            raise MotionError(f"{path}: frame {i}: expected an object with keys from {sorted(allowed)}"
                              + (f"; unknown {extra}" if extra else ""))
        try:
            controls = FaceControls(**{**item, "gaze_deg": tuple(item.get("gaze_deg", (0.0, 0.0)))})
            frames.append(FramePose.from_controls(controls, expr_names))
        except (TypeError, ValueError) as exc:
            raise MotionError(f"{path}: frame {i}: {exc}") from None
    file_fps = doc.get("fps", DEFAULT_FPS)
    if not isinstance(file_fps, (int, float)) or not file_fps > 0:
        raise MotionError(f"{path}: 'fps' must be a positive number")
    return Motion(path.name, fps or float(file_fps), list(expr_names), frames)


def _flame_motion(path: Path, expr_names: list[str], head_is_flame: bool, fps: float | None) -> Motion:
    try:
        with np.load(path, allow_pickle=False) as npz:
            params = {k: np.asarray(npz[k], dtype=np.float64) for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MotionError(f"{path}: unreadable FLAME parameter file ({exc})") from None
    per_frame = {k: v for k, v in params.items() if k in (*_FLAME_POSE_KEYS, "eyes_pose", "expr", "translation")}
    if not per_frame:
        raise MotionError(f"{path}: none of expr, rotation, neck_pose, jaw_pose, eyes_pose, translation")
    lengths = {k: v.shape[0] for k, v in per_frame.items() if v.ndim == 2}
    widths = {"expr": None, "eyes_pose": 6, "translation": 3, **{k: 3 for k in _FLAME_POSE_KEYS}}
    for key, value in per_frame.items():
        if value.ndim != 2 or (widths[key] is not None and value.shape[1] != widths[key]):
            want = f"(T, {widths[key]})" if widths[key] else "(T, E)"
            raise MotionError(f"{path}: key {key!r} must be {want}, got {value.shape}")
        if not np.isfinite(value).all():
            raise MotionError(f"{path}: key {key!r} contains NaN or Inf")
    if len(set(lengths.values())) != 1:
        raise MotionError(f"{path}: per-frame keys disagree on the frame count: {lengths}")
    count = next(iter(lengths.values()))
    expr = per_frame.get("expr")
    if expr is not None and expr.any() and not head_is_flame:
        raise MotionError(f"{path}: FLAME expression coefficients need a FLAME head model (pass --head with one); "
                          f"this head's expressions are {', '.join(expr_names[:3])}...")
    if expr is not None and expr.shape[1] > len(expr_names):
        if expr[:, len(expr_names):].any():
            raise MotionError(f"{path}: key 'expr' uses {expr.shape[1]} coefficients; the head model has {len(expr_names)}")
        expr = expr[:, : len(expr_names)]
    frames = []
    for t in range(count):
        pose = np.zeros((len(JOINT_NAMES), 3))
        for key, joint in _FLAME_POSE_KEYS.items():
            if key in per_frame:
                pose[JOINT_NAMES.index(joint)] = per_frame[key][t]
        if "eyes_pose" in per_frame:
            pose[JOINT_NAMES.index("left_eye")] = per_frame["eyes_pose"][t, :3]
            pose[JOINT_NAMES.index("right_eye")] = per_frame["eyes_pose"][t, 3:]
        frames.append(FramePose.from_arrays(len(expr_names), None if expr is None else expr[t], pose,
                                            per_frame["translation"][t] if "translation" in per_frame else None))
    return Motion(path.name, fps or DEFAULT_FPS, list(expr_names), frames)
