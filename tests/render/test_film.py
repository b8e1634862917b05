"""The film conversion the backend applies to bridge renders: exact against the sRGB formula, identical in its
compiled and numpy forms, bottom-up, premultiplied only over a transparent film, and far depth where empty."""

from __future__ import annotations

import numpy as np
import pytest

from pointillist.render import film
from pointillist.render.colour import linear_to_srgb, srgb_to_linear


def test_srgb_curves_round_trip_and_known_values():
    c = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(c)), c, atol=1e-12)
    assert srgb_to_linear(0.5) == pytest.approx(0.214041, abs=1e-6)
    assert srgb_to_linear(0.04045) == pytest.approx(0.04045 / 12.92)  # the two pieces meet
    dense = np.linspace(0, 1, 200_001)
    idx = (dense * (len(film.SRGB_TO_LINEAR_LUT) - 1) + 0.5).astype(int)
    assert np.abs(film.SRGB_TO_LINEAR_LUT[idx] - srgb_to_linear(dense)).max() < 2e-5


def _render(h=5, w=7, seed=0):
    rng = np.random.default_rng(seed)
    alpha = rng.random((h, w)).astype(np.float32)
    alpha[0, 0] = 0.0
    alpha[1, 1] = 1e-8  # below MIN_ALPHA: treated as empty colour, still its coverage
    straight = rng.random((h, w, 3)).astype(np.float32)
    straight[2, 3] = (1.5, -0.2, np.nan)  # out of range and NaN from a broken render are clamped, never NaN
    depth = rng.uniform(0.5, 3.0, (h, w)).astype(np.float32)
    return straight, alpha, depth


@pytest.mark.parametrize("transparent", [True, False])
def test_film_is_the_exact_conversion_bottom_up(transparent):
    straight, alpha, depth = _render()
    bg = np.float32([0.2, 0.4, 0.6])
    rgb = straight * alpha[..., None] + (0 if transparent else (1 - alpha[..., None]) * bg)
    out, z = np.empty((*alpha.shape, 4), np.float32), np.empty(alpha.shape, np.float32)
    film.film_passes(rgb, alpha, depth, transparent, out, z)

    flip = lambda a: a[::-1]  # noqa: E731 - film rows are bottom first
    if transparent:
        clean = np.where(alpha[..., None] > film.MIN_ALPHA, np.nan_to_num(np.clip(straight, 0, 1)), 0.0)
        expected = srgb_to_linear(clean) * alpha[..., None]
        expected_alpha = alpha
    else:
        expected = srgb_to_linear(np.nan_to_num(np.clip(rgb, 0, 1)))
        expected_alpha = np.ones_like(alpha)
    np.testing.assert_allclose(out[..., :3], flip(expected), atol=4e-5)
    np.testing.assert_array_equal(out[..., 3], flip(expected_alpha))
    np.testing.assert_array_equal(z, flip(np.where(alpha > 0, depth, film.FAR_DEPTH)))
    assert np.isfinite(out).all()
    # what Blender's 'Standard' view shows of a transparent film (un-premultiply, encode) is the straight colour
    if transparent:
        visible = out[..., 3] > 1e-3
        shown = linear_to_srgb(out[visible][:, :3] / out[visible][:, 3:])
        np.testing.assert_allclose(shown, flip(np.nan_to_num(np.clip(straight, 0, 1)))[visible], atol=2e-4)


@pytest.mark.parametrize("transparent", [True, False])
def test_compiled_and_numpy_films_agree(transparent):
    straight, alpha, depth = _render(64, 48, seed=1)
    rgb = straight * alpha[..., None]
    a, za = np.empty((64, 48, 4), np.float32), np.empty((64, 48), np.float32)
    b, zb = np.empty_like(a), np.empty_like(za)
    film.film_passes(rgb, alpha, depth, transparent, a, za)
    film.film_passes_numpy(rgb, alpha, depth, transparent, b, zb)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(za, zb)
    no_depth = np.empty_like(a)
    film.film_passes(rgb, alpha, None, transparent, no_depth, None)
    np.testing.assert_array_equal(no_depth, a)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="must match"):
        film.film_passes(np.zeros((2, 2, 3), np.float32), np.zeros((2, 3), np.float32), None, True,
                         np.zeros((2, 3, 4), np.float32))
