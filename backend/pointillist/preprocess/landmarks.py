"""MediaPipe's 478 face landmarks (legacy face mesh; its models ship inside the mediapipe==0.10.21 wheel).

* The mesh runs on the whole image; MediaPipe's full-range face detector also runs, because the mesh's own
  short-range detector misses small faces. A detected face the mesh missed is meshed on a crop around
  it. When nothing is found the image is tried again padded (faces that fill or leave the frame), then
  in half-overlapping square tiles (both detectors miss faces that are a small share of a wide frame:
  a 62 px face in a 1400×900 shot is found only that way), then turned by 90°, 270° and 180° (photos
  whose orientation tag was lost). A face the detector saw but the mesh could not read is reported as
  too small (or unreadable), not as "no face".
* The largest face (by the landmarks' bounding box) is used; a warning says how many faces there were.
* Faces under 64 px from forehead to chin (landmarks 10 → 152, measured in the ORIGINAL photo's pixels)
  are refused, as are views turned beyond what the fit can handle (see `estimate_yaw`).

Points are (478, 3) float32: x, y in pixels of the given image; z is MediaPipe's relative depth times the
image width, so it is in pixel units too (larger z = farther from the camera, as MediaPipe).
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
from PIL import Image

from ..head import mediapipe_topology as mpt
from .decode import BACKGROUND, PortraitError

MIN_FACE_PX = 64  # forehead (10) to chin (152), in the original photo's pixels
MAX_YAW_DEG = 55.0  # of MediaPipe's own estimate, which under-reports beyond ~45°: ≈ 60° true (see estimate_yaw)
MIRROR_CHECK_DEG = 20.0  # above this the estimate is repeated on the mirrored face (see estimate_yaw)
_WINDOW = 384  # side of the square window a single face is re-meshed in
_lock = threading.RLock()  # MediaPipe graphs are not re-entrant; one lock for all of them (matte.py too)
_mesh = None
_detector = None


@dataclass
class FaceLandmarks:
    points: np.ndarray  # (478, 3) float32: x, y pixels; z MediaPipe relative depth × image width (larger = farther)
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the 468 mesh landmarks
    num_faces: int
    warnings: list[str] = field(default_factory=list)
    yaw_deg: float = 0.0  # estimated head turn, + toward the subject's own left (see estimate_yaw)


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


# --- MediaPipe, always called with _lock held -------------------------------------------------------

def _face_mesh():
    global _mesh
    if _mesh is None:
        import mediapipe as mp

        _mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=5,
                                                min_detection_confidence=0.5)
    return _mesh


def _face_boxes(rgb: np.ndarray) -> list[tuple[float, ...]]:
    """(x0, y0, x1, y1, score) from MediaPipe's full-range detector, largest first (it finds small faces
    the mesh misses)."""
    global _detector
    if _detector is None:
        import mediapipe as mp

        _detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
    h, w = rgb.shape[:2]
    boxes = []
    for det in _detector.process(np.ascontiguousarray(rgb)).detections or []:
        b = det.location_data.relative_bounding_box
        boxes.append((b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h, float(det.score[0])))
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def _mesh_points(rgb: np.ndarray) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    faces = _face_mesh().process(np.ascontiguousarray(rgb)).multi_face_landmarks or []
    return [np.array([[p.x * w, p.y * h, p.z * w] for p in face.landmark], dtype=np.float32) for face in faces]


def _mesh_around(rgb: np.ndarray, centre: np.ndarray, half: float, side: int = _WINDOW,
                 mirror: bool = False) -> list[np.ndarray]:
    """Mesh a square window (centre ± half) resampled to side², points mapped back to `rgb` pixels.

    With `mirror` the window is flipped left-right before meshing and the points are returned in the
    mirrored window's own frame (pixels of the side² window), for the mirrored yaw check.
    """
    scale = side / (2 * half)
    x0, y0 = centre[0] - half, centre[1] - half
    window = Image.fromarray(rgb).transform((side, side), Image.AFFINE, data=(1 / scale, 0, x0, 0, 1 / scale, y0),
                                            resample=Image.BICUBIC, fillcolor=(BACKGROUND,) * 3)
    if mirror:
        window = window.transpose(Image.FLIP_LEFT_RIGHT)
    found = _mesh_points(np.asarray(window))
    if mirror:
        return found
    for pts in found:
        pts[:, :2] = pts[:, :2] / scale + np.array([x0, y0], dtype=np.float32)
        pts[:, 2] /= scale
    return found


def _bbox(pts: np.ndarray) -> tuple[float, float, float, float]:
    mesh = pts[: mpt.NUM_MESH_LANDMARKS, :2]
    return (*(float(v) for v in mesh.min(0)), *(float(v) for v in mesh.max(0)))


def _area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


Box = tuple[float, ...]  # x0, y0, x1, y1 (, detector score)
UNMESHED_MIN_SCORE = 0.75  # a detector box the mesh could not read counts as a face only when this sure
UNMESHED_MIN_PX = 12  # ... and at least this tall (noise gives tiny, unsure boxes)


def _search(rgb: np.ndarray) -> tuple[list[np.ndarray], int, list[Box]]:
    """(meshed faces largest first, distinct faces seen, detector boxes left without a mesh).

    The mesh runs on the whole image; a face box from the full-range detector that no meshed face covers
    is meshed on a crop around it when it is larger than half of every meshed face (so the largest face
    gets landmarks), and counted either way.
    """
    rgb = np.ascontiguousarray(rgb)
    with _lock, native_stderr_silenced():
        found = _mesh_points(rgb)
        boxes = _face_boxes(rgb)
        uncovered = [b for b in boxes
                     if not any(_inside(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2), _bbox(p)) for p in found)]
        largest = max((_area(_bbox(p)) for p in found), default=0.0)
        if uncovered and _area(uncovered[0]) > 0.5 * largest:
            b = uncovered[0]
            centre = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
            extra = _mesh_around(rgb, centre, max(b[2] - b[0], b[3] - b[1]) * 1.1)
            if extra:
                found.append(min(extra, key=lambda p: float(np.linalg.norm(p[mpt.NOSE_TIP, :2] - centre))))
                uncovered = uncovered[1:]
    found.sort(key=lambda p: -_area(_bbox(p)))
    return found, len(found) + len(uncovered), uncovered


def find_faces(rgb: np.ndarray) -> tuple[list[np.ndarray], int]:
    """All meshed faces in an RGB image (largest first) and how many distinct faces were seen."""
    found, count, _ = _search(rgb)
    return found, count


def _search_tiles(rgb: np.ndarray) -> tuple[list[np.ndarray], int, list[Box]]:
    """Square tiles (the short side, then half and a quarter of it, half-overlapping), largest first.

    MediaPipe's detectors miss faces that are small relative to the frame, or in wide frames; in a tile
    the same face is a larger share of the picture. Stops at the first tile size that finds a face.
    """
    h, w = rgb.shape[:2]
    short = min(h, w)
    for side in (short, short // 2, short // 4):
        if side < 96:
            break
        step = side // 2
        xs = sorted({*range(0, max(w - side, 0) + 1, step), max(w - side, 0)})
        ys = sorted({*range(0, max(h - side, 0) + 1, step), max(h - side, 0)})
        faces: list[np.ndarray] = []
        offcentre: list[float] = []  # a face seen by two tiles is kept from the tile it sits most inside
        boxes: list[Box] = []
        for y in ys:
            for x in xs:
                tile_faces, _, tile_boxes = _search(rgb[y:y + side, x:x + side])
                for pts in tile_faces:
                    pts[:, :2] += np.array([x, y], dtype=np.float32)
                    off = float(np.abs(pts[mpt.NOSE_TIP, :2] - (x + side / 2, y + side / 2)).max())
                    same = [i for i, q in enumerate(faces) if _inside(pts[mpt.NOSE_TIP, :2], _bbox(q))]
                    if not same:
                        faces.append(pts)
                        offcentre.append(off)
                    elif off < offcentre[same[0]]:
                        faces[same[0]], offcentre[same[0]] = pts, off
                for b in tile_boxes:
                    moved = (b[0] + x, b[1] + y, b[2] + x, b[3] + y, *b[4:])
                    c = ((moved[0] + moved[2]) / 2, (moved[1] + moved[3]) / 2)
                    if not any(_inside(c, _bbox(q)) for q in faces) and not any(_inside(c, o) for o in boxes):
                        boxes.append(moved)
        boxes = [b for b in boxes if not any(_inside(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2), _bbox(q)) for q in faces)]
        if faces or boxes:
            faces.sort(key=lambda p: -_area(_bbox(p)))
            return faces, len(faces) + len(boxes), sorted(boxes, key=lambda b: -_area(b))
    return [], 0, []


def _rotate(rgb: np.ndarray, quarter_turns: int) -> tuple[np.ndarray, np.ndarray]:
    """`rgb` turned counter-clockwise by 90° × k, and the (2, 3) affine mapping turned pixels back."""
    turned = np.ascontiguousarray(np.rot90(rgb, quarter_turns))
    h, w = rgb.shape[:2]
    # continuous pixel coordinates (edges at integers): np.rot90 k=1 sends (x, y) to (y, w - x)
    back = {1: [[0, -1, w], [1, 0, 0]], 2: [[-1, 0, w], [0, -1, h]], 3: [[0, 1, 0], [-1, 0, h]]}[quarter_turns]
    return turned, np.asarray(back, dtype=np.float64)


def _find_faces_retrying(rgb: np.ndarray) -> tuple[list[np.ndarray], int, list[Box], list[str]]:
    """The whole image; then padded (a face filling or leaving the frame); then tiles (small faces);
    then turned by 90°, 270°, 180° (a lost orientation tag). Detector boxes that could not be meshed
    are returned so a too-small face is named as such rather than as "no face"."""
    found, count, boxes = _search(rgb)
    if found:
        return found, count, boxes, []
    h, w = rgb.shape[:2]
    pad = max(h, w) // 3
    padded = np.full((h + 2 * pad, w + 2 * pad, 3), BACKGROUND, np.uint8)
    padded[pad:pad + h, pad:pad + w] = rgb
    found, count, padded_boxes = _search(padded)
    for pts in found:
        pts[:, :2] -= pad
    boxes = boxes or [(b[0] - pad, b[1] - pad, b[2] - pad, b[3] - pad, *b[4:]) for b in padded_boxes]
    if found:
        return found, count, boxes, []
    found, count, tile_boxes = _search_tiles(rgb)
    boxes = boxes or tile_boxes
    if found:
        return found, count, boxes, []
    for k, degrees in ((1, 90), (3, 270), (2, 180)):
        turned, back = _rotate(rgb, k)
        found, count, _ = _search(turned)
        if found:
            for pts in found:
                pts[:, :2] = pts[:, :2] @ back[:, :2].T.astype(np.float32) + back[:, 2].astype(np.float32)
            note = (f"the face was found only after turning the photo by {degrees}°; "
                    f"check its orientation (EXIF tag missing?)")
            return found, count, [], [note]
    return [], len(boxes), boxes, []


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(subject's left, subject's right) eye-contour centres, (x, y)."""
    left = points[list(mpt.LEFT_EYE_UPPER + mpt.LEFT_EYE_LOWER), :2].mean(0)
    right = points[list(mpt.RIGHT_EYE_UPPER + mpt.RIGHT_EYE_LOWER), :2].mean(0)
    return left, right


