"""Silhouette carving: points outside the portrait's matte are refused, and `generate` drops them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pointillist.model.portrait_probe import PortraitView, posed_points
from pointillist.model.sampling import SamplingOptions, generate
from pointillist.model.silhouette import SilhouetteCarver

from .test_model import _cond, _model
from .test_portrait_probe import SIZE, _camera


def _view(head, matte: np.ndarray, pose: np.ndarray | None = None) -> PortraitView:
    viewmat, K = _camera()
    return PortraitView.from_arrays(np.zeros((SIZE, SIZE, 3), np.uint8), K, viewmat, np.zeros(head.num_shape, np.float32),
                                    pose, matte)


def _disk(radius_px: float, centre=(SIZE / 2, SIZE / 2)) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    return (((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) <= radius_px**2).astype(np.uint8) * 255


def test_points_on_the_background_are_refused_and_unseen_ones_kept(head):
    # the camera sees the origin at the image centre, 100 px per metre at 1 m: the matte covers |x|, |y| < 0.1 m
    carver = SilhouetteCarver(_view(head, _disk(10)), head, dilate_fraction=0.0)
    tri = np.zeros(5, np.int64)
    points = np.array([[0.0, 0.0, 0.0],     # centre of the person
                       [0.0, 0.0, -0.3],    # behind it: still on the person in the photo
                       [0.0, 0.2, 0.0],     # 20 cm above: background
                       [0.15, 0.0, 0.0],    # beside the head: background
                       [0.0, 0.5, 0.0]])    # far above, outside the frame: the photo says nothing
    assert carver.keep(points, tri).tolist() == [True, True, False, False, True]
    assert carver(points[2], 0) is False and carver(points[0], 0) is True


def test_the_matte_is_dilated_by_a_fraction_of_the_width(head):
    point = np.array([[0.12, 0.0, 0.0]])  # 12 px right of the centre; the disk ends at 10 px
    assert not SilhouetteCarver(_view(head, _disk(10)), head, dilate_fraction=0.0).keep(point, [0])[0]
    assert SilhouetteCarver(_view(head, _disk(10)), head, dilate_fraction=4 / SIZE).keep(point, [0])[0]


def test_points_are_posed_like_the_photo_before_projecting(head):
    """A head turned in the photo carries its points along (the decoder probe's posing is the oracle): judged
    at rest, the point would land elsewhere."""
    pose = np.zeros((5, 3), np.float32)
    pose[0, 2] = 0.6  # the root rolled about z
    pose[1, 0] = 0.3  # and the neck pitched
    point, tri = np.array([[0.08, 0.05, 0.02]]), np.array([100])
    posed = posed_points(torch.as_tensor(point, dtype=torch.float32), torch.as_tensor(tri),
                         _view(head, _disk(1), pose), head)[0].numpy()
    viewmat, K = _camera()
    cam = viewmat[:3, :3] @ posed + viewmat[:3, 3]
    u, v = K[0, 0] * cam[0] / cam[2] + K[0, 2], K[1, 1] * cam[1] / cam[2] + K[1, 2]
    rest_cam = viewmat[:3, :3] @ point[0] + viewmat[:3, 3]
    assert np.hypot(u - (K[0, 0] * rest_cam[0] / rest_cam[2] + K[0, 2]), v - (K[1, 1] * rest_cam[1] / rest_cam[2] + K[1, 2])) > 6
    matte = _disk(3, centre=(u, v))  # the person only where the posed point lands
    assert SilhouetteCarver(_view(head, matte, pose), head, dilate_fraction=0.0).keep(point, tri)[0]
    assert not SilhouetteCarver(_view(head, matte), head, dilate_fraction=0.0).keep(point, tri)[0]


def test_a_view_without_a_matte_cannot_carve(head):
    viewmat, K = _camera()
    view = PortraitView.from_arrays(np.zeros((SIZE, SIZE, 3), np.uint8), K, viewmat, np.zeros(head.num_shape, np.float32))
    with pytest.raises(ValueError, match="matte"):
        SilhouetteCarver(view, head)


def test_generate_drops_refused_points_and_keeps_a_decodable_sequence():
    model = _model(seed=3)
    tok = model.tokenizer
    with torch.no_grad():
        cond = _cond(model, seed=4)
        options = SamplingOptions(temperature=1.0, top_p=1.0, max_points=30, seed=2)
        plain = generate(model.ar, tok, cond, options)
        assert len(plain.binding) > 4
        odd = {int(b) for b in plain.binding[1::2]}  # refuse every point whose triangle the plain run had at odd places
        keep = lambda xyz, triangle: triangle not in odd
        carved = generate(model.ar, tok, cond, options, keep_point=keep)
    # the model's context is the same, so the same points are written; the refused ones leave the output
    expected = np.array([b not in odd for b in plain.binding])
    assert carved.refused == int((~expected).sum()) > 0
    np.testing.assert_array_equal(carved.binding, plain.binding[expected])
    np.testing.assert_allclose(carved.points, plain.points[expected])
    torch.testing.assert_close(carved.hidden, plain.hidden[torch.from_numpy(expected)])
    points, binding = tok.decode(carved.tokens)  # still sorted and grammatical
    np.testing.assert_array_equal(binding, carved.binding)


def test_a_run_of_refusals_ends_the_sequence_only_after_as_many_points_were_kept():
    """The run rule cuts a plume above a head that was written; refusals before that (a neck the photo cut
    off, a matte that misses the first rows) must not end the sequence, and refusing everything keeps nothing."""
    model = _model(seed=3)
    tok = model.tokenizer
    with torch.no_grad():
        cond = _cond(model, seed=4)
        options = SamplingOptions(temperature=1.0, top_p=1.0, max_points=30, min_points=30, seed=2, refused_run=3)
        calls = []
        first_three = lambda xyz, triangle: calls.append(triangle) or len(calls) <= 3
        gen = generate(model.ar, tok, cond, options, keep_point=first_three)
        assert len(calls) == 6 and gen.refused_stop and len(gen.binding) == 3 and gen.refused == 3
        assert gen.tokens[-1] == tok.end and not gen.ended
        calls.clear()
        late = lambda xyz, triangle: calls.append(triangle) or 5 < len(calls) <= 8  # five refused before any kept
        gen = generate(model.ar, tok, cond, options, keep_point=late)
        assert len(calls) == 11 and gen.refused_stop and len(gen.binding) == 3 and gen.refused == 8
        nothing = generate(model.ar, tok, cond, options, keep_point=lambda xyz, triangle: False)
        assert len(nothing.binding) == 0 and nothing.refused == len(nothing.kept) > 3 and not nothing.refused_stop
        points, binding = tok.decode(nothing.tokens)
        assert points.shape == (0, 3) and len(binding) == 0


def test_pixels_past_the_photos_edge_never_refuse_a_point(head):
    """A tight head shot: the crop's lower part is grey fill, not background. A point landing there is kept;
    the same point is refused where the photo shows background."""
    matte = _disk(10)
    photo = np.ones((SIZE, SIZE), bool)
    photo[SIZE // 2 + 15:] = False  # the photo ends 15 px below the centre
    below = np.array([[0.0, -0.2, 0.0]])  # 20 px below the centre: off the matte, past the photo's edge
    beside = np.array([[0.2, 0.0, 0.0]])  # 20 px right of the centre, on the photo's background
    carver = SilhouetteCarver(_view(head, matte), head, dilate_fraction=0.0, photo=photo)
    assert carver.keep(below, [0])[0] and not carver.keep(beside, [0])[0]
    assert not SilhouetteCarver(_view(head, matte), head, dilate_fraction=0.0).keep(below, [0])[0]
    with pytest.raises(ValueError, match="photo mask"):
        SilhouetteCarver(_view(head, matte), head, photo=photo[:10])


@pytest.mark.parametrize("posed", [False, True])
def test_silhouette_fill_puts_points_where_the_mask_is_and_they_pose_back_there(head, posed):
    """Points filled into an uncovered patch of the portrait, carried to rest through their triangles, land
    back in that patch when posed like the photo; one per spacing, on skin triangles."""
    from pointillist.model.silhouette_fill import fill_points

    pose = np.zeros((5, 3), np.float32)
    if posed:
        pose[0, 2], pose[1, 0] = 0.3, 0.2
    view = _view(head, _disk(10), pose)
    patch = np.zeros((SIZE, SIZE), bool)
    patch[20:30, 40:52] = True  # beside the head, where long hair would be
    points, triangles = fill_points(view, head, patch, spacing_m=0.02)
    assert len(points) == len(triangles) > 6
    skin = ~(head.data.part_mask("mouth_cavity") | head.data.part_mask("left_eyeball"))
    assert skin[triangles].all()
    at = posed_points(torch.as_tensor(points), torch.as_tensor(triangles), view, head).numpy()
    viewmat, K = _camera()
    cam = at @ viewmat[:3, :3].T + viewmat[:3, 3]
    u, v = K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2], K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]
    assert patch[v.astype(int), u.astype(int)].all()
    assert fill_points(view, head, np.zeros((SIZE, SIZE), bool))[0].shape == (0, 3)
