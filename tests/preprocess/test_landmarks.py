"""MediaPipe landmarks: the astronaut, no face, small faces, several faces, turned heads, rotated photos."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from pointillist.head import mediapipe_topology as mpt
from pointillist.preprocess.decode import PortraitError
from pointillist.preprocess.landmarks import (
    MAX_YAW_DEG,
    MIN_FACE_PX,
    detect_landmarks,
    estimate_yaw,
    face_height,
    find_faces,
)

from .images import astronaut, eye_centres, on_canvas, resized


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return astronaut()


@pytest.fixture(scope="module")
def astro_landmarks(astro):
    return detect_landmarks(astro)


def test_astronaut_landmarks(astro_landmarks):
    found = astro_landmarks
    pts = found.points
    assert pts.shape == (478, 3) and pts.dtype == np.float32
    assert found.num_faces == 1 and found.warnings == []
    x0, y0, x1, y1 = found.box
    assert 150 < x0 < x1 < 350 and 60 < y0 < y1 < 300  # her face, in pixels of the 512² image
    assert pts[mpt.LEFT_EYE_OUTER, 0] > pts[mpt.RIGHT_EYE_OUTER, 0]  # subject's left eye on the image right
    assert pts[mpt.LEFT_IRIS[0], 0] > pts[mpt.RIGHT_IRIS[0], 0]
    # z is in pixels, larger = farther: the nose tip is nearer than the cheek contour
    assert pts[mpt.NOSE_TIP, 2] < pts[234, 2] - 20 and pts[mpt.NOSE_TIP, 2] < pts[454, 2] - 20
    assert abs(found.yaw_deg) < 10
    assert face_height(pts) > 100


@pytest.mark.parametrize("kind", ["noise", "gradient", "flat"])
def test_no_face(kind):
    rng = np.random.default_rng(0)
    image = {"noise": lambda: rng.integers(0, 255, (300, 400, 3), dtype=np.uint8),
             "gradient": lambda: np.broadcast_to(np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None], (300, 400, 3)).copy(),
             "flat": lambda: np.full((300, 400, 3), 128, np.uint8)}[kind]()
    with pytest.raises(PortraitError, match="no human face found: no face was detected; use a photo where the face is clearly visible"):
        detect_landmarks(image)


def test_small_face_is_refused_naming_its_size(astro):
    tiny = on_canvas(resized(astro, (90, 90)), (400, 400), (150, 150))
    with pytest.raises(PortraitError, match=rf"the face is too small: only \d+ px from forehead to chin "
                                            rf"\(\d+ px between the eyes\); at least {MIN_FACE_PX} px are needed") as err:
        detect_landmarks(tiny)
    assert int(str(err.value).split("only ")[1].split(" px")[0]) < 30


def test_face_size_is_measured_in_original_pixels(astro):
    """A 54 px face in a 2× downscaled photo was 108 px in the photo: accepted."""
    image = on_canvas(resized(astro, (256, 256)), (600, 600), (100, 100))
    with pytest.raises(PortraitError, match="too small: only 5[0-9] px"):
        detect_landmarks(image)
    assert face_height(detect_landmarks(image, scale=0.5).points) == pytest.approx(54, abs=3)
    assert detect_landmarks(image, check=False).num_faces == 1


def test_several_faces_use_the_largest(astro):
    face = astro[0:330, 60:420]
    canvas = on_canvas(face, (900, 420), (20, 40))
    canvas[100:320, 600:840] = resized(face, (240, 220))
    found = detect_landmarks(canvas)
    assert found.num_faces == 2
    assert found.warnings == ["2 faces found; using the largest"]
    assert found.points[mpt.NOSE_TIP, 0] < 450  # the big face, on the left
    faces, count = find_faces(canvas)  # the smaller face is counted; it is meshed only when the mesh saw it
    assert count == 2 and faces[0][mpt.NOSE_TIP, 0] < 450


@pytest.mark.parametrize("side", [180, 300])
def test_small_face_in_a_wide_shot_is_found(astro, astro_landmarks, side):
    """Both MediaPipe detectors miss a face that is a small share of a wide frame; the tiles find it."""
    wide = on_canvas(resized(astro, (side, side)), (1400, 900), (900, 500))
    found = detect_landmarks(wide, check=False)
    expected = astro_landmarks.points[:468, :2] * side / 512 + (900, 500)
    assert np.linalg.norm(found.points[:468, :2] - expected, axis=1).mean() < 0.02 * side
    assert found.num_faces == 1


@pytest.mark.parametrize("quarter_turns", [1, 3])
def test_photo_on_its_side_is_found(astro, astro_landmarks, quarter_turns):
    """A portrait whose orientation tag was lost: landmarks still land on the face, in the turned image."""
    turned = np.ascontiguousarray(np.rot90(astro, quarter_turns))
    found = detect_landmarks(turned)
    # back to the upright image's pixels: np.rot90 k=1 sends (x, y) to (y, w - x)
    x, y = found.points[:, 0].astype(float), found.points[:, 1].astype(float)
    upright = np.stack([512 - y, x], 1) if quarter_turns == 1 else np.stack([y, 512 - x], 1)
    err = np.linalg.norm(upright[:468] - astro_landmarks.points[:468, :2], axis=1).mean()
    assert err < 12  # ~2–10 px: MediaPipe is less precise on its side; the crop re-detection fixes that
    assert abs(found.yaw_deg) < 15  # the yaw estimate does not mistake roll for a turn


# --- the turn estimate ------------------------------------------------------------------------------

def turned(points: np.ndarray, yaw_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """3D landmarks (x right, y down, z away) turned toward the subject's left by yaw, then rolled in-plane."""
    p = points.astype(np.float64) - points.mean(0)
    a = math.radians(yaw_deg)
    x = p[:, 0] * math.cos(a) - p[:, 2] * math.sin(a)
    z = p[:, 2] * math.cos(a) + p[:, 0] * math.sin(a)  # the image-right (subject's left) side moves away
    r = math.radians(roll_deg)
    xr, yr = x * math.cos(r) - p[:, 1] * math.sin(r), x * math.sin(r) + p[:, 1] * math.cos(r)
    return np.stack([xr + 256, yr + 256, z], 1)


