"""MediaPipe's 478 face landmarks (legacy face mesh, model inside the mediapipe==0.10.21 wheel).

The largest face is used (a warning says how many were found); faces under 64 px and views turned too far
for the fit are refused with a message that names the measurement.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from ..head import mediapipe_topology as mpt
from .decode import PortraitError

MIN_FACE_PX = 64
MAX_YAW_DEG = 60.0
_lock = threading.Lock()
_mesh = None


@dataclass
class FaceLandmarks:
    points: np.ndarray  # (478, 3) float32: x, y pixels; z MediaPipe relative depth in pixels (larger = farther)
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the mesh landmarks
    num_faces: int
    yaw_deg: float  # estimated head turn, + toward the subject's left
    warnings: list[str] = field(default_factory=list)


def _face_mesh():
    global _mesh
    if _mesh is None:
        import mediapipe as mp

        _mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=5,
                                                min_detection_confidence=0.5)
    return _mesh


def estimate_yaw(points: np.ndarray) -> float:
    """Head turn from the nose tip's place between the outer eye corners (0 frontal, ±90 profile).

    For a frontal face the nose tip projects midway; turned by θ it shifts by about sin θ times the
    corner-to-nose depth, so the normalised offset maps back through arcsin.
    """
    left, right, nose = points[mpt.LEFT_EYE_OUTER, :2], points[mpt.RIGHT_EYE_OUTER, :2], points[mpt.NOSE_TIP, :2]
    axis = left - right
    width = np.linalg.norm(axis)
    if width < 1e-6:
        return 90.0
    t = float(np.dot(nose - right, axis) / width**2)  # 0.5 when frontal
    return math.degrees(math.asin(float(np.clip((t - 0.5) * 2.0 / 1.1, -1.0, 1.0))))


def detect_landmarks(rgb: np.ndarray) -> FaceLandmarks:
    h, w = rgb.shape[:2]
    with _lock:
        result = _face_mesh().process(np.ascontiguousarray(rgb))
    faces = result.multi_face_landmarks or []
    if not faces:
        raise PortraitError("no face found; use a photo where one face is clearly visible, lit and not covered")
    candidates = []
    for face in faces:
        pts = np.array([[p.x * w, p.y * h, p.z * w] for p in face.landmark], dtype=np.float32)
        mesh = pts[: mpt.NUM_MESH_LANDMARKS, :2]
        box = (*mesh.min(0), *mesh.max(0))
        candidates.append(((box[2] - box[0]) * (box[3] - box[1]), pts, box))
    candidates.sort(key=lambda c: -c[0])
    _, pts, box = candidates[0]
    notes = []
    if len(faces) > 1:
        notes.append(f"{len(faces)} faces found; using the largest")
    height = box[3] - box[1]
    if height < MIN_FACE_PX:
        raise PortraitError(f"the face is only {height:.0f} px tall (at least {MIN_FACE_PX} px needed); use a closer or larger photo")
    yaw = estimate_yaw(pts)
    if abs(yaw) > MAX_YAW_DEG:
        raise PortraitError(f"the head is turned about {abs(yaw):.0f}° (profile view); use a photo within {MAX_YAW_DEG:.0f}° of frontal")
    return FaceLandmarks(points=pts, box=tuple(float(v) for v in box), num_faces=len(faces), yaw_deg=yaw, warnings=notes)
