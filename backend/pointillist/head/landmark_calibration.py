"""Where MediaPipe sees its 478 landmarks on a head model: a fixed barycentric mapping, measured once.

The fit (`fit.py`) needs every MediaPipe landmark as a point on the head model's surface. For our
template the face *is* MediaPipe's topology, so the mapping exists by construction. For any other head
model (FLAME above all) there is no such table we may ship, so we measure it: render the model's neutral
mesh from a ring of known cameras, run MediaPipe on every render, triangulate each landmark from its 2D
detections (linear DLT, then the same with views whose reprojection error is an outlier dropped), and
bind the triangulated point to the nearest allowed triangle. The result is stored in the model's `.npz`
(`landmark_faces`, `landmark_barycentrics`, and a report in `meta`), so nothing is re-measured at run time.

Triangulating 2D detections (instead of trusting MediaPipe's own z) means the mapping agrees with what
the detector reports in every view, which is what the 2D fit term compares against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from . import mediapipe_topology as mpt
from .data import HeadModelData

Renderer = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]  # (viewmat, K, width, height) -> RGB uint8

#: yaw x pitch ring: wide enough to pin depth, narrow enough that MediaPipe still reads every landmark.
DEFAULT_VIEWS: tuple[tuple[float, float], ...] = tuple((y, p) for y in (-30.0, -15.0, 0.0, 15.0, 30.0) for p in (-10.0, 5.0, 15.0))
EXCLUDED_PARTS = ("teeth_upper", "teeth_lower", "mouth", "mouth_cavity")  # never where a landmark sits
EYEBALL_PARTS = ("left_eyeball", "right_eyeball")


class CalibrationError(RuntimeError):
    """MediaPipe could not read the head model's renders well enough to measure the mapping."""


@dataclass
class LandmarkCalibration:
    landmark_faces: np.ndarray  # (478,) int64
    landmark_barycentrics: np.ndarray  # (478, 3) float32
    points: np.ndarray  # (478, 3) triangulated positions, head space
    views_used: int
    reprojection_px: float  # mean over landmarks and inlier views, at the render size
    surface_distance_mm: float  # median distance from triangulated point to the bound surface point

    def report(self) -> dict:
        return {"views_used": self.views_used, "reprojection_px": round(self.reprojection_px, 3),
                "surface_distance_mm": round(self.surface_distance_mm, 3), "detector": "mediapipe 0.10.21 face mesh"}


