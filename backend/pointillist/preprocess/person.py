"""Is the face a person's? MediaPipe's BlazePose (detector and landmark model ship in the wheel) must find a
human body at the face MediaPipe meshed.

The face detectors and the face mesh were trained to find faces, not to tell a human face from an animal's:
on `../shared/portraits/not_faces` they mesh dogs, cats, alpacas and a monkey with full confidence, and the
head fit explains those landmarks as well as a person's (error 1.6–2.8 % of the inter-ocular distance
against 1.4–2.6 % for paintings). BlazePose's person detector and pose model were trained on people: they
find a person in photos, paintings, a statue and a 3D cartoon, and nothing in those animal pictures. The
check looks at the whole photo (framed as the photographer framed the person) and then at the aligned crop
(a small face in a wide shot), and needs the pose's nose near the meshed face's nose, so a person elsewhere
in the picture does not vouch for an animal's face.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..head import mediapipe_topology as mpt
from .align import CropTransform
from .landmarks import _lock, eye_centres, native_stderr_silenced

#: the whole photo is looked at with at most this many pixels on its long side
WHOLE_SIDE = 640
#: the pose's nose must lie within this many inter-ocular distances of the meshed nose tip
NOSE_TOLERANCE_IOD = 1.0
_pose = None


def _pose_nose(rgb: np.ndarray) -> np.ndarray | None:
    """(x, y) pixel position of the nose of the person BlazePose finds in `rgb`, or None."""
    global _pose
    h, w = rgb.shape[:2]
    with _lock, native_stderr_silenced():
        if _pose is None:
            import mediapipe as mp

            _pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, min_detection_confidence=0.5)
        found = _pose.process(np.ascontiguousarray(rgb)).pose_landmarks
    if found is None:
        return None
    nose = found.landmark[0]
    return np.array([nose.x * w, nose.y * h])


def person_at_face(photo: np.ndarray, crop: np.ndarray, transform: CropTransform, landmarks: np.ndarray) -> bool:
    """True when a human body is found at the face: `photo` (H, W, 3) uint8, `crop` the aligned crop
    `transform` maps it to, `landmarks` (478, 2+) in crop pixels."""
    left, right = eye_centres(landmarks)
    iod = max(float(np.linalg.norm(left - right)), 1.0)
    nose = np.asarray(landmarks[mpt.NOSE_TIP, :2], dtype=np.float64)
    # the whole photo (at most WHOLE_SIDE px), in its own pixels scaled; then the aligned crop
    shrink = min(1.0, WHOLE_SIDE / max(photo.shape[:2]))
    whole = photo if shrink == 1.0 else np.asarray(
        Image.fromarray(photo).resize((max(1, round(photo.shape[1] * shrink)), max(1, round(photo.shape[0] * shrink))),
                                      Image.LANCZOS))
    to_whole = transform.inverse()
    windows = ((whole, to_whole.apply(nose[None])[0] * shrink, iod / transform.scale * shrink),
               (crop, nose, iod))
    for image, expected, scale_iod in windows:
        found = _pose_nose(image)
        if found is not None and np.linalg.norm(found - expected) <= NOSE_TOLERANCE_IOD * scale_iod:
            return True
    return False