def face_height(points: np.ndarray) -> float:
    """Forehead (10) to chin (152) in the points' pixels: a size measure that does not change with roll."""
    return float(np.linalg.norm(points[mpt.CHIN, :2] - points[mpt.FOREHEAD, :2]))


def estimate_yaw(points: np.ndarray) -> float:
    """Head turn in degrees, + toward the subject's own left (0 frontal, ±90 profile).

    The angle of the line between the eye corners in MediaPipe's own 3D landmark frame (x right, z away
    from the camera, both in pixels), averaged over the outer (33/263) and inner (133/362) corners: turning
    the head toward its left pushes the subject's left eye (263, image right) back, so
    yaw = atan2(z263 − z33, |(x, y)263 − (x, y)33|). Taking the in-image length of the corner-to-corner
    vector makes it independent of roll (a face lying on its side reads the same), and it does not depend
    on the face's proportions, unlike the nose tip's 2D offset between the eye corners.

    Measured on renders of our procedural heads at known yaw, 0.55 and 0.9 m away (a subset is a test in
    tests/preprocess/test_landmarks.py): within ~6° up to 45°, then MediaPipe compresses: 55° reads ~51–55°, 65° reads ~49–61°, and from ~70°
    on the mesh often collapses onto a wrong, less-turned face or is not found at all. Meshing the mirrored
    face gives the same angle (sign flipped) up to 45° but saturates later, so `detect_landmarks` takes the
    larger of the two when the first exceeds 20°; its 55° limit then refuses most views beyond ~60° (on
    4 heads × 2 distances: every view up to 50° accepted, 55° refused in 2 of 8, 60–70° in 29 of 40;
    at 75–80° 4 of 16 slipped through, read as 44–46°, the rest refused or not found). Near-profiles
    where MediaPipe hallucinates a less-turned face are caught only when the mirrored face reads far
    enough (or is not found: a warning); landmarks alone cannot see through that.
    """
    pts = np.asarray(points, dtype=np.float64)
    angles = []
    for left, right in ((mpt.LEFT_EYE_OUTER, mpt.RIGHT_EYE_OUTER), (mpt.LEFT_EYE_INNER, mpt.RIGHT_EYE_INNER)):
        d = pts[left] - pts[right]
        angles.append(math.atan2(d[2], math.hypot(d[0], d[1])))  # in-plane length: roll-invariant
    return math.degrees(sum(angles) / len(angles))


