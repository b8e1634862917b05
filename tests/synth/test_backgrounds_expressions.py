"""Backgrounds and random face controls: valid ranges, every kind / preset reachable, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from pointillist.synth.backgrounds import BACKGROUND_KINDS, sample_background
from pointillist.synth.expressions import PRESETS, rest_controls, sample_controls

NAMES = ["eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft", "mouthSmileRight", "browInnerUp", "mouthPucker", "jawOpen"]


@pytest.mark.parametrize("kind", BACKGROUND_KINDS)
def test_background_kinds(kind):
    img = sample_background(np.random.default_rng(1), 48, kind)
    assert img.shape == (48, 48, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    again = sample_background(np.random.default_rng(1), 48, kind)
    assert np.array_equal(img, again)
    spread = img.reshape(-1, 3).std(0).max()
    if kind == "solid":
        assert spread < 0.15  # only a vignette may vary it
    elif kind in ("noise", "blobs"):
        # textured: local variation, not just one ramp
        assert np.abs(np.diff(img, axis=0)).mean() > 1e-4 and np.abs(np.diff(img, axis=1)).mean() > 1e-4


def test_background_random_kinds_cover_all():
    rng = np.random.default_rng(0)
    means = [sample_background(rng, 16).mean() for _ in range(200)]
    assert np.ptp(means) > 0.5  # dark rooms to bright walls
    with pytest.raises(ValueError, match="background kind"):
        sample_background(rng, 16, "wallpaper")


def test_controls_follow_the_presets_and_mirror():
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(400):
        c = sample_controls(rng, NAMES, neck_deg=6.0)
        seen.add(c.preset)
        assert c.expression.shape == (len(NAMES),) and c.pose.shape == (5, 3)
        assert np.all(c.expression >= 0) and np.all(c.expression <= 1)
        assert not c.pose[0].any()  # the root never moves: the camera varies the view
        assert np.abs(np.degrees(c.pose[1])).max() <= 6.0 + 1e-4
        lo, hi = PRESETS[c.preset][2]
        assert lo - 1e-6 <= c.pose[2, 0] <= hi + 1e-6 and not c.pose[2, 1:].any()
        assert np.array_equal(c.pose[3], c.pose[4])  # both eyes look the same way
    assert seen == set(PRESETS)
    seed = next(s for s in range(1000) if sample_controls(np.random.default_rng(s), NAMES).preset == "wink")
    left = sample_controls(np.random.default_rng(seed), NAMES, mirror=False)
    right = sample_controls(np.random.default_rng(seed), NAMES, mirror=True)
    assert left.preset == right.preset == "wink"
    assert left.expression[0] > 0.5 and right.expression[1] > 0.5 and left.expression[1] < 0.3 and right.expression[0] < 0.3
    rest = rest_controls(NAMES)
    assert rest.expression_magnitude == 0 and rest.jaw_deg == 0 and rest.preset == "rest"