def triangulate(projections: np.ndarray, points2d: np.ndarray, outlier_factor: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Linear triangulation of L points seen in N views: projections (N, 3, 4), points2d (N, L, 2).

    Returns (points (L, 3), inlier mask (N, L)). After a first DLT over all views, views whose
    reprojection error exceeds `outlier_factor` x that landmark's median error (and 1 px) are dropped
    and the point is solved again, so one confused detection does not pull a landmark off the face.
    """
    P = np.asarray(projections, dtype=np.float64)
    uv = np.asarray(points2d, dtype=np.float64)
    N, L = uv.shape[:2]
    if N < 2:
        raise ValueError("triangulation needs at least two views")
    # rows u*P3 - P1 and v*P3 - P2 per view: (L, 2N, 4)
    rows = np.concatenate([uv[..., 0, None] * P[:, None, 2] - P[:, None, 0],
                           uv[..., 1, None] * P[:, None, 2] - P[:, None, 1]], axis=0).transpose(1, 0, 2)

    def solve(mask: np.ndarray) -> np.ndarray:
        weights = np.concatenate([mask, mask], axis=0).T[..., None].astype(np.float64)  # (L, 2N, 1)
        _, _, vt = np.linalg.svd(rows * weights)
        X = vt[:, -1]
        return X[:, :3] / X[:, 3:4]

    def errors(X: np.ndarray) -> np.ndarray:
        h = np.einsum("nij,lj->nli", P, np.concatenate([X, np.ones((L, 1))], axis=1))
        return np.linalg.norm(h[..., :2] / h[..., 2:3] - uv, axis=-1)  # (N, L)

    inliers = np.ones((N, L), dtype=bool)
    X = solve(inliers)
    err = errors(X)
    limit = np.maximum(outlier_factor * np.median(err, axis=0), 1.0)
    inliers = err <= limit[None]
    inliers[:, inliers.sum(0) < 2] = True  # too few left: keep them all
    return solve(inliers), inliers


def neutral_views(data: HeadModelData, width: int = 512, height: int = 512, fov_deg: float = 26.0,
                  views: Sequence[tuple[float, float]] = DEFAULT_VIEWS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(viewmat, K) pairs orbiting the face, framed so the head fills about 70 % of the image height."""
    from ..render.camera import fov_to_K, orbit_viewmat

    v = data.vertices.astype(np.float64)
    front = v[v[:, 2] > np.median(v[:, 2])]  # the half of the head facing +z: the face
    target = 0.5 * (front.min(0) + front.max(0))
    target[2] = float(np.median(v[:, 2]))
    head_height = float(np.ptp(front[:, 1]))
    radius = 0.5 * head_height / math.tan(0.5 * math.radians(fov_deg)) / 0.7 + target[2]
    K = fov_to_K(fov_deg, width, height)
    return [(orbit_viewmat(yaw, pitch, radius, tuple(target)), K) for yaw, pitch in views]


def mesh_renderer(data: HeadModelData) -> Renderer:
    """Flat-lit grey renders of the neutral mesh without teeth (MediaPipe reads them as faces)."""
    from .mesh_preview import render_mesh

    vertices = data.vertices.astype(np.float64)
    faces = data.faces[~_parts(data, EXCLUDED_PARTS)]
    return lambda viewmat, K, w, h: render_mesh(vertices, faces, viewmat, K, w, h, background=(0.5, 0.5, 0.5))


def calibrate_landmarks(data: HeadModelData, *, renderer: Renderer | None = None, width: int = 512, height: int = 512,
                        views: Sequence[tuple[float, float]] = DEFAULT_VIEWS, min_views: int = 6) -> LandmarkCalibration:
    """Measure the 478-landmark mapping of a head model (see the module docstring)."""
    from ..avatar.binding import bind_to_nearest_triangles
    from ..preprocess.decode import PortraitError
    from ..preprocess.landmarks import detect_landmarks

    render = renderer or mesh_renderer(data)
    projections, detections, missed = [], [], 0
    for viewmat, K in neutral_views(data, width, height, views=views):
        try:
            points = detect_landmarks(render(viewmat, K, width, height), check=False).points
        except PortraitError:
            missed += 1
            if len(views) - missed < min_views:  # cannot reach min_views any more: say so now
                break
            continue
        projections.append(K @ viewmat[:3, :])
        detections.append(points[:, :2])
    if len(projections) < min_views:
        raise CalibrationError(f"MediaPipe found the face in only {len(projections)} of {len(projections) + missed} "
                               f"renders of {data.model_id!r} (at least {min_views} of {len(views)} are needed); is the "
                               f"model's face toward +z, y up, in metres?")
    X, inliers = triangulate(np.stack(projections), np.stack(detections))
    P = np.stack(projections)
    h = np.einsum("nij,lj->nli", P, np.concatenate([X, np.ones((len(X), 1))], axis=1))
    err = np.linalg.norm(h[..., :2] / h[..., 2:3] - np.stack(detections), axis=-1)

    vertices = data.vertices.astype(np.float64)
    excluded, eyeballs = _parts(data, EXCLUDED_PARTS), _parts(data, EYEBALL_PARTS)
    mesh = slice(0, mpt.NUM_MESH_LANDMARKS)
    irises = slice(mpt.NUM_MESH_LANDMARKS, mpt.NUM_LANDMARKS)
    skin = bind_to_nearest_triangles(X[mesh], vertices, data.faces, allowed=~excluded & ~eyeballs if eyeballs.any() else ~excluded)
    eye = bind_to_nearest_triangles(X[irises], vertices, data.faces, allowed=eyeballs if eyeballs.any() else ~excluded)
    faces = np.concatenate([skin.triangles, eye.triangles]).astype(np.int64)
    bary = np.concatenate([skin.barycentrics, eye.barycentrics]).astype(np.float32)
    on_surface = np.einsum("lk,lkc->lc", bary, vertices[data.faces[faces]])
    return LandmarkCalibration(
        landmark_faces=faces, landmark_barycentrics=bary, points=X, views_used=len(projections),
        reprojection_px=float(err[inliers].mean()),
        surface_distance_mm=float(np.median(np.linalg.norm(on_surface - X, axis=1)) * 1000),
    )


def _parts(data: HeadModelData, names: Sequence[str]) -> np.ndarray:
    """(F,) mask of the faces in any of the named parts the model has (none: all False)."""
    mask = np.zeros(data.num_faces, dtype=bool)
    for name in names:
        if data.face_parts is not None and name in data.part_names:
            mask |= data.part_mask(name)
    return mask


def with_calibrated_landmarks(data: HeadModelData, **kwargs) -> tuple[HeadModelData, LandmarkCalibration]:
    """A copy of `data` carrying the measured mapping and its report in `meta['landmark_calibration']`."""
    cal = calibrate_landmarks(data, **kwargs)
    meta = dict(data.meta)
    meta["landmark_calibration"] = cal.report()
    out = replace(data, landmark_faces=cal.landmark_faces, landmark_barycentrics=cal.landmark_barycentrics, meta=meta)
    out.validate()
    return out, cal
