"""The portrait probes: the decoder's (projection, occlusion, posing), the AR conditioning's rays, and the warm
starts that add them."""

from __future__ import annotations

import numpy as np
import torch
from pointillist.avatar.animate import animate
from pointillist.model.checkpoint import load_generator, save_generator
from pointillist.model.generator import Generator
from pointillist.model.portrait_probe import (PROBE_FEATURES, RAY_DISTANCES, RAY_PROBE_FEATURES, PortraitView, posed_points,
                                              probe_features, ray_probe_features)
from pointillist.train.eval_reenact import make_avatar
from pointillist.train.train_generator import with_head_probe, with_probe

from .test_model import _model, tiny_config

SIZE = 64


def _camera(distance: float = 1.0, focal: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """An OpenCV camera on the head's +z axis looking back at the origin (x right, y down in the image)."""
    viewmat = np.diag([1.0, -1.0, -1.0, 1.0]).astype(np.float32)
    viewmat[2, 3] = distance
    K = np.array([[focal, 0, SIZE / 2], [0, focal, SIZE / 2], [0, 0, 1]], np.float32)
    return viewmat, K


def _split_image() -> np.ndarray:
    """Left half red, right half blue."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[:, : SIZE // 2] = (255, 0, 0)
    image[:, SIZE // 2:] = (0, 0, 255)
    return image


def test_points_read_the_colour_under_them_and_hidden_ones_are_marked(head):
    viewmat, K = _camera()
    view = PortraitView.from_arrays(_split_image(), K, viewmat, np.zeros(head.num_shape, np.float32))
    # x = -0.1 lands at u = 32 - 10 (red), x = +0.1 at u = 42 (blue); the third sits 10 cm behind the second on the same ray
    points = torch.tensor([[-0.1, 0.0, 0.0], [0.1, 0.0, 0.0], [0.11, 0.0, -0.1]])  # the last on the second one's ray
    f = probe_features(points, torch.zeros(3, dtype=torch.long), view, head)
    assert f.shape == (3, PROBE_FEATURES)
    assert torch.allclose(f[0, :3], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(f[1, :3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)
    assert f[:, 6].tolist() == [1.0, 1.0, 0.0]  # visible: the back point hides behind the front one
    assert f[:, 7].tolist() == [1.0, 1.0, 1.0]  # all inside the frame
    assert f[2, 8] > f[1, 8]  # deeper


def test_points_outside_the_frame_are_neither_inside_nor_visible(head):
    viewmat, K = _camera()
    view = PortraitView.from_arrays(_split_image(), K, viewmat, np.zeros(head.num_shape, np.float32))
    f = probe_features(torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]), torch.zeros(2, dtype=torch.long), view, head)
    assert f[:, 7].tolist() == [0.0, 1.0] and f[0, 6] == 0.0


def test_posed_points_follow_the_rig_like_an_animated_avatar(head):
    """Points at triangle centroids posed by the probe land where the avatar animator puts them."""
    from pointillist.train.eval_reenact import GaussianArrays

    rng = np.random.default_rng(0)
    tri = rng.choice(head.num_faces, 200, replace=False)
    shape = (rng.normal(size=head.num_shape) * 0.5).astype(np.float32)
    verts = head.identity_vertices(torch.as_tensor(shape)[None])[0]
    centroids = verts[head.faces[torch.as_tensor(tri)]].mean(1)
    pose = np.zeros((5, 3), np.float32)
    pose[1] = (0.2, -0.3, 0.1)  # neck
    pose[2] = (0.3, 0.0, 0.0)  # jaw open
    view = PortraitView.from_arrays(_split_image(), *_camera()[::-1], shape, pose)
    moved = posed_points(centroids, torch.as_tensor(tri), view, head)
    n = len(tri)
    arrays = GaussianArrays(means=centroids.numpy(), log_scales=np.zeros((n, 3), np.float32),
                            quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)), opacity_logits=np.zeros(n, np.float32),
                            sh_dc=np.zeros((n, 3), np.float32), triangles=tri)
    expected = animate(make_avatar(arrays, head, shape), head, pose=pose).means[0]
    assert (moved - centroids).norm(dim=1).max() > 0.01  # the pose does move them
    assert torch.allclose(moved, expected, atol=1e-5)


def test_a_probing_decoder_needs_the_portrait_and_uses_it(head):
    config = tiny_config()
    config.decoder.probe = True
    torch.manual_seed(0)
    model = Generator(config).eval()
    with torch.no_grad():  # the output layer starts at zero: move every weight so the input can show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    viewmat, K = _camera()
    points = torch.rand(5, 3) * 0.1 - 0.05
    hidden = torch.randn(5, 4, config.ar.dim)
    binding = np.zeros(5, np.int64)
    try:
        model.decode(points, hidden, binding)
        raise AssertionError("decode without the portrait must fail")
    except ValueError as exc:
        assert "portrait" in str(exc)
    shape = np.zeros(head.num_shape, np.float32)
    with torch.no_grad():
        red = model.decode(points, hidden, binding, PortraitView.from_arrays(_split_image(), K, viewmat, shape), head)
        blue = model.decode(points, hidden, binding, PortraitView.from_arrays(_split_image()[:, ::-1], K, viewmat, shape), head)
    assert not torch.allclose(red.sh_dc, blue.sh_dc)


def test_with_probe_keeps_the_decoder_and_survives_a_checkpoint(tmp_path, head):
    model = _model()
    points, hidden, binding = torch.rand(6, 3) * 0.1, torch.randn(6, 4, 32), np.zeros(6, np.int64)
    view = PortraitView.from_arrays(_split_image(), *_camera()[::-1], np.zeros(head.num_shape, np.float32))
    with torch.no_grad():
        before = model.decode(points, hidden, binding)
        with_probe(model)
        after = model.decode(points, hidden, binding, view, head)
    assert model.config.decoder.probe
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc"):
        assert torch.allclose(getattr(before, name), getattr(after, name), atol=1e-6), name
    path = tmp_path / "probe.safetensors"
    save_generator(path, model)
    loaded, _ = load_generator(path)
    assert loaded.config.decoder.probe
    with torch.no_grad():
        again = loaded.decode(points, hidden, binding, view, head)
    assert torch.allclose(again.sh_dc, after.sh_dc, atol=1e-6)


# ---------------------------------------------------------------------- the AR conditioning's ray probe
def _matte_disc(radius_px: float) -> np.ndarray:
    """A person's matte: 1 inside a centred disc of `radius_px`, 0 outside."""
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    return ((xx - SIZE / 2) ** 2 + (yy - SIZE / 2) ** 2 <= radius_px ** 2).astype(np.float32)


def test_ray_probe_reads_the_matte_where_each_ray_leaves_the_head(head):
    """Rays out of the head's sides read the matte until they leave the person's silhouette: a wide matte
    (big hair) keeps them foreground further out than a tight one (a bald head)."""
    viewmat, K = _camera()
    shape = np.zeros(head.num_shape, np.float32)
    # two samples on the sides of the head (x = ±8 cm), normals pointing straight out along x
    samples = torch.tensor([[0.08, 0.0, 0.0, 1.0, 0.0, 0.0], [-0.08, 0.0, 0.0, -1.0, 0.0, 0.0]])
    tri = np.zeros(2, np.int64)
    # at focal 100 and 1 m, the ray points at 8, 10, 13, 17, 22 cm from the axis land 8..22 px from the centre
    tight = ray_probe_features(samples, tri, PortraitView.from_arrays(_split_image(), K, viewmat, shape, alpha=_matte_disc(11)), head)
    wide = ray_probe_features(samples, tri, PortraitView.from_arrays(_split_image(), K, viewmat, shape, alpha=_matte_disc(30)), head)
    assert tight.shape == wide.shape == (2, RAY_PROBE_FEATURES)
    n = len(RAY_DISTANCES)
    matte = lambda f: f[:, 0:5 * n:5]  # noqa: E731 - the matte read at each distance
    assert matte(tight).tolist() == [[1, 1, 0, 0, 0]] * 2
    assert matte(wide).tolist() == [[1.0] * n] * 2
    # colour along the ray: the +x sample looks at the image's right half (blue), the -x one at the left (red)
    assert torch.allclose(wide[0, 1:4], torch.tensor([0.0, 0.0, 1.0])) and torch.allclose(wide[1, 1:4], torch.tensor([1.0, 0.0, 0.0]))
    assert wide[:, 4:5 * n:5].eq(1).all()  # every ray point inside the frame
    # without a matte the probe reads none, but still the colours
    bare = ray_probe_features(samples, tri, PortraitView.from_arrays(_split_image(), K, viewmat, shape), head)
    assert matte(bare).eq(0).all() and torch.allclose(bare[:, 1:4], wide[:, 1:4])


def test_ray_probe_marks_rays_that_leave_the_frame_and_hidden_skin(head):
    viewmat, K = _camera(focal=300.0)  # a tight crop: 14 cm off axis is 42 px, outside the 64-px frame
    shape = np.zeros(head.num_shape, np.float32)
    samples = torch.tensor([[0.08, 0.0, 0.0, 1.0, 0.0, 0.0],   # side of the head, ray going out of frame
                            [0.0, 0.0, 0.1, 0.0, 0.0, 1.0],    # tip of the nose, facing the camera
                            [0.0, 0.0, -0.1, 0.0, 0.0, -1.0]])  # back of the head, behind the nose
    f = ray_probe_features(samples, np.zeros(3, np.int64), PortraitView.from_arrays(_split_image(), K, viewmat, shape, alpha=np.ones((SIZE, SIZE), np.uint8) * 255), head)
    inside = f[:, 4:5 * len(RAY_DISTANCES):5]
    assert inside[0].tolist() == [1, 1, 0, 0, 0] and inside[0].sum() == f[0, 0:5 * len(RAY_DISTANCES):5].sum()
    assert f[:, -1].tolist() == [1.0, 1.0, 0.0]  # the back of the head hides behind the nose


def test_with_head_probe_keeps_the_conditioning_and_the_probe_then_steers_it(tmp_path, head):
    model = _model()
    g = torch.Generator().manual_seed(1)
    images, points = torch.rand(1, 3, 28, 28, generator=g), torch.randn(1, 16, 6, generator=g)
    probe = torch.rand(1, 16, RAY_PROBE_FEATURES, generator=g)
    with torch.no_grad():
        before = model.condition(images, points)
        with_head_probe(model)
        after = model.condition(images, points, head_probe=probe)
    assert model.config.points.probe and torch.allclose(before, after, atol=1e-6)
    try:
        model.condition(images, points)
        raise AssertionError("a probing head-point encoder must refuse to run without the probe")
    except ValueError as exc:
        assert "ray-probe" in str(exc)
    with torch.no_grad():
        model.point_encoder.embed.weight.add_(torch.randn_like(model.point_encoder.embed.weight) * 0.05)
        seen = model.condition(images, points, head_probe=probe)
        other = model.condition(images, points, head_probe=1 - probe)
        blind = model.condition(images, points, image_scale=0.0, head_probe=probe)
        blind_other = model.condition(images, points, image_scale=0.0, head_probe=1 - probe)
    assert not torch.allclose(seen, other)  # the probe now steers the head tokens
    assert torch.allclose(blind, blind_other)  # and the image ablation zeroes it with the image
    path = tmp_path / "head_probe.safetensors"
    save_generator(path, model)
    loaded, _ = load_generator(path)
    with torch.no_grad():
        assert loaded.config.points.probe and torch.allclose(loaded.condition(images, points, head_probe=probe), seen, atol=1e-6)
