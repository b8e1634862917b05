"""Real captures as training subjects: GaussianAvatars outputs + NeRSemble-style cameras -> `SubjectRecord` shards.

Per subject we need what the synthetic engine gives (`train.dataset`): canonical Gaussians bound to
the head's triangles, AR targets, the identity shape and V views framed like the portrait pipeline's
aligned crop, with cameras that map head space onto the stored pixels.

Inputs (field names as GaussianAvatars reads them, `scene/dataset_readers.py` of ShenhanQian/GaussianAvatars):

* the trained model: ``point_cloud.ply`` + ``flame_param.npz`` side by side (either in the folder given or
  in its ``point_cloud/iteration_N/``, the highest N), read by `avatar.gaussian_avatars.read_gaussian_avatars`.
  The npz holds the fitted identity (``shape``, ``static_offset``) and per-timestep ``expr``, ``rotation``,
  ``neck_pose``, ``jaw_pose``, ``eyes_pose`` (6 = left, right), ``translation``.
* the data folder: ``transforms_{train,val,test}.json`` with ``frames``: ``file_path`` (relative to the
  folder; ``.png`` appended when it has no extension, as GaussianAvatars does), ``transform_matrix``
  (camera-to-world, OpenGL axes: y up, z back), intrinsics ``fl_x fl_y cx cy`` or ``camera_angle_x``
  (per frame or at the top level, centred principal point then), ``w h``, ``timestep_index``,
  ``camera_index``, optional ``flame_param_path`` (a per-timestep npz) and ``fg_mask_path``. The
  alpha comes from ``fg_mask_path`` or the image's own alpha channel; one of them is required.
  The data folder is the model folder itself when it holds the transforms, else ``--data``, else the
  ``source_path`` GaussianAvatars recorded in the model's ``cfg_args`` (read as text, never evaluated).

Geometry. GaussianAvatars' FLAME poses the mesh as LBS(shape, expr, [rotation, neck, jaw, eyes]) +
translation. Linear blend skinning commutes with a rigid transform applied on the left, so
LBS with the root rotation equals root transform ∘ LBS with the root at rest: we fold the root
rotation and the translation into the camera (``viewmat = world->camera ∘ root``) and store the rest
(neck, jaw, eyes; expression) as the view's ``poses`` / ``expressions``, exactly the synthetic engine's
convention (head space; a view is posed when those are non-zero). The crop is the portrait pipeline's:
the head model's 478 MediaPipe landmarks of that timestep are projected with the real camera,
`preprocess.align.crop_transform` gives the similarity, `dataset.aligned_camera` folds it into the
camera, and the real image (and its mask) is warped into the crop by the same map with
`preprocess.align.warp` (Lanczos pre-reduction + bicubic). Non-square pixels (fx != fy) are first
mapped to a square-pixel camera with fx, an exact affine pixel map folded into the same warp.

View choice: timesteps are ranked by how neutral they are (|expr|² + |jaw|² + |neck|²); view 0 is the
most frontal camera of the most neutral timestep (the portrait), the other views are its other
cameras picked farthest-first in (yaw, pitch), then the next most neutral timestep's if more are needed.

Limits: the record has no per-vertex identity offsets, so GaussianAvatars' ``static_offset`` is used to
place the Gaussians but is not stored (`identity_offset_mm` in `sources.json` says how large it was);
``dynamic_offset`` is ignored; images are taken as undistorted (GaussianAvatars' own assumption).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from .dataset import (
    CROP_SIZE,
    GENERATOR_VERSION,
    INDEX_NAME,
    DatasetConfig,
    DatasetError,
    DatasetIndex,
    SubjectRecord,
    aligned_camera,
    sample_background,
    shard_file_name,
    subject_split,
    voxel_subsample,
    write_shard,
)

TRANSFORMS_FILES = ("transforms_train.json", "transforms_val.json", "transforms_test.json")
SOURCES_NAME = "sources.json"
REAL_STYLE = "real"
_BACKGROUND_STREAM = 201
_ITERATION_RE = re.compile(r"^iteration_(\d+)$")
_SOURCE_PATH_RE = re.compile(r"source_path=(['\"])(.*?)\1")


class RealDataError(DatasetError):
    """A GaussianAvatars / NeRSemble input the user can fix; the message names the file and field."""


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class Frame:
    """One image of the capture with its camera (OpenCV world->camera) and its timestep."""

    source: Path  # the transforms file
    index: int  # position in its frames list
    image: Path
    mask: Path | None
    world_to_camera: np.ndarray  # (4, 4) float64, OpenCV axes
    K: np.ndarray  # (3, 3) float64
    width: int | None
    height: int | None
    timestep: int
    camera: int | None
    flame_param: Path | None

    @property
    def where(self) -> str:
        return f"{self.source} frames[{self.index}]"


def find_model_files(model_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(point_cloud.ply, flame_param.npz) of a GaussianAvatars output folder (or of its latest iteration)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise RealDataError(f"{root}: not a folder (expected a GaussianAvatars output folder)")
    candidates = [root]
    pc = root / "point_cloud"
    if pc.is_dir():
        its = sorted(((int(m.group(1)), p) for p in pc.iterdir() if (m := _ITERATION_RE.match(p.name)) and p.is_dir()),
                     reverse=True)
        candidates += [p for _, p in its]
    for folder in candidates:
        ply, npz = folder / "point_cloud.ply", folder / "flame_param.npz"
        if ply.is_file():
            if not npz.is_file():
                raise RealDataError(f"{npz}: missing (GaussianAvatars saves flame_param.npz next to {ply.name})")
            return ply, npz
    raise RealDataError(f"{root}: no point_cloud.ply here or in point_cloud/iteration_*/")


def find_data_dir(model_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding transforms_*.json: ``data_dir``, the model folder, or cfg_args' source_path."""
    if data_dir is not None:
        d = Path(data_dir)
        if not any((d / n).is_file() for n in TRANSFORMS_FILES):
            raise RealDataError(f"{d}: none of {', '.join(TRANSFORMS_FILES)} found")
        return d
    root = Path(model_dir)
    if any((root / n).is_file() for n in TRANSFORMS_FILES):
        return root
    cfg = root / "cfg_args"
    if cfg.is_file():
        m = _SOURCE_PATH_RE.search(cfg.read_text(encoding="utf-8", errors="replace"))
        if m and any((Path(m.group(2)) / n).is_file() for n in TRANSFORMS_FILES):
            return Path(m.group(2))
        if m:
            raise RealDataError(f"{cfg}: source_path {m.group(2)!r} holds no transforms_*.json; pass the data folder with --data")
    raise RealDataError(f"{root}: no transforms_*.json here and no usable cfg_args; pass the data folder with --data")


