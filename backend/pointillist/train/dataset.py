"""The sharded synthetic training set: procedural avatars, their AR point targets and aligned renders.

Subject ``i`` is ``make_procedural_avatar(seed=config.seed + i)`` (engine v2, ``GENERATOR_VERSION`` 2) on
the bundled head template, with everything decided up front by `subject_plan` from seeded generators
keyed by ``(seed, i)``: a hair style from a seeded permutation of ``SYNTH_STYLES`` per block of
``len(SYNTH_STYLES)`` subjects (every style exactly once per block), a beard with probability
``beard_rate`` (its style from the appearance), glasses with probability ``glasses_rate``, the
appearance (skin tone, hair colour, brows, eyes, key light; `synth.appearance`) and whether the portrait
is posed (probability ``expression_rate``). Its split is fixed by its id alone (``heldout`` iff
``i % heldout_every == heldout_every - 1``): growing a dataset appends subjects and never changes or
moves an existing one.

Per subject we store the canonical Gaussians (no ``sh_rest``), the identity shape, the AR targets (a
voxel-grid subsample of the opaque Gaussian means, one representative per occupied voxel: the Gaussian
nearest the mean of that voxel's Gaussians, sorted by voxel (y, z, x) like the tokenizer) and ``views``
renders with their cameras. The renders are framed exactly as the portrait pipeline frames a photo for
the image encoder: a random source camera (yaw / pitch / roll, a focal length log-uniform between
``fov_max_deg`` and ``fov_min_deg`` -- 35-135 mm-equivalent by default --, distance from the fov so the
face fills 30-55 % of the source frame) sees the subject's true landmarks *in that view's pose*,
``preprocess.align.crop_transform`` gives the 512² similarity crop from them, and that crop is folded
into the camera (its rotation into the viewmat as a roll about the optical axis, its scale and shift
into K, then scaled to ``image_size``). We render once, directly with that camera, at the final size: no
resampling, and ``viewmat``/``K`` project the view's (posed) means onto the stored pixels exactly (pixel
edges at integers, pixel (i, j) centred at (j + 0.5, i + 0.5), as in ``render.camera`` and
``preprocess.align``). The crop levels the eyes, so the source roll is undone as in the real pipeline;
the fov survives as perspective strength.

Pose contract (v2). ``expressions[v]`` (E coefficients, head-model order) and ``poses[v]`` ((5, 3)
axis-angles of root, neck, jaw, left_eye, right_eye) are the controls view ``v`` was rendered with.
View 0 (the portrait) of a posed subject carries a random expression preset, jaw opening, slight neck
rotation and gaze (`synth.expressions`); all other views, and view 0 of unposed subjects, are at the
rest pose (all zeros), where ``AvatarAnimator`` returns the canonical Gaussians unchanged. To compare a
stored view with Gaussians, animate the canonical Gaussians with that view's controls
(``AvatarAnimator(avatar, head)(expressions[v], poses[v])``) and rasterize with ``viewmats[v]``/``Ks[v]``:
that reproduces the stored image. The cameras and landmarks of a posed view are those of the posed head.

Lighting is baked: the appearance's key light (direction, colour temperature, key/ambient) is multiplied
into the Gaussian colours (``sh_dc``) when the avatar is built, so the stored Gaussians are exactly what
every view shows (in any pose the shading moves with the head). Backgrounds (solid, gradient, smooth
noise, blurred blobs, optional vignette; `synth.backgrounds`) are composited under the alpha.

On disk: ``shard-00000.npz`` ... (``np.savez``, loadable with ``allow_pickle=False``; per-subject
variable-length arrays concatenated with ``*_offsets``), each written atomically, and ``index.json``
(format, config, per shard: file, subject ids, size, sha256; per subject: split, style, beard, counts and,
from v2, beard style, glasses, skin tone / bin, hair and eye colour, expression preset, expression
magnitude, jaw and neck angles -- all the dataset card reads), rewritten atomically after every shard.
v2 shards add the members ``expressions``, ``poses``, ``beard_styles`` and ``attributes`` (JSON text);
v1 shards lack them and read back as rest pose everywhere (``expressions`` (V, 0), ``poses`` zeros),
``beard_style`` "" and ``attributes`` {}. Readers memory-map the stored (uncompressed) members, so one
subject is read without loading its whole shard. Resuming or growing a folder built by another
generator version is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import struct
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..atomic import atomic_write
from ..model.template_points import voxel_subsample  # noqa: F401 (the AR targets' rule; re-exported)

FORMAT = "pointillist-synth-dataset"
FORMAT_VERSION = 1
# Bump when the synthesis changes what a subject looks like for the same config (refuses stale resumes).
GENERATOR_VERSION = 2  # 2: engine v2 (appearance, posed portrait, baked key light, textured backgrounds)
INDEX_NAME = "index.json"
CROP_SIZE = 512  # the portrait pipeline's aligned crop (preprocess.portrait)
SOURCE_SIZE = 768  # nominal side of the simulated photo the crop is taken from (never rendered)
SPLITS = ("train", "heldout")
SH_C0 = 0.28209479177387814

_BASE_META = ("id", "split", "style", "beard", "num_gaussians", "num_ar_points")
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.npz$")
_TMP_RE = re.compile(r"^\.(shard-\d{5,}\.npz|index\.json)\..*\.tmp$")

# Per-subject arrays concatenated along the first axis in a shard, with their offsets array.
_GAUSSIAN_KEYS = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "binding")
_AR_KEYS = ("ar_points", "ar_binding")
# Per-subject fixed-shape arrays stacked along a new first axis.
_VIEW_KEYS = ("images", "masks", "viewmats", "Ks", "view_yaw_pitch")
# Engine v2 per-subject members; optional (v1 shards lack them and read as rest pose, no attributes).
_V2_KEYS = ("expressions", "poses", "beard_styles", "attributes")


class DatasetError(ValueError):
    """A problem with a dataset folder or its options that the user can fix (message names the file or field)."""


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DatasetConfig:
    subjects: int = 1024
    views: int = 4
    image_size: int = 224
    ar_voxel_m: float = 0.010
    ar_min_opacity: float = 0.05
    seed: int = 0
    shard_size: int = 32
    heldout_every: int = 10
    beard_rate: float = 0.3
    density: float = 1.0  # procedural Gaussian density (1.0 = the synthesiser's default)
    portrait_yaw_deg: float = 20.0  # view 0: uniform in ±
    portrait_pitch_deg: float = 8.0
    novel_yaw_deg: float = 60.0  # views 1..: uniform in ±
    novel_pitch_deg: float = 15.0
    roll_deg: float = 8.0
    fov_min_deg: float = 10.2  # vertical fov of the simulated photo: 135 mm on a 24 mm-high frame...
    fov_max_deg: float = 37.8  # ...to 35 mm; focal length drawn log-uniform in between
    expression_rate: float = 0.8  # share of subjects whose portrait (view 0) is posed: expression, jaw, neck, gaze
    neck_deg: float = 8.0  # posed portrait: neck rotation uniform in ± (roll in ± half)
    glasses_rate: float = 0.15

    def validate(self) -> DatasetConfig:
        def positive_int(name: str, limit: int | None = None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 or (limit is not None and v > limit):
                raise DatasetError(f"config field {name!r} must be an integer in 1..{limit or 'inf'}, got {v!r}")

        def number(name: str, lo: float, hi: float, lo_open: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v) \
                    or v < lo or v > hi or (lo_open and v == lo):
                raise DatasetError(f"config field {name!r} must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")

        positive_int("subjects", 10_000_000)
        positive_int("views", 64)
        positive_int("image_size", 4096)
        positive_int("shard_size", 100_000)
        positive_int("heldout_every", 1_000_000)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**31:
            raise DatasetError(f"config field 'seed' must be an integer in [0, 2**31), got {self.seed!r}")
        number("ar_voxel_m", 0.0, 1.0, lo_open=True)
        number("ar_min_opacity", 0.0, 1.0)
        number("beard_rate", 0.0, 1.0)
        number("expression_rate", 0.0, 1.0)
        number("glasses_rate", 0.0, 1.0)
        number("neck_deg", 0.0, 30.0)
        number("density", 0.0, 16.0, lo_open=True)
        for name in ("portrait_yaw_deg", "novel_yaw_deg"):
            number(name, 0.0, 90.0)
        for name in ("portrait_pitch_deg", "novel_pitch_deg", "roll_deg"):
            number(name, 0.0, 45.0)
        number("fov_min_deg", 1.0, 90.0)
        number("fov_max_deg", float(self.fov_min_deg), 90.0)
        # plain Python numbers, so the config round-trips through JSON and compares equal after it
        return dataclasses.replace(self, **{f.name: (int if f.type == "int" else float)(getattr(self, f.name))
                                            for f in dataclasses.fields(self)})

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DatasetConfig:
        if not isinstance(data, dict):
            raise DatasetError("dataset config must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DatasetError(f"unknown dataset config field(s): {', '.join(unknown)}")
        return cls(**data).validate()

    def differences(self, other: DatasetConfig, ignore: tuple[str, ...] = ()) -> list[str]:
        """Field names whose values differ (``ignore`` skipped)."""
        return [f.name for f in dataclasses.fields(self)
                if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)]

    @property
    def num_shards(self) -> int:
        return -(-self.subjects // self.shard_size)

    def shard_subject_ids(self, shard: int) -> list[int]:
        return list(range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.subjects)))


def shard_file_name(shard: int) -> str:
    return f"shard-{shard:05d}.npz"


def subject_split(config: DatasetConfig, subject_id: int) -> str:
    return "heldout" if subject_id % config.heldout_every == config.heldout_every - 1 else "train"


@dataclass(frozen=True)
class SubjectPlan:
    subject_id: int
    seed: int  # make_procedural_avatar's seed
    style: str
    beard: bool
    split: str
    beard_style: str = "none"  # one of synth.appearance.BEARD_STYLES when beard, else "none"
    glasses: bool = False
    posed: bool = False  # view 0 carries a random expression / jaw / neck / gaze
    appearance: object = None  # synth.appearance.Appearance (skin, hair colour, brows, light, ...)


# Stream tags for np.random.default_rng([seed, tag, ...]) so the draws never share a stream.
_STYLE_STREAM, _BEARD_STREAM, _VIEW_STREAM = 101, 102, 103
_GLASSES_STREAM, _POSE_STREAM, _EXPR_STREAM = 104, 105, 106


def subject_plan(config: DatasetConfig, subject_id: int) -> SubjectPlan:
    """Everything decided about subject ``subject_id`` before building: functions of (seed, id) only, cheap.

    Hair styles are balanced: every block of ``len(SYNTH_STYLES)`` subjects holds each style once.
    """
    from ..synth.appearance import appearance_for_seed
    from ..synth.procedural import SYNTH_STYLES

    n = len(SYNTH_STYLES)
    block, slot = divmod(subject_id, n)
    perm = np.random.default_rng([config.seed, _STYLE_STREAM, block]).permutation(n)
    beard = bool(np.random.default_rng([config.seed, _BEARD_STREAM, subject_id]).random() < config.beard_rate)
    glasses = bool(np.random.default_rng([config.seed, _GLASSES_STREAM, subject_id]).random() < config.glasses_rate)
    posed = bool(np.random.default_rng([config.seed, _POSE_STREAM, subject_id]).random() < config.expression_rate)
    look = appearance_for_seed(config.seed + subject_id)
    return SubjectPlan(subject_id, config.seed + subject_id, SYNTH_STYLES[int(perm[slot])], beard, subject_split(config, subject_id),
                       beard_style=look.beard_style if beard else "none", glasses=glasses, posed=posed, appearance=look)


def plan_controls(config: DatasetConfig, plan: SubjectPlan, expr_names) -> object:
    """The `FaceControls` of the plan's view 0 (rest controls when not posed); deterministic per (seed, id)."""
    from ..synth.expressions import rest_controls, sample_controls

    if not plan.posed:
        return rest_controls(expr_names)
    return sample_controls(np.random.default_rng([config.seed, _EXPR_STREAM, plan.subject_id]), expr_names, config.neck_deg)


