"""The completeness check's regions and coverage, and the identity instrument the benchmark uses."""

from __future__ import annotations

import numpy as np
import pytest

from pointillist.completeness import CHIN_MARGIN, CompletenessCheck, Coverage, PortraitRegions, coverage
from pointillist.head import mediapipe_topology as mpt

S = 200


def _landmarks() -> np.ndarray:
    """478 landmarks whose face oval is a circle of radius 40 px at (100, 90); the chin (152) at its bottom."""
    points = np.zeros((478, 3), np.float32)
    angles = np.linspace(-np.pi / 2, 3 * np.pi / 2, len(mpt.FACE_OVAL), endpoint=False)
    for i, a in zip(mpt.FACE_OVAL, angles):
        points[i, :2] = (100 + 40 * np.cos(a), 90 + 40 * np.sin(a))
    points[mpt.CHIN, :2] = (100, 130)
    return points


def test_regions_follow_the_oval_the_matte_above_the_chin_the_photo_and_the_hands():
    matte = np.zeros((S, S), np.uint8)
    matte[20:, 40:160] = 255  # the person: head and hair above, shoulders below
    photo = np.ones((S, S), bool)
    photo[:, :50] = False  # the photo ends at x = 50
    hands = np.zeros((S, S), bool)
    hands[60:100, 130:160] = True
    r = PortraitRegions.from_portrait(_landmarks(), matte, photo, hands)
    assert r.face[90, 100] and not r.face[90, 145] and not r.face[10, 100]
    chin = 130 + CHIN_MARGIN * S
    assert r.head[int(chin) - 1, 100] and not r.head[int(chin) + 2, 100]  # the collar is not the head
    assert r.head[30, 60] and not r.head[30, 45]  # past the photo's edge says nothing
    assert not r.head[80, 140] and r.head[80, 120]  # a hand is not the head
    half = PortraitRegions.from_portrait(_landmarks(), matte, photo, hands, size=S // 2)
    assert half.face.shape == (S // 2, S // 2) and abs(half.face.mean() - r.face.mean()) < 0.01


def test_coverage_and_the_check_say_what_falls_short():
    r = PortraitRegions.from_portrait(_landmarks(), np.full((S, S), 255, np.uint8))
    alpha = np.zeros((S, S), np.float32)
    assert coverage(alpha, r) == Coverage(0.0, 0.0)
    alpha[r.face] = 0.9
    cover = coverage(alpha, r)
    assert cover.face == 1.0 and 0 < cover.head < 1
    check = CompletenessCheck()
    failures = check.failures(cover, 500)
    assert len(failures) == 1 and "head" in failures[0]
    assert check.failures(Coverage(1.0, 1.0), 500) == []
    assert "only 12 points" in check.failures(Coverage(1.0, 1.0), 12)[0]
    alpha[r.face] = 0.4  # under half opaque does not cover
    assert coverage(alpha, r).face == 0.0


def test_identity_scores_the_same_face_high_and_another_low():
    identity = pytest.importorskip("pointillist.identity")
    try:
        meter = identity.IdentityMeter()
    except identity.IdentityUnavailable as exc:
        pytest.skip(str(exc))
    import skimage.data
    from PIL import Image

    astronaut = skimage.data.astronaut()
    face = meter.face(astronaut)
    assert face is not None and face.score > 0.8 and face.feature.shape == (128,)
    assert meter.cosine(face, face) == pytest.approx(1.0, abs=1e-5)
    smaller = meter.face(np.asarray(Image.fromarray(astronaut).resize((320, 320), Image.LANCZOS)))
    assert meter.cosine(face, smaller) > identity.SAME_PERSON_COSINE
    camera = np.asarray(Image.fromarray(skimage.data.camera()).convert("RGB").resize((512, 512)))
    other = meter.face(camera)  # the cameraman: another person, or no face found at all
    assert other is None or meter.cosine(face, other) < identity.SAME_PERSON_COSINE
    assert meter.face(np.full((256, 256, 3), 128, np.uint8)) is None
