"""Anchoring an avatar to its portrait: projection, the face layer, the mirror, exactly where they can be."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pointillist.anchor import AnchorOptions, anchor_to_photo
from pointillist.anchor.face_layer import FLATNESS, LAYER_REGIONS, MIN_THICKNESS_M, face_layer
from pointillist.anchor.mirror import mirror_partners, mirrored_colours
from pointillist.anchor.photo_anchor import duplicates_layer
from pointillist.anchor.projection import photo_colours
from pointillist.avatar.gaussians import Avatar, Binding, Gaussians, HeadIdentity, SourceInfo
from pointillist.render.camera import K_from_focal, orbit_viewmat

SIZE = 64


def _gaussians(means, scale=0.001, opacity=0.99):
    n = len(means)
    return (torch.as_tensor(np.asarray(means), dtype=torch.float32), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
            torch.full((n, 3), float(scale)), torch.full((n,), float(opacity)))


def _on_ray(u: float, v: float, z: float, K: np.ndarray) -> list[float]:
    """The camera-frame point at depth z that projects to pixel position (u, v) (identity viewmat)."""
    return [(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z]


def test_projection_colours_a_seen_gaussian_with_its_pixel_and_nothing_hidden():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    K = K_from_focal(100.0, 100.0, SIZE / 2, SIZE / 2)
    seen_point = _on_ray(20.5, 10.5, 1.0, K)  # the centre of pixel (row 10, column 20)
    other = _on_ray(40.5, 50.5, 1.0, K)
    means, quats, scales, opacities = _gaussians([seen_point, other])
    args = dict(viewmat=torch.eye(4), K=torch.as_tensor(K, dtype=torch.float32), image=image)
    out = photo_colours(means, quats, scales, opacities, **args)
    np.testing.assert_allclose(out.colours[0], image[10, 20] / 255, atol=1e-5)
    np.testing.assert_allclose(out.colours[1], image[50, 40] / 255, atol=1e-5)
    assert out.seen.tolist() == [1.0, 1.0]

    # an opaque Gaussian 10 cm in front on the same ray hides it; the one in front takes the pixel instead
    occluder = _on_ray(20.5, 10.5, 0.9, K)
    means, quats, scales, opacities = _gaussians([seen_point, other, occluder], scale=0.004)
    out = photo_colours(means, quats, scales, opacities, **args)
    assert out.seen[0] == 0.0 and out.seen[2] == 1.0
    np.testing.assert_allclose(out.colours[2], image[10, 20] / 255, atol=1e-5)

    # a pixel that is not the person's (background, fill, hands) colours nothing
    valid = np.ones((SIZE, SIZE), np.float32)
    valid[48:53, 38:43] = 0
    means, quats, scales, opacities = _gaussians([seen_point, other])
    out = photo_colours(means, quats, scales, opacities, valid=valid, **args)
    assert out.seen.tolist() == [1.0, 0.0]


def test_mirror_partners_map_left_to_right():
    rng = np.random.default_rng(1)
    left = rng.uniform([0.01, -0.1, -0.1], [0.1, 0.1, 0.1], (50, 3))
    points = np.concatenate([left, left * [-1, 1, 1]])
    partners = mirror_partners(points)
    np.testing.assert_array_equal(partners, np.r_[np.arange(50, 100), np.arange(50)])
    assert (mirror_partners(left, max_distance=0.005) == -1).all()  # nothing on the other side

    colours = np.zeros((100, 3))
    colours[:50] = rng.uniform(size=(50, 3))
    seen = np.r_[np.ones(50), np.zeros(50)]
    out = mirrored_colours(colours, seen, partners, fallback=np.array([0.5, 0.5, 0.5]))
    np.testing.assert_allclose(out[50:], colours[:50])  # the hidden right takes the seen left's colours
    np.testing.assert_allclose(out[:50], colours[:50])


def test_face_layer_tiles_the_fitted_face_with_flat_bound_discs(head):
    shape = torch.zeros(1, head.num_shape)
    shape[0, 0] = 1.5  # an identity that is not the template
    verts = head.identity_vertices(shape)[0].numpy()
    layer = face_layer(head, verts)
    g, b = layer.gaussians, layer.binding
    corners = verts[head.data.faces[b.triangles]]
    np.testing.assert_allclose(g.means, np.einsum("nk,nkc->nc", b.barycentrics, corners), atol=1e-6)
    regions = head.data.vertex_regions[head.data.faces[b.triangles]]
    allowed = [head.data.region_names.index(n) for n in LAYER_REGIONS]
    assert (np.isin(regions, allowed).sum(1) >= 2).all()
    scales = np.exp(g.log_scales)
    assert (scales[:, 2] <= np.maximum(FLATNESS * scales[:, 0], MIN_THICKNESS_M) * 1.0001).all()
    # the discs face out: +Z of each disc is its triangle's normal, away from the head's centre on the skin
    skin = layer.region("cheeks") | layer.region("forehead") | layer.region("nose")
    from pointillist.render.rasterize import quat_to_rotmat

    z_axis = quat_to_rotmat(torch.as_tensor(g.quats))[:, :, 2].numpy()
    np.testing.assert_allclose(z_axis, layer.normals, atol=1e-5)
    assert (np.einsum("nc,nc->n", layer.normals[skin], g.means[skin] - verts.mean(0)) > 0).mean() > 0.97
    # on the template the layer is bilaterally symmetric: every cell has a partner across x = 0
    partners = mirror_partners(layer.template_means, max_distance=0.004)
    assert (partners >= 0).mean() > 0.95


def test_decoder_gaussians_on_the_face_surface_are_replaced_but_not_those_standing_off_it(head):
    verts = head.identity_vertices(torch.zeros(1, head.num_shape))[0].numpy()
    layer = face_layer(head, verts)
    cheek = np.nonzero(layer.region("cheeks"))[0][0]
    p, n = layer.gaussians.means[cheek], layer.normals[cheek]
    probes = np.stack([p + 0.002 * n, p - 0.01 * n, p + 0.03 * n, p - 0.08 * n])
    assert duplicates_layer(probes, layer.gaussians.means, layer.normals).tolist() == [True, True, False, False]


def _portrait_avatar(head, yaw_deg: float) -> Avatar:
    """Scalp points as the 'decoder's' Gaussians, photographed from `yaw_deg` by a photo whose colour runs
    from red at the top to blue at the bottom."""
    verts = head.identity_vertices(torch.zeros(1, head.num_shape))[0].numpy()
    scalp = np.nonzero(head.data.region_mask("scalp"))[0][::8]
    means = verts[scalp].astype(np.float32)
    n = len(means)
    tri = np.array([np.nonzero((head.data.faces == v).any(1))[0][0] for v in scalp])
    bary = np.zeros((n, 3), np.float32)
    bary[np.arange(n), np.argmax(head.data.faces[tri] == scalp[:, None], axis=1)] = 1
    g = Gaussians(means=means, log_scales=np.full((n, 3), np.log(0.004), np.float32), quats=np.tile([1, 0, 0, 0], (n, 1)).astype(np.float32),
                  opacity_logits=np.full(n, 4.0, np.float32), sh_dc=np.zeros((n, 3), np.float32), sh_rest=np.zeros((n, 0, 3), np.float32))
    rows = np.linspace(0, 1, 128, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(np.concatenate([1 - rows, np.zeros_like(rows), rows], axis=2), (128, 128, 3))
    K = K_from_focal(400.0, 400.0, 64.0, 64.0)
    viewmat = orbit_viewmat(yaw_deg, 0.0, 1.0, target=verts.mean(0))
    source = SourceInfo(image=(image * 255).astype(np.uint8), matte=np.full((128, 128), 255, np.uint8),
                        camera={"viewmat": viewmat.tolist(), "K": K.tolist(), "width": 128, "height": 128},
                        expression=np.zeros(head.num_expr, np.float32), pose=np.zeros((5, 3), np.float32))
    return Avatar(gaussians=g, binding=Binding(tri.astype(np.int64), bary),
                  identity=HeadIdentity(model_id=head.model_id, shape=np.zeros(head.num_shape, np.float32)), source=source, meta={})


def _layer_cells(out: Avatar, head) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(colours, template positions, triangles) of the face-layer cells of an anchored avatar (its last ones)."""
    n = out.meta["anchor"]["face_layer"]
    tri, bary = out.binding.triangles[-n:], out.binding.barycentrics[-n:]
    template = np.einsum("nk,nkc->nc", bary, head.data.vertices[head.data.faces[tri]])
    return out.gaussians.colors()[-n:], template, tri