# ---------------------------------------------------------------------------------------------- record
@dataclass
class SubjectRecord:
    """One subject. N Gaussians, P AR points, V views of S×S pixels, S' identity coefficients."""

    subject_id: int
    split: str
    style: str
    beard: bool
    shape: np.ndarray  # (S',) float32 identity coefficients of the head model
    means: np.ndarray  # (N, 3) float32 canonical (rest-pose) positions, head space, metres
    log_scales: np.ndarray  # (N, 3) float32
    quats: np.ndarray  # (N, 4) float32, w first
    opacity_logits: np.ndarray  # (N,) float32
    sh_dc: np.ndarray  # (N, 3) float32
    binding: np.ndarray  # (N,) int32 triangle index
    ar_points: np.ndarray  # (P, 3) float32 AR targets (means of the representative Gaussians), voxel (y, z, x) order
    ar_binding: np.ndarray  # (P,) int32
    images: np.ndarray  # (V, S, S, 3) uint8, composited over a random solid / gradient background
    masks: np.ndarray  # (V, S, S) uint8 = round(alpha * 255)
    viewmats: np.ndarray  # (V, 4, 4) float32 head space -> OpenCV camera
    Ks: np.ndarray  # (V, 3, 3) float32 intrinsics of the stored S×S image
    view_yaw_pitch: np.ndarray  # (V, 2) float32 degrees of the source camera's orbit (view 0 = portrait)
    # --- engine v2 (defaults = what a v1 subject is: rest pose everywhere, no recorded attributes)
    expressions: np.ndarray | None = None  # (V, E') float32 per-view expression coefficients (E' may be 0: all zero)
    poses: np.ndarray | None = None  # (V, 5, 3) float32 per-view joint axis-angles (root, neck, jaw, left_eye, right_eye)
    beard_style: str = ""  # "none" / a BEARD_STYLES name; "" in v1 data (then `beard` alone says it)
    attributes: dict = field(default_factory=dict)  # appearance, preset, glasses ... (JSON-able; {} in v1 data)

    def __post_init__(self) -> None:
        V = len(self.images)
        if self.expressions is None:
            self.expressions = np.zeros((V, 0), np.float32)
        if self.poses is None:
            self.poses = np.zeros((V, 5, 3), np.float32)

    @property
    def num_gaussians(self) -> int:
        return len(self.means)

    @property
    def num_ar_points(self) -> int:
        return len(self.ar_points)

    @property
    def num_views(self) -> int:
        return len(self.images)

    def is_posed(self, view: int) -> bool:
        """Whether view ``view`` was rendered away from the rest pose (then animate before comparing)."""
        return bool(np.any(self.expressions[view] != 0) or np.any(self.poses[view] != 0))

    def meta(self) -> dict:
        """The index.json entry: what the dataset card needs without opening shards."""
        out = {"id": self.subject_id, "split": self.split, "style": self.style, "beard": self.beard,
               "num_gaussians": self.num_gaussians, "num_ar_points": self.num_ar_points}
        if self.attributes:
            a = self.attributes
            out.update({"beard_style": self.beard_style, "glasses": a.get("glasses", ""), "skin_tone": a.get("skin_tone"),
                        "fitzpatrick": a.get("fitzpatrick"), "hair_color": a.get("hair_color"), "eye_color": a.get("eye_color"),
                        "expression_preset": a.get("expression_preset", "rest"),
                        "expression_magnitude": round(float(np.linalg.norm(self.expressions[0])), 4) if self.num_views else 0.0,
                        "jaw_deg": round(float(np.degrees(np.linalg.norm(self.poses[0, 2]))), 3) if self.num_views else 0.0,
                        "neck_deg": round(float(np.degrees(np.linalg.norm(self.poses[0, 1]))), 3) if self.num_views else 0.0})
        return out