@pytest.mark.parametrize("yaw", [-70.0, -40.0, -15.0, 0.0, 20.0, 50.0, 80.0])
def test_yaw_estimate_on_turned_landmark_sets(astro_landmarks, yaw):
    """Synthetic: the astronaut's own 3D landmarks turned in 3D by a known yaw (and rolled)."""
    base = estimate_yaw(astro_landmarks.points)
    for roll in (0.0, 35.0, 90.0, 180.0):
        assert estimate_yaw(turned(astro_landmarks.points, yaw, roll)) == pytest.approx(base + yaw, abs=1.0)


def test_yaw_limits():
    assert 50 <= MAX_YAW_DEG <= 60


@pytest.fixture(scope="module")
def render_head(head):
    from pointillist.avatar.animate import AvatarAnimator
    from pointillist.synth.procedural import make_procedural_avatar

    return {seed: AvatarAnimator(make_procedural_avatar(seed, head, hair_style=style, beard=False), head)
            for seed, style in ((0, "bald"), (5, "short"))}


def render(animator, camera_yaw: float) -> np.ndarray:
    from pointillist.avatar.controls import FaceControls
    from pointillist.preview import ViewSpec, render_frame

    view = ViewSpec(yaw_deg=camera_yaw, radius=0.9, fov_deg=26.0, width=512, height=512, target=(0.0, 0.0, 0.03))
    return np.ascontiguousarray(render_frame(animator, FaceControls(), view))


@pytest.mark.parametrize("seed", [0, 5])
def test_yaw_on_renders_at_known_angles(render_head, seed):
    """Real MediaPipe output on renders of our heads: the camera orbiting toward the subject's left shows a
    head turned toward its right (negative yaw). Accepted up to 50°, refused from ~60°; see estimate_yaw."""
    for camera_yaw, tolerance in ((0.0, 4.0), (30.0, 7.0), (-30.0, 7.0), (45.0, 7.0), (-50.0, 7.0)):
        found = detect_landmarks(render(render_head[seed], camera_yaw))
        assert found.yaw_deg == pytest.approx(-camera_yaw, abs=tolerance), camera_yaw


_UNDER_REPORTED = pytest.mark.xfail(strict=True, reason=(
    "MediaPipe's yaw under-reports toward profile and depends on the face: with the synthetic engine v2's "
    "appearance of seed 5 it reads 54.6° at a true 65° (the limit is 55°), so this profile passes the check; "
    "a learned pose estimate is part of the blocked portrait-understanding issue (landmark refiner)"))


@pytest.mark.parametrize("seed,camera_yaw", [(0, 65.0), (0, -65.0), (0, 70.0), (5, 65.0),
                                             pytest.param(5, -65.0, marks=_UNDER_REPORTED), (5, 70.0)])
def test_profile_views_are_refused(render_head, seed, camera_yaw):
    with pytest.raises(PortraitError, match=rf"the head is turned too far: about \d+° toward the subject's "
                                            rf"(left|right) \(profile view\); use a photo within {MAX_YAW_DEG:.0f}°"):
        detect_landmarks(render(render_head[seed], camera_yaw))


def test_detection_from_several_threads(astro, astro_landmarks):
    results: list[np.ndarray] = []

    def work():
        results.append(detect_landmarks(astro).points)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    for pts in results:
        np.testing.assert_allclose(pts, astro_landmarks.points, atol=1e-3)


def test_eye_centres_helper_matches_topology(astro_landmarks):
    left, right = eye_centres(astro_landmarks.points)
    assert left[0] > right[0] and abs(left[1] - right[1]) < 10


def test_detected_but_unmeshable_face_is_named(monkeypatch):
    """A face the detector saw but the mesh could not read: named as too small (or unreadable), and
    unsure or tiny detector boxes (noise) stay "no face"."""
    from pointillist.preprocess import landmarks

    image = np.full((300, 300, 3), 128, np.uint8)
    for boxes, message in (([(10.0, 10.0, 40.0, 40.0, 0.9)], "the face is too small: only about 30 px tall"),
                           ([(10.0, 10.0, 210.0, 210.0, 0.9)], "a face was detected but its landmarks could not be found"),
                           ([(10.0, 10.0, 40.0, 40.0, 0.6)], "no human face found"),
                           ([(10.0, 10.0, 18.0, 18.0, 0.95)], "no human face found")):
        monkeypatch.setattr(landmarks, "_find_faces_retrying", lambda rgb, b=boxes: ([], len(b), b, []))
        with pytest.raises(PortraitError, match=message):
            detect_landmarks(image)


def test_package_exports_load_lazily():
    from pointillist import preprocess

    assert preprocess.detect_landmarks is detect_landmarks and preprocess.PortraitError is PortraitError
    with pytest.raises(AttributeError):
        preprocess.no_such_name  # noqa: B018