def test_the_hidden_cheek_takes_the_mirror_of_the_seen_one(head):
    avatar = _portrait_avatar(head, yaw_deg=60.0)  # the camera sees the head's left (+x) cheek, not its right
    verts = head.identity_vertices(torch.zeros(1, head.num_shape))[0].numpy()
    cheek_triangles = face_layer(head, verts).binding.triangles[face_layer(head, verts).region("cheeks")]

    colours, template, tri = _layer_cells(anchor_to_photo(avatar, head), head)
    cheek = np.isin(tri, cheek_triangles)
    seen_side, hidden_side = cheek & (template[:, 0] > 0.03), cheek & (template[:, 0] < -0.03)
    assert seen_side.sum() > 20 and hidden_side.sum() > 20
    blue = colours[:, 2] / np.maximum(colours[:, 0] + colours[:, 2], 1e-6)  # 0 at the photo's top, 1 at its bottom
    # the seen cheek reads the photo's vertical ramp; the hidden one the same ramp, through its mirror
    assert np.corrcoef(-template[seen_side, 1], blue[seen_side])[0, 1] > 0.9
    assert np.corrcoef(-template[hidden_side, 1], blue[hidden_side])[0, 1] > 0.9
    partners = mirror_partners(template)
    np.testing.assert_allclose(blue[hidden_side], blue[partners[hidden_side]], atol=0.08)

    # without the mirror the hidden cheek is one colour (the photo's median for the cheeks)
    flat, template, tri = _layer_cells(anchor_to_photo(avatar, head, options=AnchorOptions(mirror=False)), head)
    hidden_side = np.isin(tri, cheek_triangles) & (template[:, 0] < -0.03)
    assert np.ptp(flat[hidden_side], axis=0).max() < 1e-6