def _number(value, where: str, field: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (positive and value <= 0):
        raise RealDataError(f"{where}: field {field!r} must be a {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def _int_field(value, where: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RealDataError(f"{where}: field {field!r} must be a non-negative integer, got {value!r}")
    return value


def _relative(data_dir: Path, text, where: str, field: str, default_ext: str | None = None) -> Path:
    if not isinstance(text, str) or not text:
        raise RealDataError(f"{where}: field {field!r} must be a non-empty path string, got {text!r}")
    p = Path(text)
    if default_ext and not p.suffix:
        p = p.with_name(p.name + default_ext)
    return p if p.is_absolute() else data_dir / p


def _camera_to_world(value, where: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        m = np.zeros(0)
    if m.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(m)):
        raise RealDataError(f"{where}: field 'transform_matrix' must be a finite 4x4 (or 3x4) matrix")
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    R = m[:3, :3]
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6) or not np.allclose(R.T @ R, np.eye(3), atol=1e-3) or np.linalg.det(R) <= 0:
        raise RealDataError(f"{where}: field 'transform_matrix' is not a rigid camera-to-world transform")
    return m


def opengl_c2w_to_viewmat(c2w: np.ndarray) -> np.ndarray:
    """NeRF/OpenGL camera-to-world (y up, z back) -> OpenCV world-to-camera (y down, z forward)."""
    m = np.array(c2w, dtype=np.float64)
    m[:3, 1:3] *= -1.0
    R, t = m[:3, :3], m[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def read_transforms(data_dir: str | os.PathLike) -> list[Frame]:
    """Every frame of the data folder's transforms_{train,val,test}.json (those that exist)."""
    data_dir = Path(data_dir)
    frames: list[Frame] = []
    for name in TRANSFORMS_FILES:
        path = data_dir / name
        if not path.is_file():
            continue
        try:
            contents = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RealDataError(f"{path}: unreadable JSON ({exc})") from None
        if not isinstance(contents, dict) or not isinstance(contents.get("frames"), list):
            raise RealDataError(f"{path}: field 'frames' (a list) missing")
        for i, frame in enumerate(contents["frames"]):
            where = f"{path} frames[{i}]"
            if not isinstance(frame, dict):
                raise RealDataError(f"{where}: must be an object")

            def get(key: str, default=None, frame=frame, contents=contents):
                return frame.get(key, contents.get(key, default))

            if "file_path" not in frame:
                raise RealDataError(f"{where}: field 'file_path' missing")
            if "transform_matrix" not in frame:
                raise RealDataError(f"{where}: field 'transform_matrix' missing")
            image = _relative(data_dir, frame["file_path"], where, "file_path", ".png")
            mask = None if frame.get("fg_mask_path") is None else _relative(data_dir, frame["fg_mask_path"], where, "fg_mask_path")
            flame = None if frame.get("flame_param_path") is None else _relative(data_dir, frame["flame_param_path"], where, "flame_param_path")
            w = None if get("w") is None else int(_number(get("w"), where, "w", positive=True))
            h = None if get("h") is None else int(_number(get("h"), where, "h", positive=True))
            K = _intrinsics(get, w, h, where)
            frames.append(Frame(
                source=path, index=i, image=image, mask=mask,
                world_to_camera=opengl_c2w_to_viewmat(_camera_to_world(frame["transform_matrix"], where)),
                K=K, width=w, height=h,
                timestep=_int_field(frame.get("timestep_index", 0), where, "timestep_index"),
                camera=None if frame.get("camera_index") is None else _int_field(frame["camera_index"], where, "camera_index"),
                flame_param=flame))
    if not frames:
        raise RealDataError(f"{data_dir}: no frames in {', '.join(TRANSFORMS_FILES)}")
    return frames


def _intrinsics(get: Callable, w: int | None, h: int | None, where: str) -> np.ndarray:
    """K from ``fl_x fl_y cx cy`` or from ``camera_angle_x`` (+ optional ``camera_angle_y``), per frame or global."""
    if get("fl_x") is not None:
        fx = _number(get("fl_x"), where, "fl_x", positive=True)
        fy = _number(get("fl_y", fx), where, "fl_y", positive=True)
    elif get("camera_angle_x") is not None:
        if w is None:
            raise RealDataError(f"{where}: field 'w' is needed with 'camera_angle_x'")
        ax = _number(get("camera_angle_x"), where, "camera_angle_x", positive=True)
        fx = 0.5 * w / math.tan(0.5 * ax)
        fy = fx
        if get("camera_angle_y") is not None:
            if h is None:
                raise RealDataError(f"{where}: field 'h' is needed with 'camera_angle_y'")
            fy = 0.5 * h / math.tan(0.5 * _number(get("camera_angle_y"), where, "camera_angle_y", positive=True))
    else:
        raise RealDataError(f"{where}: no intrinsics (fields 'fl_x'/'fl_y' or 'camera_angle_x', per frame or top level)")
    if get("cx") is None and w is None or get("cy") is None and h is None:
        raise RealDataError(f"{where}: fields 'cx'/'cy' missing and no 'w'/'h' to centre the principal point")
    cx = _number(get("cx"), where, "cx") if get("cx") is not None else 0.5 * w
    cy = _number(get("cy"), where, "cy") if get("cy") is not None else 0.5 * h
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------- FLAME per timestep
@dataclass
class TimestepPose:
    expression: np.ndarray  # (E,) float64, the head model's width
    pose: np.ndarray  # (5, 3) float64 axis-angle: root, neck, jaw, left eye, right eye
    translation: np.ndarray  # (3,)

    @property
    def neutrality(self) -> float:
        """Lower is more neutral: |expr|² + |jaw|² + |neck|² (radians)."""
        return float((self.expression ** 2).sum() + (self.pose[2] ** 2).sum() + (self.pose[1] ** 2).sum())


_POSE_KEYS = {"rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}


def _load_params(path: Path) -> dict[str, np.ndarray]:
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise RealDataError(f"{path}: FLAME parameter file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        raise RealDataError(f"{path}: unreadable FLAME parameters ({exc})") from None


def _per_timestep(params: dict[str, np.ndarray], key: str, width: int, path: Path) -> np.ndarray | None:
    if key not in params:
        return None
    a = np.asarray(params[key], dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or (key != "expr" and a.shape[1] != width):
        raise RealDataError(f"{path}: key {key!r} must be (T, {width if key != 'expr' else 'E'}), got {np.shape(params[key])}")
    if not np.all(np.isfinite(a)):
        raise RealDataError(f"{path}: key {key!r} contains NaN or Inf")
    return a


class FlameSequence:
    """Per-timestep FLAME parameters of one npz, validated once (a capture has thousands of timesteps)."""

    def __init__(self, params: dict[str, np.ndarray], path: Path, num_expr: int):
        self.path = path
        self.num_expr = num_expr
        self.arrays = {k: _per_timestep(params, k, w, path) for k, w in _POSE_KEYS.items()}
        self.arrays["expr"] = _per_timestep(params, "expr", 0, path)
        lengths = {k: len(a) for k, a in self.arrays.items() if a is not None}
        if not lengths:
            raise RealDataError(f"{path}: none of the keys expr, rotation, neck_pose, jaw_pose, eyes_pose, translation")
        if len(set(lengths.values())) > 1:
            raise RealDataError(f"{path}: per-timestep keys disagree on the number of timesteps ({lengths})")
        self.timesteps = next(iter(lengths.values()))

    def __getitem__(self, t: int) -> TimestepPose | None:
        """Timestep ``t`` (None when the file has fewer timesteps); missing keys are zero."""
        if not 0 <= t < self.timesteps:
            return None

        def row(k: str, w: int) -> np.ndarray:
            return np.zeros(w) if self.arrays[k] is None else self.arrays[k][t]

        expr = row("expr", 0)
        n = self.num_expr
        if len(expr) > n and np.any(expr[n:] != 0):
            raise RealDataError(f"{self.path}: key 'expr' uses {len(expr)} coefficients at timestep {t}, the head model has "
                                f"{n}; convert FLAME with more expression components")
        expr = np.pad(expr[:n], (0, max(0, n - len(expr))))
        eyes = row("eyes_pose", 6)
        pose = np.stack([row("rotation", 3), row("neck_pose", 3), row("jaw_pose", 3), eyes[:3], eyes[3:]])
        return TimestepPose(expr, pose, row("translation", 3))


# ---------------------------------------------------------------------------------------------- the importer
@dataclass
class ImportedView:
    frame: Frame
    pose: TimestepPose
    viewmat: np.ndarray  # (4, 4) head space -> OpenCV camera of the real image (root folded in)
    landmarks: np.ndarray  # (478, 3) head-space landmarks at this timestep (root at rest)
    yaw_pitch: tuple[float, float]


def _head_transforms(head, shape: np.ndarray, offsets: np.ndarray | None, tp: TimestepPose):
    """(root transform (4, 4) incl. translation, head-space landmarks with the root at rest (478, 3))."""
    from ..head.fit import model_landmarks

    with torch.no_grad():
        kw = {"offsets": None if offsets is None else torch.as_tensor(offsets, dtype=torch.float32)[None]}
        full = head(shape=torch.as_tensor(shape, dtype=torch.float32)[None], expression=torch.as_tensor(tp.expression, dtype=torch.float32)[None],
                    pose=torch.as_tensor(tp.pose, dtype=torch.float32)[None], translation=torch.as_tensor(tp.translation, dtype=torch.float32)[None], **kw)
        rootless = tp.pose.copy()
        rootless[0] = 0.0
        rest = head(shape=torch.as_tensor(shape, dtype=torch.float32)[None], expression=torch.as_tensor(tp.expression, dtype=torch.float32)[None],
                    pose=torch.as_tensor(rootless, dtype=torch.float32)[None], **kw)
        landmarks = model_landmarks(head, rest.vertices)[0].double().numpy()
    return full.joint_transforms[0, 0].double().numpy(), landmarks


def _yaw_pitch(viewmat: np.ndarray, landmarks: np.ndarray) -> tuple[float, float]:
    """The camera's orbit angles around the face (orbit_viewmat's convention: yaw 0 pitch 0 on +Z)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    d = -R.T @ t - landmarks.mean(0)
    return math.degrees(math.atan2(d[0], d[2])), math.degrees(math.atan2(d[1], math.hypot(d[0], d[2])))


def _choose(chosen: list[ImportedView], candidates: list[ImportedView], n: int) -> list[ImportedView]:
    """Up to ``n`` more views from ``candidates``, farthest-first in (yaw, pitch) from those already chosen."""
    rest = list(candidates)
    picked: list[ImportedView] = []
    while rest and len(picked) < n:
        have = chosen + picked
        if not have:  # the portrait: the most frontal camera
            j = min(range(len(rest)), key=lambda i: math.hypot(*rest[i].yaw_pitch))
        else:
            d = [min(math.hypot(c.yaw_pitch[0] - s.yaw_pitch[0], c.yaw_pitch[1] - s.yaw_pitch[1]) for s in have) for c in rest]
            j = int(np.argmax(d))
        picked.append(rest.pop(j))
    return picked


def _read_image(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (H, W, 3) uint8, alpha (H, W) uint8) from the image and its mask or alpha channel."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(frame.image) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            rgba = np.asarray(im.convert("RGBA"))
    except FileNotFoundError:
        raise RealDataError(f"{frame.where}: image {frame.image} not found (field 'file_path')") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise RealDataError(f"{frame.where}: unreadable image {frame.image} ({exc})") from None
    h, w = rgba.shape[:2]
    if (frame.width is not None and frame.width != w) or (frame.height is not None and frame.height != h):
        raise RealDataError(f"{frame.where}: image {frame.image} is {w}x{h}, fields 'w'/'h' say {frame.width}x{frame.height}")
    if frame.mask is not None:
        try:
            with Image.open(frame.mask) as m:
                alpha = np.asarray(m.convert("L"))
        except FileNotFoundError:
            raise RealDataError(f"{frame.where}: mask {frame.mask} not found (field 'fg_mask_path')") from None
        except (OSError, UnidentifiedImageError) as exc:
            raise RealDataError(f"{frame.where}: unreadable mask {frame.mask} ({exc})") from None
        if alpha.shape != (h, w):
            raise RealDataError(f"{frame.where}: mask {frame.mask} is {alpha.shape[1]}x{alpha.shape[0]}, the image {w}x{h}")
    elif has_alpha:
        alpha = rgba[..., 3]
    else:
        raise RealDataError(f"{frame.where}: no foreground alpha: give 'fg_mask_path' or an image with an alpha channel")
    return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(alpha)


def crop_view(rgb: np.ndarray, alpha: np.ndarray, view: ImportedView, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Warp a real image into the portrait crop: (rgb (S, S, 3) uint8, alpha (S, S) uint8, viewmat, K of the crop)."""
    from ..preprocess.align import CropTransform, crop_transform, warp
    from ..render.camera import project_points

    K = view.frame.K
    # square pixels: u' = u, v' = cy + (v - cy) fx / fy (exact for a pinhole camera)
    sy = K[0, 0] / K[1, 1]
    to_square = np.array([[1.0, 0.0, 0.0], [0.0, sy, K[1, 2] * (1.0 - sy)]])
    K_sq = K.copy()
    K_sq[1, 1] = K[0, 0]
    uv, z = project_points(view.landmarks, view.viewmat, K_sq)
    if np.any(z <= 0):
        raise RealDataError(f"{view.frame.where}: the face is behind this camera (check 'transform_matrix' and the FLAME translation)")
    crop = crop_transform(uv, CROP_SIZE)
    viewmat, K_crop = aligned_camera(view.landmarks, view.viewmat, K_sq, size)
    k = size / CROP_SIZE
    A = k * crop.matrix[:, :2] @ to_square[:, :2]
    t = k * (crop.matrix[:, :2] @ to_square[:, 2] + crop.matrix[:, 2])
    transform = CropTransform(np.concatenate([A, t[:, None]], 1), size)
    return warp(rgb, transform), warp(alpha, transform, fill=0), viewmat, K_crop


def import_subject(model_dir: str | os.PathLike, head, config: DatasetConfig, subject_id: int, *,
                   data_dir: str | os.PathLike | None = None, background: str = "random") -> tuple[SubjectRecord, dict]:
    """One GaussianAvatars subject as a `SubjectRecord` (config: views, image_size, AR voxel, split) + provenance."""
    from ..avatar.gaussian_avatars import read_gaussian_avatars
    from ..avatar.gaussians import AvatarFormatError

    if background not in ("random", "keep"):
        raise RealDataError(f"background must be 'random' or 'keep', got {background!r}")
    if head.data.landmark_faces is None:
        raise RealDataError(f"head model {head.model_id!r} has no MediaPipe landmark mapping, needed to frame the crop; "
                            "convert FLAME with `pointillist head import-flame` (landmarks on by default) or run "
                            "`pointillist head calibrate-landmarks` on it")
    ply, npz = find_model_files(model_dir)
    data = find_data_dir(model_dir, data_dir)
    try:
        avatar = read_gaussian_avatars(ply, npz, head)
    except AvatarFormatError as exc:
        raise RealDataError(str(exc)) from None
    shape = np.asarray(avatar.identity.shape, np.float64)
    offsets = None if avatar.identity.vertex_offsets is None else np.asarray(avatar.identity.vertex_offsets, np.float64)
    sequence = FlameSequence(_load_params(npz), npz, head.num_expr)
    frames = read_transforms(data)

    # FLAME parameters per timestep: the model's fine-tuned ones, else the frame's own file
    poses: dict[int, TimestepPose] = {}
    for f in frames:
        if f.timestep in poses:
            continue
        tp = sequence[f.timestep]
        if tp is None and f.flame_param is not None:
            tp = FlameSequence(_load_params(f.flame_param), f.flame_param, head.num_expr)[0]
        if tp is None:
            raise RealDataError(f"{f.where}: timestep_index {f.timestep} is beyond the timesteps in {npz} "
                                "and the frame has no 'flame_param_path'")
        poses[f.timestep] = tp
    V = config.views
    if len(frames) < V:
        raise RealDataError(f"{data}: {len(frames)} frame(s), {V} view(s) asked; lower --views")

    chosen: list[ImportedView] = []
    for t in sorted(poses, key=lambda t: (poses[t].neutrality, t)):
        root, landmarks = _head_transforms(head, shape, offsets, poses[t])
        views = []
        for f in sorted((f for f in frames if f.timestep == t), key=lambda f: (f.camera is None, f.camera, str(f.image))):
            vm = f.world_to_camera @ root
            views.append(ImportedView(f, poses[t], vm, landmarks, _yaw_pitch(vm, landmarks)))
        chosen += _choose(chosen, views, V - len(chosen))
        if len(chosen) >= V:
            break

    S = config.image_size
    images, masks, viewmats, Ks = [], [], [], []
    for v, view in enumerate(chosen):
        rgb, alpha, viewmat, K = crop_view(*_read_image(view.frame), view, S)
        if background == "random":
            bg = sample_background(np.random.default_rng([config.seed, _BACKGROUND_STREAM, subject_id, v]), S)
            a = alpha.astype(np.float64)[..., None] / 255.0
            rgb = (np.clip(rgb / 255.0 * a + bg * (1.0 - a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        images.append(rgb)
        masks.append(alpha)
        viewmats.append(viewmat)
        Ks.append(K)

    g = avatar.gaussians
    binding = np.asarray(avatar.binding.triangles).astype(np.int32)
    ar_points, ar_binding, _ = voxel_subsample(g.means, g.opacity_logits, binding, config.ar_voxel_m, config.ar_min_opacity)
    expressions = np.stack([v.pose.expression for v in chosen]).astype(np.float32)
    view_poses = np.stack([v.pose.pose for v in chosen]).astype(np.float32)
    view_poses[:, 0] = 0.0  # the root is folded into the camera
    record = SubjectRecord(
        subject_id=subject_id, split=subject_split(config, subject_id), style=REAL_STYLE, beard=False,
        shape=shape.astype(np.float32), means=np.asarray(g.means, np.float32), log_scales=np.asarray(g.log_scales, np.float32),
        quats=np.asarray(g.quats, np.float32), opacity_logits=np.asarray(g.opacity_logits, np.float32),
        sh_dc=np.asarray(g.sh_dc, np.float32), binding=binding, ar_points=ar_points, ar_binding=ar_binding,
        images=np.stack(images), masks=np.stack(masks), viewmats=np.stack(viewmats).astype(np.float32),
        Ks=np.stack(Ks).astype(np.float32), view_yaw_pitch=np.asarray([v.yaw_pitch for v in chosen], np.float32),
        expressions=expressions, poses=view_poses,
    )
    provenance = {
        "id": subject_id, "model": str(Path(model_dir)), "data": str(data), "point_cloud": str(ply), "flame_param": str(npz),
        "identity_offset_mm": 0.0 if offsets is None else round(float(np.linalg.norm(offsets, axis=1).max() * 1000), 3),
        "views": [{"file_path": str(v.frame.image), "transforms": v.frame.source.name, "frame": v.frame.index,
                   "timestep_index": v.frame.timestep, "camera_index": v.frame.camera,
                   "yaw_deg": round(v.yaw_pitch[0], 2), "pitch_deg": round(v.yaw_pitch[1], 2),
                   "neutrality": round(v.pose.neutrality, 6)} for v in chosen],
    }
    return record, provenance


@dataclass
class ImportSummary:
    root: Path
    subjects: int
    shards: int
    splits: dict

    def to_json(self) -> dict:
        return {"dir": str(self.root), "subjects": self.subjects, "shards": self.shards, "splits": self.splits}


def import_gaussian_avatars(sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike, head, *,
                            data_dirs: Sequence[str | os.PathLike | None] | None = None, views: int = 4,
                            image_size: int = 224, shard_size: int = 32, heldout_every: int = 10,
                            ar_voxel_m: float = 0.010, seed: int = 0, background: str = "random",
                            progress: Callable[[int, int, Path], None] | None = None) -> ImportSummary:
    """Import GaussianAvatars subjects (one per source folder, ids in order) into a new dataset folder.

    Writes ``shard-*.npz`` + ``index.json`` in `train.dataset`'s format (so `SubjectDataset`,
    `StreamingSubjects`, ``dataset card`` and ``dataset verify`` read it unchanged) and ``sources.json``
    (where each subject and view came from). The index is rewritten after every shard, atomically.
    """
    sources = [Path(s) for s in sources]
    if not sources:
        raise RealDataError("no GaussianAvatars folders given")
    if data_dirs is not None and len(data_dirs) not in (0, len(sources)):
        raise RealDataError(f"--data given {len(data_dirs)} time(s) for {len(sources)} source folder(s); give it once per source, in order")
    data_dirs = list(data_dirs) if data_dirs else [None] * len(sources)
    config = DatasetConfig(subjects=len(sources), views=views, image_size=image_size, shard_size=shard_size,
                           heldout_every=heldout_every, ar_voxel_m=ar_voxel_m, seed=seed).validate()
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise RealDataError(f"{root} exists and is not a folder")
    if (root / INDEX_NAME).exists():
        raise RealDataError(f"{root / INDEX_NAME} exists: import into a new folder")
    root.mkdir(parents=True, exist_ok=True)
    index = DatasetIndex(root, config, head_model_id=head.model_id, generator_version=GENERATOR_VERSION)
    provenance: list[dict] = []
    for k in range(config.num_shards):
        records = []
        for sid in config.shard_subject_ids(k):
            if progress:
                progress(sid, len(sources), sources[sid])
            record, prov = import_subject(sources[sid], head, config, sid, data_dir=data_dirs[sid], background=background)
            records.append(record)
            provenance.append(prov)
        entry = write_shard(root / shard_file_name(k), records)
        index.shards.append(entry)
        for r in records:
            meta = r.meta()
            index.subjects[meta.pop("id")] = meta
        index.save()
        text = json.dumps({"format": "pointillist-real-sources", "head_model_id": head.model_id, "subjects": provenance}, indent=1) + "\n"
        atomic_write(root / SOURCES_NAME, lambda fh, text=text: fh.write(text.encode("utf-8")))
    splits = {s: sum(1 for m in index.subjects.values() if m["split"] == s) for s in ("train", "heldout")}
    return ImportSummary(root, len(index.subjects), len(index.shards), splits)
