"""The similarity crop: transform algebra, pixel convention, the levelled/centred placement, anti-aliasing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pointillist.head import mediapipe_topology as mpt
from pointillist.preprocess.align import (
    EYE_LINE,
    FACE_HEIGHT,
    CropTransform,
    coverage,
    crop_transform,
    warp,
)

from .images import eye_centres


def similarity(degrees: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


def test_inverse_round_trip_and_json():
    t = CropTransform(similarity(17.0, 0.8, 12.0, -4.0), 512)
    pts = np.random.default_rng(0).random((20, 2)) * 500
    np.testing.assert_allclose(t.inverse().apply(t.apply(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(t.inverse().inverse().matrix, t.matrix, atol=1e-12)
    data = json.loads(json.dumps(t.to_json()))  # plain lists and numbers
    assert isinstance(data["matrix"], list) and data["size"] == 512
    back = CropTransform.from_json(data)
    np.testing.assert_allclose(back.matrix, t.matrix) and back.size == 512
    assert t.scale == pytest.approx(0.8) and t.rotation_deg == pytest.approx(17.0)


def test_compose_and_landmark_mapping():
    a = CropTransform(similarity(10, 2.0, 5, 6), 512)
    b = CropTransform(similarity(-30, 0.5, -1, 3), 512)
    pts = np.random.default_rng(1).random((7, 3)) * 100
    np.testing.assert_allclose(b.compose(a).apply(pts), b.apply(a.apply(pts)), atol=1e-9)
    np.testing.assert_allclose(b.compose(a.matrix).matrix, b.compose(a).matrix)
    mapped = a.apply_landmarks(pts)
    assert mapped.dtype == np.float32 and mapped.shape == (7, 3)
    np.testing.assert_allclose(mapped[:, :2], a.apply(pts), rtol=1e-6)
    np.testing.assert_allclose(mapped[:, 2], pts[:, 2] * 2.0, rtol=1e-6)  # z scaled like x and y


def test_bad_matrix_is_refused():
    with pytest.raises(ValueError):
        CropTransform(np.eye(3), 512)
    with pytest.raises(ValueError):
        CropTransform.from_json({"matrix": [[1, 0, float("nan")], [0, 1, 0]], "size": 512})


def fake_face(angle_deg: float, iod: float, centre=(300.0, 200.0)) -> np.ndarray:
    """Landmarks with just the eyes and mouth placed: eye centres iod apart, mouth 0.86 iod below, rolled."""
    pts = np.zeros((478, 3))
    a = math.radians(angle_deg)
    ex, ey = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])  # face x, face y (down)
    c = np.asarray(centre)
    pts[list(mpt.LEFT_EYE_UPPER + mpt.LEFT_EYE_LOWER), :2] = c + ex * iod / 2
    pts[list(mpt.RIGHT_EYE_UPPER + mpt.RIGHT_EYE_LOWER), :2] = c - ex * iod / 2
    pts[[mpt.LEFT_MOUTH_CORNER, mpt.RIGHT_MOUTH_CORNER], :2] = c + ey * 0.86 * iod
    return pts


@pytest.mark.parametrize("roll", [0.0, 25.0, -70.0, 180.0])
def test_crop_levels_the_eyes_and_places_them(roll):
    pts = fake_face(roll, 60.0)
    t = crop_transform(pts, 512)
    left, right = eye_centres(t.apply_landmarks(pts))
    assert abs(left[1] - right[1]) < 1e-3 and left[0] > right[0]  # level, subject's left eye on the image right
    np.testing.assert_allclose((left + right) / 2, (256, EYE_LINE * 512), atol=1e-3)
    # face span (forehead to chin) = max(2.75 eye-to-mouth, 2.45 iod) = 45 % of the crop
    assert t.scale == pytest.approx(FACE_HEIGHT * 512 / max(2.75 * 0.86 * 60, 2.45 * 60))


def test_turned_face_keeps_its_size():
    """The larger of the two size cues wins: a turned face (narrow eyes) is not blown up."""
    frontal = crop_transform(fake_face(0, 60.0), 512).scale
    turned = fake_face(0, 60.0)
    for group in (mpt.LEFT_EYE_UPPER + mpt.LEFT_EYE_LOWER, mpt.RIGHT_EYE_UPPER + mpt.RIGHT_EYE_LOWER):
        turned[list(group), 0] = 300 + (turned[list(group), 0] - 300) * 0.6  # eyes 40 % closer
    assert crop_transform(turned, 512).scale == pytest.approx(frontal * 2.45 / (2.75 * 0.86), rel=1e-6)


def test_warp_follows_the_continuous_pixel_convention():
    """A blob at continuous (x, y) lands at transform.apply((x, y)), upscaling and downscaling."""
    image = np.zeros((600, 800), np.uint8)
    image[300:306, 420:426] = 255  # centre (423, 303)
    ys, xs = np.mgrid[0:512, 0:512] + 0.5
    for degrees, scale, target in ((20, 1.7, (200.3, 310.6)), (-8, 0.45, (91.2, 402.9))):
        matrix = similarity(degrees, scale, 0, 0)
        matrix[:, 2] = np.asarray(target) - matrix[:, :2] @ (423.0, 303.0)
        t = CropTransform(matrix, 512)
        out = warp(image, t, fill=0).astype(float)
        w = out / out.sum()
        np.testing.assert_allclose(((w * xs).sum(), (w * ys).sum()), t.apply([[423.0, 303.0]])[0], atol=0.1)


def test_downscaling_warp_does_not_alias():
    """A fine stripe pattern shrunk 4× averages to grey instead of moiré."""
    stripes = np.zeros((2048, 2048, 3), np.uint8)
    stripes[:, ::2] = 255
    out = warp(stripes, CropTransform(similarity(0, 0.25, 0, 0), 512))
    assert out.shape == (512, 512, 3)
    assert np.abs(out[8:-8, 8:-8].astype(float) - 127.5).max() < 12


def test_fill_and_coverage():
    image = np.full((100, 100, 3), 200, np.uint8)
    t = CropTransform(similarity(0, 1.0, 50, 50), 200)  # the image occupies [50, 150)²
    out = warp(image, t)
    assert np.all(out[:40, :40] == 128) and np.all(out[60:140, 60:140] == 200)
    assert np.all(warp(image[..., 0], t, fill=0)[:40, :40] == 0)
    valid = coverage(image.shape, t)
    assert valid[60:140, 60:140].all() and not valid[:45].any() and not valid[:, 155:].any()
    nowhere = CropTransform(similarity(0, 0.5, 5000, 5000), 64)
    assert np.all(warp(np.zeros((400, 400, 3), np.uint8), nowhere) == 128)