# ---------------------------------------------------------------------------------------------- geometry
def subject_landmarks(head, shape: np.ndarray) -> np.ndarray:
    """(478, 3) float64 head-space landmarks of an identity at neutral expression and rest pose."""
    from ..head.fit import model_landmarks

    with torch.no_grad():
        verts = head.identity_vertices(torch.as_tensor(np.asarray(shape, dtype=np.float32))[None])
        return model_landmarks(head, verts)[0].double().numpy()


def _roll(viewmat: np.ndarray, rot2: np.ndarray) -> np.ndarray:
    """Rotate the camera's x/y axes by the 2×2 rotation ``rot2`` (a roll about the optical axis)."""
    R = np.eye(4)
    R[:2, :2] = rot2
    return R @ viewmat


def aligned_camera(landmarks: np.ndarray, viewmat: np.ndarray, K: np.ndarray, size: int,
                   crop_size: int = CROP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The camera of the portrait pipeline's aligned crop, at ``size``² pixels: (viewmat (4, 4), K (3, 3)).

    ``landmarks`` (478, 3) in the space ``viewmat`` maps from; ``K`` must have square pixels. The
    similarity ``crop_transform`` computes from the projected landmarks, x ↦ sR·x + t, is folded in:
    R becomes a roll of the camera, s scales the focal length, and the principal point moves to
    sR·c + t; everything is then scaled by size / crop_size (pixel edges at integers, so exact).
    """
    from ..preprocess.align import crop_transform
    from ..render.camera import project_points

    K = np.asarray(K, dtype=np.float64)
    if abs(K[0, 0] - K[1, 1]) > 1e-9 * abs(K[0, 0]) or K[0, 1] != 0:
        raise ValueError("aligned_camera needs square pixels and no skew")
    uv, z = project_points(landmarks, viewmat, K)
    if np.any(z <= 0):
        raise ValueError("landmarks behind the camera")
    crop = crop_transform(uv, crop_size)
    A, t = crop.matrix[:, :2], crop.matrix[:, 2]
    s = crop.scale
    rot = A / s
    out_viewmat = _roll(np.asarray(viewmat, dtype=np.float64), rot)
    c = A @ K[:2, 2] + t
    k = size / crop_size
    out_K = np.array([[s * K[0, 0] * k, 0.0, c[0] * k], [0.0, s * K[1, 1] * k, c[1] * k], [0.0, 0.0, 1.0]])
    return out_viewmat, out_K


def sample_source_camera(rng: np.random.Generator, config: DatasetConfig, landmarks: np.ndarray, portrait: bool,
                         ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """A random photo camera around the face: (viewmat, K at SOURCE_SIZE², yaw, pitch)."""
    from ..render.camera import fov_to_K, orbit_viewmat

    max_yaw = config.portrait_yaw_deg if portrait else config.novel_yaw_deg
    max_pitch = config.portrait_pitch_deg if portrait else config.novel_pitch_deg
    yaw = float(rng.uniform(-max_yaw, max_yaw))
    pitch = float(rng.uniform(-max_pitch, max_pitch))
    roll = float(rng.uniform(-config.roll_deg, config.roll_deg))
    # focal length log-uniform (portrait lenses 35-135 mm-equivalent by default), as a vertical fov
    t_lo, t_hi = math.tan(math.radians(config.fov_min_deg) / 2), math.tan(math.radians(config.fov_max_deg) / 2)
    fov = float(math.degrees(2 * math.atan(math.exp(rng.uniform(math.log(t_lo), math.log(t_hi))))))
    fill = float(rng.uniform(0.30, 0.55))  # forehead-to-chin share of the source frame height
    jitter = rng.normal(0.0, 0.01, 3).clip(-0.02, 0.02)  # the photographer does not aim exactly
    face_height = float(np.linalg.norm(landmarks[10] - landmarks[152]))
    distance = face_height / (fill * 2.0 * math.tan(math.radians(fov) / 2.0))
    target = landmarks.mean(0) + jitter
    viewmat = orbit_viewmat(yaw, pitch, distance, target)
    r = math.radians(roll)
    viewmat = _roll(viewmat, np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]]))
    return viewmat, fov_to_K(fov, SOURCE_SIZE, SOURCE_SIZE), yaw, pitch


def sample_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 1]: a random kind from `synth.backgrounds` (solid, gradient, noise, blobs), maybe vignetted."""
    from ..synth.backgrounds import sample_background as draw

    return draw(rng, size)


def render_views(gaussians, viewmats: np.ndarray, Ks: np.ndarray, backgrounds: np.ndarray, size: int,
                 posed: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rasterize Gaussians (``avatar.gaussians``, DC colour) per camera: (images uint8, masks uint8).

    ``posed[v]`` = (means, quats) replaces the canonical ones for view v when given (not None).
    """
    from ..render.rasterize import rasterize

    means = torch.as_tensor(gaussians.means, dtype=torch.float32)
    quats = torch.as_tensor(gaussians.quats, dtype=torch.float32)
    scales = torch.as_tensor(gaussians.log_scales, dtype=torch.float32).exp()
    opac = torch.sigmoid(torch.as_tensor(gaussians.opacity_logits, dtype=torch.float32))
    colors = (0.5 + SH_C0 * torch.as_tensor(gaussians.sh_dc, dtype=torch.float32)).clamp_min(0.0)
    images, masks = [], []
    with torch.no_grad():
        for v, (viewmat, K, bg) in enumerate(zip(viewmats, Ks, backgrounds)):
            m, q = (means, quats) if posed is None or posed[v] is None else posed[v]
            out = rasterize(m, q, scales, opac, colors, viewmat=torch.as_tensor(viewmat, dtype=torch.float32),
                            K=torch.as_tensor(K, dtype=torch.float32), width=size, height=size)
            alpha = out.alpha.numpy().astype(np.float64)
            rgb = out.rgb.numpy().astype(np.float64) + (1.0 - alpha)[..., None] * bg
            images.append((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
            masks.append((np.clip(alpha, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.stack(images), np.stack(masks)


_HEAD = None


def _template_head():
    global _HEAD
    if _HEAD is None:
        from ..head.model import HeadModel

        _HEAD = HeadModel.load()
    return _HEAD


class _SingleTorchThread:
    """Run a block with one torch intra-op thread (restored after).

    Our tensors are small (tens of thousands of Gaussians, 224² pixels): a second OpenMP thread gains
    nothing, and on a busy 2-core machine its spin-waiting made each render 30× slower (0.02 s -> 0.7 s).
    Parallelism comes from building shards in worker processes instead.
    """

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.saved)


def make_subject(config: DatasetConfig, subject_id: int, head=None) -> SubjectRecord:
    """Build subject ``subject_id`` from scratch (deterministic)."""
    with _SingleTorchThread():
        return _make_subject(config, subject_id, head or _template_head())


def posed_landmarks(head, shape: np.ndarray, expression: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(478, 3) float64 head-space landmarks of an identity under expression / pose (the posed view's crop input)."""
    from ..head.fit import model_landmarks

    with torch.no_grad():
        out = head(shape=torch.as_tensor(np.asarray(shape, np.float32))[None],
                   expression=torch.as_tensor(np.asarray(expression, np.float32))[None],
                   pose=torch.as_tensor(np.asarray(pose, np.float32))[None])
        return model_landmarks(head, out.vertices)[0].double().numpy()


def _make_subject(config: DatasetConfig, subject_id: int, head) -> SubjectRecord:
    from ..avatar.animate import AvatarAnimator
    from ..synth.procedural import make_procedural_avatar

    plan = subject_plan(config, subject_id)
    avatar = make_procedural_avatar(seed=plan.seed, head=head, hair_style=plan.style, beard=plan.beard, density=config.density,
                                    beard_style=plan.beard_style if plan.beard else None, glasses=plan.glasses,
                                    appearance=plan.appearance)
    g = avatar.gaussians
    shape = np.asarray(avatar.identity.shape, dtype=np.float32)
    binding = np.asarray(avatar.binding.triangles).astype(np.int32)
    ar_points, ar_binding, _ = voxel_subsample(g.means, g.opacity_logits, binding, config.ar_voxel_m, config.ar_min_opacity)

    expr_names = list(head.data.expr_names)
    controls = plan_controls(config, plan, expr_names)
    landmarks = subject_landmarks(head, shape)
    rng = np.random.default_rng([config.seed, _VIEW_STREAM, subject_id])
    S = config.image_size
    V = config.views
    expressions = np.zeros((V, len(expr_names)), np.float32)
    poses = np.zeros((V, 5, 3), np.float32)
    posed: list = [None] * V
    if plan.posed:
        expressions[0], poses[0] = controls.expression, controls.pose
        out = AvatarAnimator(avatar, head)(expression=controls.expression, pose=controls.pose)
        posed[0] = (out.means[0], out.quats[0])
    viewmats, Ks, yaw_pitch, backgrounds = [], [], [], []
    for v in range(V):
        lm = posed_landmarks(head, shape, expressions[v], poses[v]) if posed[v] is not None else landmarks
        src_view, src_K, yaw, pitch = sample_source_camera(rng, config, lm, portrait=v == 0)
        viewmat, K = aligned_camera(lm, src_view, src_K, S)
        viewmats.append(viewmat)
        Ks.append(K)
        yaw_pitch.append((yaw, pitch))
        backgrounds.append(sample_background(rng, S))
    images, masks = render_views(g, np.stack(viewmats), np.stack(Ks), np.stack(backgrounds), S, posed)
    meta = avatar.meta
    attributes = {k: meta[k] for k in ("glasses", "skin_tone", "fitzpatrick", "hair_color", "eye_color")}
    attributes["expression_preset"] = controls.preset
    attributes["appearance"] = meta["appearance"]
    return SubjectRecord(
        subject_id=subject_id, split=plan.split, style=plan.style, beard=plan.beard, shape=shape,
        means=np.asarray(g.means, np.float32), log_scales=np.asarray(g.log_scales, np.float32),
        quats=np.asarray(g.quats, np.float32), opacity_logits=np.asarray(g.opacity_logits, np.float32),
        sh_dc=np.asarray(g.sh_dc, np.float32), binding=binding, ar_points=ar_points, ar_binding=ar_binding,
        images=images, masks=masks, viewmats=np.stack(viewmats).astype(np.float32), Ks=np.stack(Ks).astype(np.float32),
        view_yaw_pitch=np.asarray(yaw_pitch, np.float32), expressions=expressions, poses=poses,
        beard_style=plan.beard_style, attributes=attributes,
    )


# ---------------------------------------------------------------------------------------------- shards
def _shard_arrays(records: list[SubjectRecord]) -> dict[str, np.ndarray]:
    n_g = np.array([0] + [r.num_gaussians for r in records], np.int64)
    n_p = np.array([0] + [r.num_ar_points for r in records], np.int64)
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION, np.int64),
        "subject_ids": np.array([r.subject_id for r in records], np.int64),
        "styles": np.array([r.style for r in records], dtype="<U16"),
        "splits": np.array([r.split for r in records], dtype="<U16"),
        "beards": np.array([r.beard for r in records], dtype=bool),
        "shapes": np.stack([r.shape for r in records]).astype(np.float32),
        "gaussian_offsets": np.cumsum(n_g),
        "ar_offsets": np.cumsum(n_p),
    }
    for key in _GAUSSIAN_KEYS + _AR_KEYS:
        arrays[key] = np.concatenate([getattr(r, key) for r in records])
    for key in _VIEW_KEYS:
        arrays[key] = np.stack([getattr(r, key) for r in records])
    # engine v2 members (absent in v1 shards; readers default them). Expressions are padded to one width.
    E = max(r.expressions.shape[1] for r in records)
    arrays["expressions"] = np.stack([np.pad(r.expressions, ((0, 0), (0, E - r.expressions.shape[1]))) for r in records]).astype(np.float32)
    arrays["poses"] = np.stack([r.poses for r in records]).astype(np.float32)
    arrays["beard_styles"] = np.array([r.beard_style for r in records], dtype="<U16")
    arrays["attributes"] = np.array([json.dumps(r.attributes, sort_keys=True) for r in records])  # unicode, not objects
    return arrays


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(path: str | os.PathLike, records: list[SubjectRecord]) -> dict:
    """Write one shard atomically; returns its index entry (file, subject_ids, bytes, sha256)."""
    buf = io.BytesIO()
    np.savez(buf, **_shard_arrays(records))
    data = buf.getvalue()
    atomic_write(path, lambda fh: fh.write(data))
    return {"file": Path(path).name, "subject_ids": [r.subject_id for r in records], "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def _npz_members(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz: stored members memory-mapped in place, compressed ones read. Raises DatasetError."""
    arrays: dict[str, np.ndarray] = {}
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise DatasetError(f"{path}: unexpected member {info.filename!r}")
                key = info.filename[:-4]
                if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                    arrays[key] = np.load(io.BytesIO(zf.read(info)), allow_pickle=False)
                    continue
                fh.seek(info.header_offset)
                local = fh.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise DatasetError(f"{path}: damaged zip entry {info.filename!r}")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                fh.seek(start)
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    arrays[key] = np.load(io.BytesIO(zf.read(info)), allow_pickle=False)
                    continue
                if dtype.hasobject:
                    raise DatasetError(f"{path}: member {key!r} holds Python objects")
                offset = fh.tell()
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if offset + nbytes > start + info.file_size or offset + nbytes > size:
                    raise DatasetError(f"{path}: member {key!r} is truncated")
                if nbytes == 0:
                    arrays[key] = np.zeros(shape, dtype)
                else:
                    arrays[key] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                                            order="F" if fortran else "C")
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"shard file {path} is missing") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, struct.error, KeyError) as exc:
        raise DatasetError(f"{path}: not a readable shard ({exc})") from None
    return arrays


