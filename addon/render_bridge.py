"""The render bridge's maths, with no bpy: cameras, rotation skinning, payloads and image conversion.

The render engine (render_engine.py), the viewport (viewport_draw.py) and the PLY export (export_ply.py)
read plain arrays out of Blender and hand them here, so tests exercise every number without Blender.
The binary formats themselves are the backend's `pointillist.server.render_payload` (numpy only): this
module fills its dataclasses and never defines bytes of its own.

Spaces: the point mesh stores positions and `rot_*` in Blender object space (DESIGN §3); SH coefficients
are defined in each Gaussian's canonical *head-space* frame, so the rest rotations registered for SH are
taken back to head space (the backend then rotates view directions by posed · rest⁻¹).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
from pointillist.render.camera import (
    blender_intrinsics,
    blender_matrix_world_to_viewmat,
)
from pointillist.render.colour import srgb_to_linear
from pointillist.server.render_payload import (
    MAX_BONES,
    FrameObject,
    ObjectAttributes,
    RenderRequest,
)

from . import rig_build

#: Point attributes a mesh needs to be rendered as Gaussians (Inria names, written by the importer).
REQUIRED_ATTRIBUTES = ("f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                       "rot_0", "rot_1", "rot_2", "rot_3")
#: f_rest attribute count -> SH coefficients per channel beyond the DC band.
_REST_COUNTS = {0: 0, 9: 3, 24: 8, 45: 15}
#: What Blender's Z pass holds where nothing was hit (Cycles and EEVEE write the same "far away"); the
#: backend's film layout writes the same (`pointillist.render.film.FAR_DEPTH`).
BACKGROUND_DEPTH = 1.0e10
#: Blender's `HEAD_TO_BLENDER_QUAT` conjugate: Blender object space -> head space.
_BLENDER_TO_HEAD_QUAT = rig_build.HEAD_TO_BLENDER_QUAT * np.array([1.0, -1.0, -1.0, -1.0])


# ------------------------------------------------------------------------------------------- camera
@dataclass(frozen=True)
class CameraParams:
    """A Blender camera as plain values (`bpy.types.Camera` fields + the object's world matrix)."""

    matrix_world: np.ndarray  # (4, 4) camera object -> world
    kind: str = "PERSP"  # "PERSP" | "ORTHO"
    lens: float = 50.0  # mm (perspective)
    ortho_scale: float = 1.0  # metres across the fitted side (orthographic)
    sensor_width: float = 36.0
    sensor_height: float = 24.0
    sensor_fit: str = "AUTO"
    shift_x: float = 0.0
    shift_y: float = 0.0
    clip_start: float = 0.1
    clip_end: float = 100.0


@dataclass(frozen=True)
class Region:
    """The pixels to render out of a `full_width` x `full_height` frame; x0, y0 from the top-left corner."""

    full_width: int
    full_height: int
    x0: int
    y0: int
    width: int
    height: int


@dataclass(frozen=True)
class View:
    """What the backend needs for one frame: OpenCV viewmat, pixel K (region-relative), clipping, model."""

    viewmat: np.ndarray  # (4, 4)
    K: np.ndarray  # (3, 3)
    width: int
    height: int
    near: float
    far: float
    ortho: bool = False


def render_region(res_x: int, res_y: int, percentage: int, border: tuple[float, float, float, float] | None) -> Region:
    """Blender's render size and border window (`render_init_from_main`: size = res * % / 100, border edges
    truncated to whole pixels, border y measured from the bottom)."""
    w, h = res_x * percentage // 100, res_y * percentage // 100
    if w < 1 or h < 1:
        raise ValueError(f"the render size {w}x{h} is empty: raise the resolution or its percentage")
    if border is None:
        return Region(w, h, 0, 0, w, h)
    xmin, xmax, ymin, ymax = border
    x0, x1 = int(xmin * w), int(xmax * w)
    y0, y1 = int(ymin * h), int(ymax * h)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError("the render border is smaller than one pixel")
    return Region(w, h, x0, h - y1, x1 - x0, y1 - y0)


def view_from_camera(cam: CameraParams, region: Region, pixel_aspect: float = 1.0) -> View:
    """Backend camera for a Blender camera: perspective or orthographic, sensor fit, lens shift, clipping.

    Orthographic cameras map `ortho_scale` metres to the fitted side exactly as a perspective one maps the
    sensor at 1 mm focal length, so Blender's own fit and shift rules (`blender_intrinsics`) give both.
    """
    viewmat = blender_matrix_world_to_viewmat(cam.matrix_world)
    ortho = cam.kind == "ORTHO"
    if cam.kind not in ("PERSP", "ORTHO"):
        raise ValueError(f"{cam.kind.lower()} cameras (panoramic) cannot render Gaussians; use a perspective "
                         f"or orthographic camera")
    if ortho:
        K = blender_intrinsics(1.0, cam.ortho_scale, cam.ortho_scale, cam.sensor_fit, cam.shift_x, cam.shift_y,
                               region.full_width, region.full_height, pixel_aspect)
    else:
        K = blender_intrinsics(cam.lens, cam.sensor_width, cam.sensor_height, cam.sensor_fit, cam.shift_x,
                               cam.shift_y, region.full_width, region.full_height, pixel_aspect)
    return _crop(View(viewmat, K, region.full_width, region.full_height, float(cam.clip_start),
                      float(cam.clip_end), ortho), region)


def _crop(view: View, region: Region) -> View:
    K = view.K.copy()
    K[0, 2] -= region.x0
    K[1, 2] -= region.y0
    return View(view.viewmat, K, region.width, region.height, view.near, view.far, view.ortho)


def view_from_matrices(view_matrix: np.ndarray, window_matrix: np.ndarray, width: int, height: int) -> View:
    """Backend camera from an OpenGL view matrix (world -> view) and projection (`window_matrix`), as a 3D
    View region or `Object.calc_matrix_camera` gives them; perspective or orthographic from its last row."""
    P = np.asarray(window_matrix, dtype=np.float64)
    viewmat = np.diag([1.0, -1.0, -1.0, 1.0]) @ np.asarray(view_matrix, dtype=np.float64)
    a, b, c, d = P[0, 0], P[0, 2], P[1, 1], P[1, 2]
    e, f = P[2, 2], P[2, 3]
    ortho = bool(abs(P[3, 3] - 1.0) < 1e-9 and abs(P[3, 2]) < 1e-9)
    if ortho:
        cx, cy = (1.0 + P[0, 3]) * width / 2, (1.0 - P[1, 3]) * height / 2
        near, far = (f + 1.0) / e, (f - 1.0) / e
    else:
        cx, cy = (1.0 - b) * width / 2, (1.0 + d) * height / 2
        near, far = f / (e - 1.0), f / (e + 1.0)
    K = np.array([[a * width / 2, 0.0, cx], [0.0, c * height / 2, cy], [0.0, 0.0, 1.0]])
    return View(viewmat, K, int(width), int(height), float(near), float(far), ortho)


# ------------------------------------------------------------------------------------------- skinning
def orthonormalize(M: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Closest rotation to each 3x3 matrix by Newton's polar iteration X <- (X + X^-T) / 2 — the same
    iteration as `pointillist.head.lbs.orthonormalize` (numpy here: the add-on never imports torch)."""
    X = np.asarray(M, dtype=np.float64)
    for _ in range(iterations):  # cofactors written out: np.cross costs 1.5x as much on every frame
        a0, a1, a2 = X[..., 0, 0], X[..., 1, 0], X[..., 2, 0]
        b0, b1, b2 = X[..., 0, 1], X[..., 1, 1], X[..., 2, 1]
        c0, c1, c2 = X[..., 0, 2], X[..., 1, 2], X[..., 2, 2]
        cof = np.empty_like(X)  # columns: b x c, c x a, a x b
        cof[..., 0, 0], cof[..., 1, 0], cof[..., 2, 0] = b1 * c2 - b2 * c1, b2 * c0 - b0 * c2, b0 * c1 - b1 * c0
        cof[..., 0, 1], cof[..., 1, 1], cof[..., 2, 1] = c1 * a2 - c2 * a1, c2 * a0 - c0 * a2, c0 * a1 - c1 * a0
        cof[..., 0, 2], cof[..., 1, 2], cof[..., 2, 2] = a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0
        det = a0 * cof[..., 0, 0] + a1 * cof[..., 1, 0] + a2 * cof[..., 2, 0]
        X = 0.5 * (X + cof / det[..., None, None])
    return X


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit w-first quaternions (..., 4), by the largest-pivot branch."""
    R = np.asarray(R, dtype=np.float64)
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    cands = np.stack([
        np.stack([1 + m00 + m11 + m22, R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                  R[..., 1, 0] - R[..., 0, 1]], -1),
        np.stack([R[..., 2, 1] - R[..., 1, 2], 1 + m00 - m11 - m22, R[..., 0, 1] + R[..., 1, 0],
                  R[..., 0, 2] + R[..., 2, 0]], -1),
        np.stack([R[..., 0, 2] - R[..., 2, 0], R[..., 0, 1] + R[..., 1, 0], 1 - m00 + m11 - m22,
                  R[..., 1, 2] + R[..., 2, 1]], -1),
        np.stack([R[..., 1, 0] - R[..., 0, 1], R[..., 0, 2] + R[..., 2, 0], R[..., 1, 2] + R[..., 2, 1],
                  1 - m00 - m11 + m22], -1),
    ], axis=-2)  # (..., 4, 4): row k is 4 q q_k, exact where q_k is largest
    pivot = np.argmax(np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                                1 - m00 - m11 + m22], -1), axis=-1)
    q = np.take_along_axis(cands, pivot[..., None, None], axis=-2)[..., 0, :]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return q * np.where(q[..., :1] < 0, -1.0, 1.0)