@pytest.mark.parametrize("options", [AnchorOptions(), AnchorOptions(face_layer=False), AnchorOptions(photo_colours=False)])
def test_anchoring_keeps_the_avatar_valid_and_bound(head, options):
    avatar = _portrait_avatar(head, yaw_deg=0.0)
    out = anchor_to_photo(avatar, head, options=options)
    g, b = out.gaussians, out.binding
    assert len(b.triangles) == len(b.barycentrics) == g.num and np.isfinite(g.sh_dc).all()
    assert (g.num > avatar.gaussians.num) == options.face_layer
    meta = out.meta["anchor"]
    assert meta["face_layer"] - meta["dropped_decoder_gaussians"] == g.num - avatar.gaussians.num
    assert (meta["face_layer"] > 0) == options.face_layer


def test_the_shape_prior_bounds_anisotropy_and_size_and_keeps_volume():
    from pointillist.anchor.priors import MAX_ANISOTROPY, MAX_SCALE_M, bounded_log_scales

    rng = np.random.default_rng(2)
    log_scales = np.log(rng.uniform(0.0002, 0.006, (500, 3))).astype(np.float32)
    log_scales[0] = np.log([0.0005, 0.0005, 0.02])  # a needle
    out = bounded_log_scales(log_scales)
    ratio = np.exp(out.max(1) - out.min(1))
    assert (ratio <= MAX_ANISOTROPY * 1.0001).all() and (np.exp(out) <= MAX_SCALE_M * 1.0001).all()
    within = np.exp(log_scales.max(1) - log_scales.min(1)) <= MAX_ANISOTROPY
    np.testing.assert_array_equal(out[within], log_scales[within])  # what was already round enough is untouched
    small = np.exp(out).max(1) < MAX_SCALE_M * 0.999
    np.testing.assert_allclose(out[small].sum(1), log_scales[small].sum(1), atol=1e-4)  # volume kept
    assert ratio[0] == pytest.approx(MAX_ANISOTROPY, rel=1e-4)


