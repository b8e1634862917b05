"""The decoder's portrait probe: projection, occlusion, posing, and the warm start that adds it."""

from __future__ import annotations

import numpy as np
import torch
from pointillist.avatar.animate import animate
from pointillist.model.checkpoint import load_generator, save_generator
from pointillist.model.generator import Generator
from pointillist.model.portrait_probe import PROBE_FEATURES, PortraitView, posed_points, probe_features
from pointillist.train.eval_reenact import make_avatar
from pointillist.train.train_generator import with_probe

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