def rigid_part(M: np.ndarray) -> tuple[np.ndarray, float]:
    """(rotation (3, 3), uniform scale) of an object's linear part; a mirrored or sheared one is refused
    because a Gaussian cannot follow it with one rotation."""
    A = np.asarray(M, dtype=np.float64)[:3, :3]
    det = float(np.linalg.det(A))
    if det <= 1e-12:
        raise ValueError("the object's transform is mirrored (negative scale) or flat; Gaussians cannot follow it")
    u, s, vt = np.linalg.svd(A)
    if s.max() - s.min() > 1e-4 * s.max():
        raise ValueError(f"the object is scaled unevenly ({s.round(4).tolist()}); splats need a uniform scale")
    return u @ vt, float(det ** (1.0 / 3.0))


@dataclass(frozen=True)
class WeightPatterns:
    """Vertex-group weights as distinct normalised rows + each point's row: an avatar has far fewer
    distinct weightings than points (most are fully on one bone), so blending runs once per pattern."""

    rows: np.ndarray  # (P, J) normalised (rows summing to 0 are the unweighted pattern)
    index: np.ndarray  # (N,) row of each point


def weight_patterns(weights: np.ndarray) -> WeightPatterns:
    """Normalised as Blender's Armature modifier does: w / sum(w); a point with no weight stays put."""
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total > 0, w / np.where(total > 0, total, 1.0), 0.0)
    rows, index = np.unique(w, axis=0, return_inverse=True)
    return WeightPatterns(rows, index.reshape(-1))


