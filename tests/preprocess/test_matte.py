"""The matte: selfie segmentation refined by pymatting, the photo's own alpha as a hint, the crop's fill."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image
from pointillist.preprocess import matte as matte_module
from pointillist.preprocess.matte import foreground_matte, trimap_from_mask
from pointillist.preprocess.portrait import understand_portrait

from .images import astronaut, encode


@pytest.fixture(scope="module")
def astro_inputs():
    return understand_portrait(encode(astronaut(), "JPEG", quality=95))


def soft_band(matte: np.ndarray) -> np.ndarray:
    return (matte > 10) & (matte < 245)


def test_matte_separates_the_person(astro_inputs):
    m = astro_inputs.matte
    assert m.shape == (512, 512) and m.dtype == np.uint8
    assert m[230:300, 220:290].min() > 240  # the face
    assert m[100:140, 200:300].min() > 240  # the hair above the forehead
    assert m[:40, :40].mean() < 10 and m[:40, -40:].mean() < 10  # background (top corners; the suit fills the bottom)
    assert m[120:200, :30].mean() < 30 and m[120:200, -30:].mean() < 30  # beside the head


def test_hair_edge_is_soft(astro_inputs):
    m = astro_inputs.matte
    top = m[:256]  # around the hair, above the shoulders
    assert soft_band(top).sum() > 300
    # every column through the hair crosses a soft edge, not a hard 0 → 255 step
    for x in range(200, 320, 10):
        column = m[:200, x].astype(int)
        edge = int(np.argmax(column > 128))
        assert 5 < edge < 120
        assert ((column[edge - 6: edge + 6] > 10) & (column[edge - 6: edge + 6] < 245)).any()


def test_outside_the_photo_is_background(astro_inputs):
    valid = np.ones((512, 512), bool)
    valid[:, 400:] = False
    m = foreground_matte(astro_inputs.crop, valid=valid)
    assert m[:, 400:].max() == 0 and m[230:300, 220:290].min() > 240


def test_cutout_alpha_is_the_matte(astro_inputs):
    ys, xs = np.mgrid[0:512, 0:512]
    alpha = np.clip((1.0 - (((xs - 256) / 170) ** 2 + ((ys - 260) / 230) ** 2)) * 255 * 4, 0, 255).astype(np.uint8)
    m = foreground_matte(astro_inputs.crop, alpha)
    assert np.array_equal(m, alpha)


def test_partial_alpha_multiplies_the_matte(astro_inputs):
    alpha = np.full((512, 512), 255, np.uint8)
    alpha[:, :20] = 0  # a transparent strip, no cut-out
    m = foreground_matte(astro_inputs.crop, alpha)
    assert m[:, :20].max() == 0 and m[:40, 40:80].mean() < 10 and m[230:300, 220:290].min() > 240


def test_no_person_gives_an_empty_matte():
    assert foreground_matte(np.full((256, 256, 3), 90, np.uint8)).max() == 0


def test_matting_failure_falls_back_to_a_feathered_mask(astro_inputs, monkeypatch):
    import pymatting

    def broken(*args, **kwargs):
        raise RuntimeError("no")

    monkeypatch.setattr(pymatting, "estimate_alpha_cf", broken)
    m = foreground_matte(astro_inputs.crop)
    assert m[230:300, 220:290].min() > 240 and m[:40, :40].mean() < 10 and soft_band(m).sum() > 300


def test_large_images_are_matted_at_most_at_512(astro_inputs, monkeypatch):
    seen = []
    original = matte_module.segment

    def spy(rgb):
        seen.append(rgb.shape)
        return original(rgb)

    monkeypatch.setattr(matte_module, "segment", spy)
    big = np.asarray(Image.fromarray(astro_inputs.crop).resize((1024, 1024), Image.BICUBIC))
    m = foreground_matte(big)
    assert seen == [(512, 512, 3)] and m.shape == (1024, 1024)
    assert m[460:600, 440:580].min() > 240


def test_trimap_has_three_levels():
    prob = np.zeros((100, 100), np.float32)
    prob[30:70, 30:70] = 1.0
    t = trimap_from_mask(prob, 5)
    assert t[50, 50] == 1.0 and t[5, 5] == 0.0 and t[30, 50] == 0.5 and set(np.unique(t)) == {0.0, 0.5, 1.0}
