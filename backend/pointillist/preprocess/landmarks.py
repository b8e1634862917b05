"""MediaPipe's 478 face landmarks (legacy face mesh, model inside the mediapipe==0.10.21 wheel).

The largest face is used (a warning says how many were found); faces under 64 px and views turned too far
for the fit are refused with a message that names the measurement.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..head import mediapipe_topology as mpt
from .decode import PortraitError

MIN_FACE_PX = 64
MAX_YAW_DEG = 60.0
_lock = threading.Lock()
_mesh = None
_detector = None


@dataclass
class FaceLandmarks:
    points: np.ndarray  # (478, 3) float32: x, y pixels; z MediaPipe relative depth in pixels (larger = farther)
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the mesh landmarks
    num_faces: int
    yaw_deg: float  # estimated head turn, + toward the subject's left
    warnings: list[str] = field(default_factory=list)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Silence TFLite/absl's C++ start-up chatter, which bypasses Python's logging and env switches.

    fd 2 is pointed at /dev/null only while MediaPipe runs (under the module lock), so an artist's
    terminal shows our messages, not "Created TensorFlow Lite XNNPACK delegate".
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real stderr (embedded): nothing to silence
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _face_mesh():
    global _mesh
    if _mesh is None:
        import mediapipe as mp

        _mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=5,
                                                min_detection_confidence=0.5)
    return _mesh


def _face_boxes(rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
    """All faces by MediaPipe's full-range detector (finds small faces the mesh's own detector misses)."""
    global _detector
    if _detector is None:
        import mediapipe as mp

        _detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
    h, w = rgb.shape[:2]
    boxes = []
    for det in _detector.process(np.ascontiguousarray(rgb)).detections or []:
        b = det.location_data.relative_bounding_box
        boxes.append((b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h))
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def _mesh_points(rgb: np.ndarray) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    faces = _face_mesh().process(np.ascontiguousarray(rgb)).multi_face_landmarks or []
    return [np.array([[p.x * w, p.y * h, p.z * w] for p in face.landmark], dtype=np.float32) for face in faces]


def _mesh_in_box(rgb: np.ndarray, box: tuple[float, float, float, float], margin: float = 0.6, side: int = 512) -> np.ndarray | None:
    """Run the face mesh on a square crop around a detected box and map the points back."""
    from PIL import Image

    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) * (0.5 + margin)
    x0, y0 = cx - half, cy - half
    scale = side / (2 * half)
    crop = Image.fromarray(rgb).transform((side, side), Image.AFFINE, data=(1 / scale, 0, x0, 0, 1 / scale, y0),
                                          resample=Image.BICUBIC, fillcolor=(128, 128, 128))
    found = _mesh_points(np.asarray(crop))
    if not found:
        return None
    pts = found[0].copy()
    pts[:, :2] = pts[:, :2] / scale + np.array([x0, y0])
    pts[:, 2] /= scale
    return pts


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
    with _lock, native_stderr_silenced():
        found = _mesh_points(rgb)
        boxes = _face_boxes(rgb)
        if boxes and (not found or len(boxes) > len(found)):
            # faces too small for the mesh's own detector (group shots, wide frames): mesh the largest box
            in_box = _mesh_in_box(rgb, boxes[0])
            if in_box is not None:
                found = [in_box] + found
    if not found:
        raise PortraitError("no face found; use a photo where one face is clearly visible, lit and not covered")
    faces = found
    num_faces = max(len(found), len(boxes))
    candidates = []
    for pts in faces:
        mesh = pts[: mpt.NUM_MESH_LANDMARKS, :2]
        box = (*mesh.min(0), *mesh.max(0))
        candidates.append(((box[2] - box[0]) * (box[3] - box[1]), pts, box))
    candidates.sort(key=lambda c: -c[0])
    _, pts, box = candidates[0]
    notes = []
    if num_faces > 1:
        notes.append(f"{num_faces} faces found; using the largest")
    height = box[3] - box[1]
    if height < MIN_FACE_PX:
        raise PortraitError(f"the face is only {height:.0f} px tall (at least {MIN_FACE_PX} px needed); use a closer or larger photo")
    yaw = estimate_yaw(pts)
    if abs(yaw) > MAX_YAW_DEG:
        raise PortraitError(f"the head is turned about {abs(yaw):.0f}° (profile view); use a photo within {MAX_YAW_DEG:.0f}° of frontal")
    return FaceLandmarks(points=pts, box=tuple(float(v) for v in box), num_faces=num_faces, yaw_deg=yaw, warnings=notes)