def test_unseen_gaussians_take_their_seen_neighbours_colour():
    from pointillist.anchor.photo_anchor import spread_colours

    rng = np.random.default_rng(3)
    front = rng.uniform([-0.05, -0.05, 0.0], [0.05, 0.05, 0.01], (200, 3))
    back = front - [0, 0, 0.03]  # 3 cm behind, the photo does not see it
    far = np.array([[1.0, 1.0, 1.0]])  # nothing seen anywhere near
    means = np.concatenate([front, back, far])
    colours = np.zeros((len(means), 3))
    colours[:200] = [0.2, 0.1, 0.05]
    share = np.r_[np.ones(200), np.zeros(201)]
    default = np.full((len(means), 3), 0.9)
    out = spread_colours(means, colours, share, default)
    np.testing.assert_allclose(out[200:400], np.tile([0.2, 0.1, 0.05], (200, 1)), atol=1e-9)
    np.testing.assert_allclose(out[400], 0.9)


def test_border_cells_the_photo_cannot_colour_give_way_to_the_decoder(head):
    avatar = _portrait_avatar(head, yaw_deg=0.0)  # a frontal photo sees neither ear squarely
    out = anchor_to_photo(avatar, head)
    verts = head.identity_vertices(torch.zeros(1, head.num_shape))[0].numpy()
    layer = face_layer(head, verts)
    assert out.meta["anchor"]["unknown_border_cells"] > 0
    assert out.meta["anchor"]["face_layer"] == layer.gaussians.num - out.meta["anchor"]["unknown_border_cells"]
    kept_ear_cells = np.isin(out.binding.triangles, layer.binding.triangles[layer.region("ears")])
    assert kept_ear_cells.sum() < layer.region("ears").sum() / 2
    # the face proper is never given away: every cheek cell is still there
    cheeks = np.isin(out.binding.triangles, layer.binding.triangles[layer.region("cheeks")])
    assert cheeks.sum() >= layer.region("cheeks").sum()


def test_the_layer_eyes_turn_with_the_eye_joints_and_the_mouth_interior_has_its_own_colours(head):
    from pointillist.anchor.face_layer import INTERIOR_COLOURS
    from pointillist.avatar.animate import AvatarAnimator
    from pointillist.head.data import JOINT_NAMES

    out = anchor_to_photo(_portrait_avatar(head, yaw_deg=0.0), head)
    colours, _, tri = _layer_cells(out, head)
    n = out.meta["anchor"]["face_layer"]
    verts = head.identity_vertices(torch.zeros(1, head.num_shape))[0].numpy()
    full = face_layer(head, verts)
    eyeball = np.isin(tri, full.binding.triangles[full.region("left_eyeball")])
    cheek = np.isin(tri, full.binding.triangles[full.region("cheeks")])
    pose = np.zeros((5, 3), np.float32)
    pose[JOINT_NAMES.index("left_eye"), 1] = 0.4  # look sideways
    animator = AvatarAnimator(out, head)
    rest, turned = (animator(None, p).means[0, -n:].numpy() for p in (None, pose))
    moved = np.linalg.norm(turned - rest, axis=1)
    assert moved[eyeball].mean() > 0.002 and moved[cheek].max() < 1e-6
    # the closed mouth hides its interior from the photo: teeth and cavity keep their own colours
    cavity = np.isin(tri, full.binding.triangles[full.region("mouth_cavity")])
    assert np.mean(np.abs(colours[cavity] - INTERIOR_COLOURS["mouth_cavity"]).max(1) < 0.02) > 0.8


@pytest.mark.parametrize("options", [AnchorOptions(), AnchorOptions(face_layer=False), AnchorOptions(photo_colours=False)])
def test_anchoring_leaves_the_avatar_it_is_given_untouched(head, options):
    avatar = _portrait_avatar(head, yaw_deg=30.0)
    before = {f: getattr(avatar.gaussians, f).copy() for f in ("means", "log_scales", "sh_dc", "opacity_logits")}
    anchor_to_photo(avatar, head, options=options)
    for f, value in before.items():
        np.testing.assert_array_equal(getattr(avatar.gaussians, f), value, err_msg=f)