class ShardReader:
    """Random access to the subjects of one shard (memory-mapped; nothing is read until asked)."""

    def __init__(self, path: str | os.PathLike, entry: dict | None = None, verify: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"shard file {self.path} is missing")
        if entry is not None:
            actual = self.path.stat().st_size
            if actual != entry["bytes"]:
                raise DatasetError(f"shard file {self.path} has {actual} bytes, the index says {entry['bytes']} "
                                   f"(truncated or replaced; rebuild with `dataset build`)")
            if verify and _sha256_file(self.path) != entry["sha256"]:
                raise DatasetError(f"shard file {self.path} is corrupt (sha256 differs from the index; rebuild with `dataset build`)")
        a = _npz_members(self.path)
        needed = ("format_version", "subject_ids", "styles", "splits", "beards", "shapes", "gaussian_offsets", "ar_offsets",
                  *_GAUSSIAN_KEYS, *_AR_KEYS, *_VIEW_KEYS)
        missing = [k for k in needed if k not in a]
        if missing:
            raise DatasetError(f"{self.path}: missing array(s) {', '.join(missing)}")
        if int(a["format_version"]) != FORMAT_VERSION:
            raise DatasetError(f"{self.path}: shard format {int(a['format_version'])}, this code reads {FORMAT_VERSION}")
        self.arrays = a
        self.subject_ids = [int(i) for i in np.asarray(a["subject_ids"])]
        k = len(self.subject_ids)
        self._go = np.asarray(a["gaussian_offsets"], np.int64)
        self._ao = np.asarray(a["ar_offsets"], np.int64)
        problems = []
        for name, off, keys in (("gaussian_offsets", self._go, _GAUSSIAN_KEYS), ("ar_offsets", self._ao, _AR_KEYS)):
            if off.shape != (k + 1,) or off[0] != 0 or np.any(np.diff(off) < 0):
                problems.append(name)
            else:
                problems += [key for key in keys if len(a[key]) != off[-1]]
        problems += [key for key in ("styles", "splits", "beards", "shapes", *_VIEW_KEYS, *_V2_KEYS) if key in a and len(a[key]) != k]
        if entry is not None and self.subject_ids != list(entry["subject_ids"]):
            problems.append("subject_ids (differ from the index)")
        if problems:
            raise DatasetError(f"{self.path}: inconsistent array(s) {', '.join(problems)}")
        self._row = {sid: r for r, sid in enumerate(self.subject_ids)}

    def __len__(self) -> int:
        return len(self.subject_ids)

    def get(self, subject_id: int) -> SubjectRecord:
        if subject_id not in self._row:
            raise DatasetError(f"subject {subject_id} is not in {self.path}")
        r = self._row[subject_id]
        a = self.arrays
        g0, g1 = int(self._go[r]), int(self._go[r + 1])
        p0, p1 = int(self._ao[r]), int(self._ao[r + 1])
        try:
            v2 = {}
            if "expressions" in a:
                v2["expressions"] = np.array(a["expressions"][r])
            if "poses" in a:
                v2["poses"] = np.array(a["poses"][r])
            if "beard_styles" in a:
                v2["beard_style"] = str(a["beard_styles"][r])
            if "attributes" in a:
                v2["attributes"] = json.loads(str(a["attributes"][r]))
            return SubjectRecord(
                subject_id=subject_id, split=str(a["splits"][r]), style=str(a["styles"][r]), beard=bool(a["beards"][r]),
                shape=np.array(a["shapes"][r]),
                **{key: np.array(a[key][g0:g1]) for key in _GAUSSIAN_KEYS},
                **{key: np.array(a[key][p0:p1]) for key in _AR_KEYS},
                **{key: np.array(a[key][r]) for key in _VIEW_KEYS},
                **v2,
            )
        except (OSError, ValueError) as exc:  # e.g. SIGBUS-free read errors on a file shrunk under us
            raise DatasetError(f"{self.path}: cannot read subject {subject_id} ({exc})") from None

    def __iter__(self) -> Iterator[SubjectRecord]:
        for sid in self.subject_ids:
            yield self.get(sid)