def _mirrored_yaw(rgb: np.ndarray, points: np.ndarray) -> float | None:
    """estimate_yaw of the same face meshed in the mirrored image, sign restored (None if not found)."""
    x0, y0, x1, y1 = _bbox(points)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    half = max(x1 - x0, y1 - y0, face_height(points)) * 0.9
    with _lock, native_stderr_silenced():
        found = _mesh_around(np.ascontiguousarray(rgb), centre, half, mirror=True)
    if not found:
        return None
    best = min(found, key=lambda p: np.linalg.norm(p[mpt.NOSE_TIP, :2] - _WINDOW / 2))  # the window's centre face
    return -estimate_yaw(best)


def detect_landmarks(rgb: np.ndarray, *, scale: float = 1.0, check: bool = True) -> FaceLandmarks:
    """Landmarks of the largest face in an (H, W, 3) uint8 RGB image.

    `scale` is `rgb` pixels per original-photo pixel (`DecodedImage.scale`), so the size check and its
    message speak of the photo the artist gave. `check=False` skips the size and turn refusals.
    """
    found, num_faces, boxes, notes = _find_faces_retrying(rgb)
    if not found:
        boxes = [b for b in boxes if b[4] >= UNMESHED_MIN_SCORE and b[3] - b[1] >= UNMESHED_MIN_PX]
        if boxes and check:
            height = (boxes[0][3] - boxes[0][1]) / scale
            if height < 1.5 * MIN_FACE_PX:  # detected but too small to mesh
                raise PortraitError(f"the face is too small: only about {math.floor(height)} px tall; at least "
                                    f"{MIN_FACE_PX} px from forehead to chin are needed, use a closer or "
                                    f"higher-resolution photo")
            raise PortraitError("a face was detected but its landmarks could not be found; use a sharper, "
                                "better lit, more frontal photo")
        raise PortraitError("no human face found: no face was detected; use a photo where the face is clearly visible, "
                            "lit, upright and not covered")
    pts = found[0]
    if num_faces > 1:
        notes.append(f"{num_faces} faces found; using the largest")
    yaw = estimate_yaw(pts)
    if check:
        height = face_height(pts) / scale
        if height < MIN_FACE_PX:
            left, right = eye_centres(pts)
            iod = float(np.linalg.norm(left - right)) / scale
            raise PortraitError(f"the face is too small: only {math.floor(height)} px from forehead to chin "
                                f"({iod:.0f} px between the eyes); at least {MIN_FACE_PX} px are needed, "
                                f"use a closer or higher-resolution photo")
        if abs(yaw) > MIRROR_CHECK_DEG:
            mirrored = _mirrored_yaw(rgb, pts)
            if mirrored is None:
                notes.append(f"the face's turn (about {abs(yaw):.0f}°) could not be confirmed on the mirrored "
                             f"photo; it may be turned further, a more frontal photo fits better")
            elif abs(mirrored) > abs(yaw):
                yaw = mirrored
        if abs(yaw) > MAX_YAW_DEG:
            side = "left" if yaw > 0 else "right"
            raise PortraitError(f"the head is turned too far: about {abs(yaw):.0f}° toward the subject's {side} "
                                f"(profile view); use a photo within {MAX_YAW_DEG:.0f}° of frontal")
    return FaceLandmarks(points=pts.astype(np.float32), box=_bbox(pts), num_faces=num_faces,
                         warnings=notes, yaw_deg=float(yaw))