def skin_rotations(weights: np.ndarray | WeightPatterns | None, bone_matrices: np.ndarray | None,
                   rest_quats: np.ndarray, object_rotation: np.ndarray) -> np.ndarray:
    """World rotations (N, 4) of the posed splats: polar(Σ_j w_j R_j) · object rotation · rest rotation.

    `weights` (N, J) are vertex-group weights (or their `weight_patterns`, cached by the caller);
    `bone_matrices` (J, 4, 4) are the bones' world-space deform matrices (armature world · pose · rest⁻¹ ·
    armature world⁻¹); `rest_quats` the `rot_*` attribute (object space, w-first). None weights or bones:
    a static object (a plain PLY).
    """
    rest = np.asarray(rest_quats, dtype=np.float32)
    world_q = matrix_to_quat(np.asarray(object_rotation, dtype=np.float64))
    if weights is None or bone_matrices is None:
        return _rows_times(np.broadcast_to(world_q.astype(np.float32), rest.shape), rest)
    patterns = weights if isinstance(weights, WeightPatterns) else weight_patterns(weights)
    R = np.asarray(bone_matrices, dtype=np.float64)[:, :3, :3]
    blended = np.einsum("pj,jab->pab", patterns.rows, R)
    moved = patterns.rows.sum(axis=1) > 0
    skin = np.tile(np.array([1.0, 0.0, 0.0, 0.0]), (len(patterns.rows), 1))
    if moved.any():
        skin[moved] = matrix_to_quat(orthonormalize(blended[moved]))
    # world position = (Σ w_j M_j) · O · p, so the splat turns by polar(Σ w_j M_j) · R_O
    per_pattern = rig_build.quat_multiply(skin, world_q).astype(np.float32)
    return _rows_times(per_pattern[patterns.index], rest)