# ---------------------------------------------------------------------------------------------- index
@dataclass
class DatasetIndex:
    root: Path
    config: DatasetConfig
    shards: list[dict] = field(default_factory=list)  # {"file", "subject_ids", "bytes", "sha256"}, by shard number
    subjects: dict[int, dict] = field(default_factory=dict)  # id -> {"split", "style", "beard", "num_gaussians", "num_ar_points"}
    head_model_id: str = ""
    generator_version: int = GENERATOR_VERSION
    _by_file: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def load(cls, root: str | os.PathLike) -> DatasetIndex:
        root = Path(root)
        path = root / INDEX_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(f"{path} not found: {root} is not a dataset folder (make one with `dataset build`)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: unreadable index ({exc})") from None
        try:
            if data.get("format") != FORMAT:
                raise DatasetError(f"{path}: not a {FORMAT} index")
            if data.get("format_version") != FORMAT_VERSION:
                raise DatasetError(f"{path}: index format version {data.get('format_version')!r}, this code reads {FORMAT_VERSION}")
            config = DatasetConfig.from_json(data["config"])
            shards = [{"file": str(s["file"]), "subject_ids": [int(i) for i in s["subject_ids"]], "bytes": int(s["bytes"]),
                       "sha256": str(s["sha256"])} for s in data["shards"]]
            subjects = {int(s["id"]): {"split": str(s["split"]), "style": str(s["style"]), "beard": bool(s["beard"]),
                                       "num_gaussians": int(s["num_gaussians"]), "num_ar_points": int(s["num_ar_points"]),
                                       **{k: v for k, v in s.items() if k not in _BASE_META}}  # v2 attributes pass through
                        for s in data["subjects"]}
            for s in shards:
                if not _SHARD_RE.match(s["file"]):
                    raise DatasetError(f"{path}: bad shard file name {s['file']!r}")
            return cls(root, config, shards, subjects, str(data.get("head_model_id", "")),
                       int(data.get("generator_version", 0)))
        except DatasetError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DatasetError(f"{path}: malformed index ({type(exc).__name__}: {exc})") from None

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "generator_version": self.generator_version,
            "head_model_id": self.head_model_id, "config": self.config.to_json(),
            "shards": sorted(self.shards, key=lambda s: s["file"]),
            "subjects": [{"id": sid, **self.subjects[sid]} for sid in sorted(self.subjects)],
        }

    def save(self) -> None:
        text = json.dumps(self.to_json(), indent=1) + "\n"
        atomic_write(self.root / INDEX_NAME, lambda fh: fh.write(text.encode("utf-8")))

    def subject_ids(self, split: str = "all") -> list[int]:
        if split not in (*SPLITS, "all"):
            raise DatasetError(f"unknown split {split!r}; choose train, heldout or all")
        return [sid for sid in sorted(self.subjects) if split == "all" or self.subjects[sid]["split"] == split]

    def shard_entry(self, subject_id: int) -> dict:
        for s in self.shards:
            if subject_id in s["subject_ids"]:
                return s
        raise DatasetError(f"subject {subject_id} is not in the dataset at {self.root} "
                           f"({len(self.subjects)} subjects built)")

    def shard_for(self, subject_id: int) -> dict:
        """The shard entry of a subject (a dict look-up from the fixed shard size)."""
        if len(self._by_file) != len(self.shards):
            self._by_file = {s["file"]: s for s in self.shards}
        entry = self._by_file.get(shard_file_name(subject_id // self.config.shard_size)) if subject_id >= 0 else None
        if entry is not None and subject_id in entry["subject_ids"]:
            return entry
        return self.shard_entry(subject_id)


def read_subjects(root: str | os.PathLike, split: str = "train") -> list[int]:
    """Ids of the built subjects in ``split`` ("train", "heldout" or "all"), ascending."""
    return DatasetIndex.load(root).subject_ids(split)


def load_subject(root: str | os.PathLike, subject_id: int, verify: bool = False) -> SubjectRecord:
    """One subject; ``verify`` also checks its shard's sha256 (reads the whole shard)."""
    index = DatasetIndex.load(root)
    entry = index.shard_for(int(subject_id))
    return ShardReader(index.root / entry["file"], entry, verify=verify).get(int(subject_id))


def verify_dataset(root: str | os.PathLike) -> list[str]:
    """Problems found (empty when every listed shard exists, hashes right and reads back)."""
    index = DatasetIndex.load(root)
    problems = []
    for entry in index.shards:
        try:
            ShardReader(index.root / entry["file"], entry, verify=True)
        except DatasetError as exc:
            problems.append(str(exc))
    return problems


class SubjectDataset(Dataset):
    """Map-style dataset of `SubjectRecord`s of one split; keeps the last opened shard open.

    Items are read from memory-mapped shards, so shuffled access costs one subject's bytes, not a
    shard's. ``verify=True`` checks each shard's sha256 the first time it is opened (once per process).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", verify: bool = False,
                 transform: Callable[[SubjectRecord], object] | None = None,
                 locate: Callable[[dict], Path] | None = None):
        """``locate`` maps an index entry to a local shard file (e.g. `streaming.ShardStore.path`: shards on
        other disks or hosts, fetched into a cache and checked); by default the shard beside index.json."""
        self.locate = locate
        self.index = DatasetIndex.load(root)
        self.root = self.index.root
        self.split = split
        self.ids = self.index.subject_ids(split)
        self.verify = verify
        self.transform = transform
        self._reader: ShardReader | None = None
        self._reader_file: str | None = None
        self._verified: set[str] = set()

    def __len__(self) -> int:
        return len(self.ids)

    def restrict(self, ids) -> None:
        """Keep only these subjects (in the split's order); unknown ids are an error, not silently dropped."""
        wanted = set(int(i) for i in ids)
        if outside := sorted(wanted - set(self.ids)):
            raise DatasetError(f"subjects {outside[:3]} are not in the {self.split!r} split of {self.root}")
        self.ids = [i for i in self.ids if i in wanted]

    def _open(self, entry: dict) -> ShardReader:
        if self._reader_file != entry["file"]:
            verify = self.verify and entry["file"] not in self._verified
            self._reader = None  # drop the old maps first
            path = self.locate(entry) if self.locate is not None else self.root / entry["file"]
            self._reader = ShardReader(path, entry, verify=verify)
            self._reader_file = entry["file"]
            if verify:
                self._verified.add(entry["file"])
        assert self._reader is not None
        return self._reader

    def __getitem__(self, i: int):
        if not -len(self.ids) <= i < len(self.ids):
            raise IndexError(f"index {i} out of range for {len(self.ids)} subjects")
        sid = self.ids[i]
        record = self._open(self.index.shard_for(sid)).get(sid)
        return self.transform(record) if self.transform else record

    def __getstate__(self) -> dict:  # DataLoader workers re-open their own maps
        state = dict(self.__dict__)
        state["_reader"] = None
        state["_reader_file"] = None
        return state


# ---------------------------------------------------------------------------------------------- building
@dataclass
class BuildProgress:
    shard: int  # shard number
    file: str
    subjects: int  # subjects in this shard
    done: int  # shards finished (kept or built) so far
    total: int  # shards in the plan
    kept: bool  # True: already built and verified, skipped
    seconds: float  # time spent building it (0 when kept)


@dataclass
class BuildSummary:
    root: Path
    subjects: int
    shards: int
    built_shards: int
    kept_shards: int
    built_subjects: int
    seconds: float

    def to_json(self) -> dict:
        per = self.seconds / self.built_subjects if self.built_subjects else None
        return {"dir": str(self.root), "subjects": self.subjects, "shards": self.shards, "built_shards": self.built_shards,
                "kept_shards": self.kept_shards, "built_subjects": self.built_subjects, "seconds": round(self.seconds, 3),
                "seconds_per_subject": None if per is None else round(per, 4)}


def _remove_stray_temp_files(root: Path) -> list[str]:
    removed = []
    for p in root.iterdir():
        if _TMP_RE.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


class _BuildLock:
    """An exclusive advisory lock on ``root/.build.lock`` so two builds never interleave."""

    def __init__(self, root: Path):
        self.path = root / ".build.lock"
        self.fh = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # no advisory locks here (Windows): proceed unlocked
            return self
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            self.fh = None
            raise DatasetError(f"another `dataset build` is writing {self.path.parent}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()  # releases the lock


def _build_one_shard(root: str, config_json: dict, shard: int) -> tuple[dict, list[dict], float]:
    """Build and write one shard (also the process-pool job): (index entry, subject metas, seconds)."""
    config = DatasetConfig.from_json(config_json)
    t = time.perf_counter()
    records = [make_subject(config, sid) for sid in config.shard_subject_ids(shard)]
    entry = write_shard(Path(root) / shard_file_name(shard), records)
    return entry, [r.meta() for r in records], time.perf_counter() - t


def _worker_init() -> None:
    _exit_with_parent()
    torch.set_num_threads(1)
    try:
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError):  # numba missing (the torch rasterizer is used) or refuses
        return


def _exit_with_parent(poll_s: float = 1.0) -> None:
    """A pool worker whose builder was killed (SIGTERM, SIGKILL) would wait on its pipe forever: a daemon
    thread ends it once the parent is gone (it is re-parented), so a killed build leaves no processes behind."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def build_dataset(out_dir: str | os.PathLike, config: DatasetConfig = DatasetConfig(), *, workers: int = 1,
                  progress: Callable[[BuildProgress], None] | None = None) -> BuildSummary:
    """Build (or resume, or grow) the dataset in ``out_dir``; returns what was done.

    Shards listed in an existing index whose file exists and hashes right are kept; the rest are built
    and the index is rewritten after each. A different config (other than a larger ``subjects``) is
    refused with a `DatasetError` naming the fields. ``workers`` > 1 builds shards in a pool of spawned
    processes (as with any spawn pool, a calling script needs the ``if __name__ == "__main__":`` guard;
    the ``pointillist`` console script has it). A stale ``.shard-*.tmp`` from a killed run is removed,
    and an advisory lock (``.build.lock``) refuses a second concurrent build of the same folder.
    """
    config = config.validate()
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise DatasetError(f"workers must be an integer in 1..256, got {workers!r}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    head_id = _template_head().model_id
    t0 = time.perf_counter()
    with _BuildLock(root):
        _remove_stray_temp_files(root)
        old = DatasetIndex.load(root) if (root / INDEX_NAME).exists() else None
        if old is not None:
            diffs = [f"{n} ({getattr(old.config, n)!r} in the index, {getattr(config, n)!r} asked)"
                     for n in old.config.differences(config, ignore=("subjects",))]
            if old.head_model_id != head_id:
                diffs.append(f"head_model_id ({old.head_model_id!r} in the index, {head_id!r} here)")
            if old.generator_version != GENERATOR_VERSION:
                diffs.append(f"generator_version ({old.generator_version} in the index, {GENERATOR_VERSION} here)")
            if diffs:
                raise DatasetError(f"{root / INDEX_NAME} was built with a different config: {'; '.join(diffs)}. "
                                   "Use another folder, or the same settings to resume or grow it")
            if config.subjects < old.config.subjects:
                raise DatasetError(f"{root} already has {old.config.subjects} subjects; a dataset only grows "
                                   f"(asked for {config.subjects})")
        index = DatasetIndex(root, config, head_model_id=head_id)
        total = config.num_shards
        todo: list[int] = []
        done = 0
        old_entries = {s["file"]: s for s in old.shards} if old else {}
        kept: list[tuple[int, dict]] = []
        for k in range(total):
            entry = old_entries.get(shard_file_name(k))
            path = root / shard_file_name(k)
            if (entry is not None and old is not None and entry["subject_ids"] == config.shard_subject_ids(k)
                    and all(sid in old.subjects for sid in entry["subject_ids"]) and path.is_file()
                    and path.stat().st_size == entry["bytes"] and _sha256_file(path) == entry["sha256"]):
                index.shards.append(entry)
                index.subjects.update({sid: old.subjects[sid] for sid in entry["subject_ids"]})
                kept.append((k, entry))
            else:
                todo.append(k)
        index.save()
        for k, entry in kept:
            done += 1
            if progress:
                progress(BuildProgress(k, entry["file"], len(entry["subject_ids"]), done, total, True, 0.0))

        def finish(k: int, entry: dict, metas: list[dict], seconds: float) -> None:
            nonlocal done
            index.shards = [s for s in index.shards if s["file"] != entry["file"]] + [entry]
            for m in metas:
                index.subjects[m["id"]] = {key: value for key, value in m.items() if key != "id"}
            index.save()
            done += 1
            if progress:
                progress(BuildProgress(k, entry["file"], len(metas), done, total, False, seconds))

        if workers == 1 or len(todo) <= 1:
            for k in todo:
                finish(k, *_build_one_shard(str(root), config.to_json(), k))
        else:
            _build_parallel(root, config, todo, min(workers, len(todo)), finish)
    built_subjects = sum(len(config.shard_subject_ids(k)) for k in todo)
    return BuildSummary(root, len(index.subjects), total, len(todo), total - len(todo), built_subjects, time.perf_counter() - t0)


def _build_parallel(root: Path, config: DatasetConfig, todo: list[int], workers: int, finish) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")  # no forked torch / numba thread state
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        pending = {pool.submit(_build_one_shard, str(root), config.to_json(), k): k for k in todo}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(finished, key=lambda f: pending[f]):
                    k = pending.pop(fut)
                    finish(k, *fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


# ---------------------------------------------------------------------------------------------- summaries
def _stats(values: list[float], digits: int = 1) -> dict:
    a = np.asarray(values, np.float64)
    return {"min": round(float(a.min()), digits), "mean": round(float(a.mean()), digits), "max": round(float(a.max()), digits)}


def _counts(rows: list[dict], key: str, order: tuple[str, ...] = ()) -> dict[str, int]:
    values = [str(r[key]) if r.get(key) not in (None, "") else "none" for r in rows]
    names = [n for n in order if n in values] + sorted(set(values) - set(order))
    return {n: values.count(n) for n in names}


def dataset_card(root: str | os.PathLike) -> dict:
    """Statistics from index.json alone (no shard is opened).

    Subjects per split; per hair style count and AR point / Gaussian stats; counts per beard style, skin
    tone bin, hair colour, eye colour, accessory and expression preset; min / mean / max of the portrait's
    expression magnitude (L2 of the coefficients), jaw and neck angles. v1 indexes lack the attribute
    fields: those sections then count only what v1 recorded (beard yes / no).
    """
    index = DatasetIndex.load(root)
    subs = list(index.subjects.values())
    from ..synth.appearance import BEARD_STYLES, FITZPATRICK, HAIR_COLOR_NAMES
    from ..synth.expressions import PRESET_NAMES
    from ..synth.procedural import SYNTH_STYLES

    styles = {}
    for style in list(SYNTH_STYLES) + sorted({s["style"] for s in subs} - set(SYNTH_STYLES)):
        rows = [s for s in subs if s["style"] == style]
        if rows:
            styles[style] = {"subjects": len(rows), "ar_points": _stats([s["num_ar_points"] for s in rows]),
                             "gaussians": _stats([s["num_gaussians"] for s in rows])}
    v2 = [s for s in subs if "fitzpatrick" in s]
    card = {
        "dir": str(index.root), "subjects": len(subs), "planned_subjects": index.config.subjects,
        "generator_version": index.generator_version,
        "splits": {split: sum(1 for s in subs if s["split"] == split) for split in SPLITS},
        "styles": styles,
        "beard_share": round(sum(s["beard"] for s in subs) / len(subs), 4) if subs else 0.0,
        "ar_points": _stats([s["num_ar_points"] for s in subs]) if subs else None,
        "gaussians": _stats([s["num_gaussians"] for s in subs]) if subs else None,
    }
    if v2:
        card.update({
            "beard_styles": _counts(v2, "beard_style", ("none",) + BEARD_STYLES),
            "skin_tones": _counts(v2, "fitzpatrick", FITZPATRICK),
            "hair_colors": _counts(v2, "hair_color", HAIR_COLOR_NAMES),
            "eye_colors": _counts(v2, "eye_color"),
            "glasses": _counts(v2, "glasses", ("none",)),
            "expression_presets": _counts(v2, "expression_preset", ("rest",) + PRESET_NAMES),
            "posed_share": round(sum(s.get("expression_preset", "rest") != "rest" for s in v2) / len(v2), 4),
            "expression_magnitude": _stats([s["expression_magnitude"] for s in v2], 3),
            "jaw_deg": _stats([s["jaw_deg"] for s in v2], 2),
            "neck_deg": _stats([s["neck_deg"] for s in v2], 2),
        })
    card.update({"shards": len(index.shards), "bytes": sum(s["bytes"] for s in index.shards), "config": index.config.to_json()})
    return card


def card_markdown(card: dict) -> str:
    built = f"{card['subjects']} of {card['planned_subjects']} subjects built, {card['shards']} shards, {card['bytes'] / 1e6:.1f} MB"
    lines = [f"# Dataset {card['dir']}", "", f"{built} (generator v{card['generator_version']})", "",
             "| split | subjects |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in card["splits"].items()]
    lines += ["", "| style | subjects | AR points mean | min | max | Gaussians mean | min | max |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for style, s in card["styles"].items():
        a, g = s["ar_points"], s["gaussians"]
        lines.append(f"| {style} | {s['subjects']} | {a['mean']:.0f} | {a['min']:.0f} | {a['max']:.0f} | {g['mean']:.0f} | {g['min']:.0f} | {g['max']:.0f} |")
    if card["ar_points"]:
        a, g = card["ar_points"], card["gaussians"]
        lines.append(f"| **all** | {card['subjects']} | {a['mean']:.0f} | {a['min']:.0f} | {a['max']:.0f} | {g['mean']:.0f} | {g['min']:.0f} | {g['max']:.0f} |")
    lines += ["", f"Beard share: {100 * card['beard_share']:.1f} %"]
    for key, title in (("beard_styles", "beard style"), ("skin_tones", "skin tone (Fitzpatrick-like)"), ("hair_colors", "hair colour"),
                       ("eye_colors", "eye colour"), ("glasses", "glasses"), ("expression_presets", "portrait expression")):
        if key in card:
            lines += ["", f"| {title} | subjects |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in card[key].items()]
    if "expression_magnitude" in card:
        lines += ["", f"Posed portraits: {100 * card['posed_share']:.1f} %", "",
                  "| portrait control | min | mean | max |", "|---|---:|---:|---:|"]
        for key, title in (("expression_magnitude", "expression magnitude (L2)"), ("jaw_deg", "jaw opening (deg)"), ("neck_deg", "neck rotation (deg)")):
            st = card[key]
            lines.append(f"| {title} | {st['min']} | {st['mean']} | {st['max']} |")
    return "\n".join(lines)


def _label_tile(tile, text: str, scale: int = 1):
    from PIL import ImageDraw

    draw = ImageDraw.Draw(tile)
    for row, line in enumerate(text.split("\n")):
        y = row * 12
        draw.rectangle((0, y, 6 * len(line) + 4, y + 12), fill=(0, 0, 0))
        draw.text((2, y), line, fill=(255, 255, 255))
    return tile


def _record_label(rec: SubjectRecord) -> str:
    a = rec.attributes
    first = f"{rec.subject_id} {rec.style}"
    if not a:
        return first + (" +beard" if rec.beard else "")
    extras = [a.get("fitzpatrick", ""), a.get("hair_color", "")]
    if rec.beard:
        extras.append(rec.beard_style)
    if a.get("glasses"):
        extras.append("glasses")
    second = " ".join(e for e in extras if e)
    if a.get("expression_preset", "rest") not in ("rest", "neutral"):
        second += f" {a['expression_preset']}"
    return f"{first}\n{second}"


def _grid(tiles: list, size: int):
    from PIL import Image

    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * size, rows * size), (255, 255, 255))
    for j, tile in enumerate(tiles):
        sheet.paste(tile, ((j % cols) * size, (j // cols) * size))
    return np.asarray(sheet)


def contact_sheet(root: str | os.PathLike, n: int = 16, view: int = 0, split: str = "all", label: bool = True,
                  random: bool = False, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 grid (ceil(sqrt(n)) columns) of view ``view`` of ``n`` subjects of ``split``.

    The first ``n`` ids, or with ``random`` a seeded sample of them (sorted). Labels: id, style, skin
    tone bin, hair colour, beard style, glasses, expression preset.
    """
    from PIL import Image

    index = DatasetIndex.load(root)
    ids = index.subject_ids(split)
    if random:
        pick = np.random.default_rng(seed).choice(len(ids), size=min(max(0, int(n)), len(ids)), replace=False)
        ids = [ids[i] for i in sorted(pick)]
    else:
        ids = ids[: max(0, int(n))]
    if not ids:
        raise DatasetError(f"no built subjects in split {split!r} of {index.root}")
    if not 0 <= view < index.config.views:
        raise DatasetError(f"view must be in 0..{index.config.views - 1}, got {view}")
    tiles = []
    reader: ShardReader | None = None
    for sid in ids:
        entry = index.shard_for(sid)
        if reader is None or reader.path.name != entry["file"]:
            reader = ShardReader(index.root / entry["file"], entry)
        rec = reader.get(sid)
        tile = Image.fromarray(rec.images[view])
        tiles.append(_label_tile(tile, _record_label(rec)) if label else tile)
    return _grid(tiles, index.config.image_size)


def synth_contact_sheet(n: int = 64, seed: int = 0, image_size: int = 128, density: float = 0.6, label: bool = True,
                        workers: int = 1) -> np.ndarray:
    """A contact sheet of ``n`` freshly synthesised portraits (view 0) without building a dataset.

    Subjects ``0..n-1`` of ``DatasetConfig(seed=seed, views=1, image_size=image_size, density=density)``:
    exactly what a dataset with those settings would hold as its portraits.
    """
    from PIL import Image

    if n <= 0:
        raise DatasetError(f"n must be positive, got {n}")
    config = DatasetConfig(subjects=n, views=1, image_size=image_size, seed=seed, density=density).validate()
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init) as pool:
            records = list(pool.map(make_subject, [config] * n, range(n), chunksize=max(1, n // (4 * workers))))
    else:
        records = [make_subject(config, i) for i in range(n)]
    tiles = [Image.fromarray(r.images[0]) for r in records]
    if label:
        tiles = [_label_tile(t, _record_label(r)) for t, r in zip(tiles, records)]
    return _grid(tiles, image_size)