def _rows_times(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Hamilton products p_i q_i of two (N, 4) float32 arrays, into one new array: this runs on
    every splat of every frame, where `quat_multiply`'s float64 stacks cost three times as much."""
    pw, px, py, pz = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    qw, qx, qy, qz = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    out = np.empty((len(q), 4), np.float32)
    out[:, 0] = pw * qw - px * qx - py * qy - pz * qz
    out[:, 1] = pw * qx + px * qw + py * qz - pz * qy
    out[:, 2] = pw * qy - px * qz + py * qw + pz * qx
    out[:, 3] = pw * qz + px * qy - py * qx + pz * qw
    return out


def to_world(points: np.ndarray, matrix_world: np.ndarray) -> np.ndarray:
    M = np.asarray(matrix_world, dtype=np.float64)
    return (np.asarray(points, dtype=np.float64) @ M[:3, :3].T + M[:3, 3]).astype(np.float32)


# ------------------------------------------------------------------------------------------- objects
def has_splat_attributes(names) -> bool:
    return all(name in names for name in REQUIRED_ATTRIBUTES)


def rest_count(names) -> int:
    """How many f_rest_* attributes a splat mesh carries (0, 9, 24 or 45), checked."""
    n = sum(1 for name in names if name.startswith("f_rest_"))
    if n not in _REST_COUNTS or any(f"f_rest_{i}" not in names for i in range(n)):
        raise ValueError(f"the mesh has {n} f_rest_* attributes; 3DGS SH needs 0, 9, 24 or 45 (f_rest_0...)")
    return n


def static_attributes(attrs: dict[str, np.ndarray], scale: float = 1.0) -> ObjectAttributes:
    """Registered attributes from the Inria-named point attributes (raw: logit opacity, log scales).

    SH go in as (N, K, 3); rest rotations go back to head space, the frame the SH were fitted in; `scale`
    is the object's uniform scale (Gaussians grow with their object).
    """
    n = len(attrs["opacity"])
    k = _REST_COUNTS[sum(1 for name in attrs if name.startswith("f_rest_"))]
    dc = np.stack([attrs[f"f_dc_{c}"] for c in range(3)], axis=1)
    sh = np.empty((n, 1 + k, 3), np.float32)
    sh[:, 0] = dc
    if k:
        rest = np.stack([attrs[f"f_rest_{i}"] for i in range(3 * k)], axis=1)
        sh[:, 1:] = rest.reshape(n, 3, k).transpose(0, 2, 1)  # channel-major on disk
    with np.errstate(over="ignore"):
        opacities = 1.0 / (1.0 + np.exp(-np.asarray(attrs["opacity"], np.float64)))
        scales = np.exp(np.stack([attrs[f"scale_{c}"] for c in range(3)], axis=1).astype(np.float64)) * scale
    rot = rest_quats(attrs)
    if not np.isfinite(scales).all() or (scales <= 0).any():
        raise ValueError("scale_0..2 hold log scales; exp() of some is 0 or infinite")
    if (np.linalg.norm(rot, axis=1) < 1e-8).any():
        raise ValueError("a splat's rotation (rot_0..3) is zero")
    head_rest = rig_build.quat_multiply(_BLENDER_TO_HEAD_QUAT, rot)
    return ObjectAttributes(opacities=opacities.astype(np.float32), scales=scales.astype(np.float32),
                            sh=sh, rest_quats=head_rest.astype(np.float32))


def rest_quats(attrs: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([attrs[f"rot_{c}"] for c in range(4)], axis=1).astype(np.float32)


def object_id(attrs: ObjectAttributes) -> str:
    """A content address for registered attributes: an edited object gets a new id (and is registered
    again) while an unchanged one is registered once per backend, however many frames and renders."""
    h = hashlib.blake2b(digest_size=12)
    for array in (attrs.opacities, attrs.scales, attrs.sh, attrs.rest_quats, attrs.pattern_weights, attrs.pattern_index):
        if array is not None:
            h.update(np.ascontiguousarray(array).view(np.uint8))
    return "bl-" + h.hexdigest()


def with_skinning(attrs: ObjectAttributes, weights: WeightPatterns | None) -> ObjectAttributes:
    """The attributes registered with the object's weight patterns (payload flag SKIN), so a frame sends its
    bones' rotations and the backend skins every splat's rotation (`pointillist.render.skinning.skin_quaternions`,
    the same polar blend as `skin_rotations`) instead of receiving one rotation per splat. Rigs with more
    bones than the payload carries keep sending per-splat rotations."""
    if weights is None or weights.rows.shape[1] > MAX_BONES:
        return attrs
    return dataclasses.replace(attrs, pattern_weights=weights.rows.astype(np.float32),
                               pattern_index=weights.index.astype(np.uint32))


def bone_frame_quat(object_rotation: np.ndarray) -> np.ndarray:
    """The frame's Q for skinned splats: the object's rotation after the registered (head-space) rest rotations
    are taken back to Blender object space, so polar(sum w B) Q R(rest) is `skin_rotations`' result."""
    return rig_build.quat_multiply(matrix_to_quat(object_rotation), rig_build.HEAD_TO_BLENDER_QUAT).astype(np.float32)


def render_request(view: View, objects: list[FrameObject], background: np.ndarray | None,
                   want_depth: bool) -> RenderRequest:
    """The frame request, answered in film layout (Blender's Combined and Z passes as they are);
    `background` is display-sRGB RGB, or None for a transparent film."""
    bg = np.zeros(3, np.float32) if background is None else np.asarray(background, np.float32)
    return RenderRequest(width=view.width, height=view.height, near=view.near, far=view.far, background=bg,
                         viewmat=view.viewmat.astype(np.float32), K=view.K.astype(np.float32),
                         objects=objects, want_depth=want_depth, raw=True, ortho=view.ortho,
                         film=True, transparent=background is None)


# ------------------------------------------------------------------------------------------- images
def film_pixels(rgba: np.ndarray) -> np.ndarray:
    """A film-layout RGBA image (H, W, 4), bottom row first, as the (H*W, 4) float32 rows a pass's `rect`
    takes: a view when the bytes already are float32 (the backend's answer), never a conversion."""
    return np.asarray(rgba, np.float32).reshape(-1, 4)


def empty_film(width: int, height: int, background: np.ndarray | None, want_depth: bool
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """The passes of a frame with no splats in it: the film alone (transparent, or the world colour given as
    display sRGB), and "far away" depth; no backend needed."""
    rgba = np.zeros((height, width, 4), np.float32)
    if background is not None:
        rgba[..., :3] = srgb_to_linear(np.clip(background, 0.0, 1.0)).astype(np.float32)
        rgba[..., 3] = 1.0
    depth = np.full((height, width), BACKGROUND_DEPTH, np.float32) if want_depth else None
    return rgba, depth


def reduced_size(width: int, height: int, navigating: bool, factor: int = 3) -> tuple[int, int]:
    """The viewport's render size: a `factor` smaller image while the view moves, full when it is still."""
    if not navigating:
        return max(width, 1), max(height, 1)
    return max(width // factor, 1), max(height // factor, 1)


def scaled_view(view: View, width: int, height: int) -> View:
    """The same camera rendered at another pixel size (intrinsics scaled per axis)."""
    sx, sy = width / view.width, height / view.height
    K = view.K.copy()
    K[0] *= sx
    K[1] *= sy
    return View(view.viewmat, K, width, height, view.near, view.far, view.ortho)


def quats_angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (radians) between rotations given as quaternions (sign-agnostic), for tests and checks.

    From the chord |a - b| = 2 sin(angle / 4), which stays accurate for tiny angles where arccos does not.
    """
    a = np.asarray(a, np.float64) / np.linalg.norm(a, axis=-1, keepdims=True)
    b = np.asarray(b, np.float64) / np.linalg.norm(b, axis=-1, keepdims=True)
    b = b * np.where(np.einsum("...i,...i->...", a, b) < 0, -1.0, 1.0)[..., None]
    return 4.0 * np.arcsin(np.clip(np.linalg.norm(a - b, axis=-1) / 2.0, 0.0, 1.0))
