"""Procedural avatars: deterministic, valid, bound where they should be, adaptive in point count."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pointillist.avatar.animate import AvatarAnimator
from pointillist.avatar.gaussians import validate_avatar
from pointillist.head.data import JOINT_NAMES
from pointillist.synth.appearance import (
    BEARD_STYLES,
    STUDIO_LIGHT,
    Lighting,
    appearance_for_seed,
    color_temperature_rgb,
    fitzpatrick_bin,
    melanin_color,
    skin_color,
)
from pointillist.synth.procedural import SYNTH_STYLES, make_procedural_avatar

DENSITY = 0.35


@pytest.fixture(scope="module")
def avatars(head):
    return {style: make_procedural_avatar(3, head, hair_style=style, beard=False, density=DENSITY) for style in SYNTH_STYLES}


def test_deterministic_per_seed(head):
    a = make_procedural_avatar(11, head, density=0.2)
    b = make_procedural_avatar(11, head, density=0.2)
    c = make_procedural_avatar(12, head, density=0.2)
    assert np.array_equal(a.gaussians.means, b.gaussians.means) and np.array_equal(a.gaussians.sh_dc, b.gaussians.sh_dc)
    assert a.meta == b.meta
    assert len(c.gaussians.means) != len(a.gaussians.means) or not np.array_equal(c.gaussians.means, a.gaussians.means)


@pytest.mark.parametrize("style", SYNTH_STYLES)
def test_every_style_is_a_valid_bound_avatar(head, avatars, style):
    avatar = avatars[style]
    validate_avatar(avatar, num_faces=head.num_faces, num_vertices=head.num_vertices)
    assert avatar.meta["hair_style"] == style and avatar.identity.model_id == head.model_id
    assert np.isfinite(avatar.gaussians.means).all()
    # every Gaussian is close to the surface point it is bound to (hair: within its strand's reach)
    corners = head.data.vertices[head.data.faces[avatar.binding.triangles]]
    with torch.no_grad():
        verts = head.identity_vertices(torch.as_tensor(avatar.identity.shape)[None])[0].numpy()
    anchor = (verts[head.data.faces[avatar.binding.triangles]] * avatar.binding.barycentrics[..., None]).sum(1)
    distance = np.linalg.norm(avatar.gaussians.means - anchor, axis=1)
    if style == "bald":  # skin, eyes, teeth sit on their triangles
        assert np.percentile(distance, 99) < 0.002
    assert np.percentile(distance, 90) < 0.12  # long hair hangs at most a strand's length away
    assert corners.shape[0] == len(avatar.gaussians.means)


def test_point_count_follows_complexity(avatars):
    counts = {style: len(a.gaussians.means) for style, a in avatars.items()}
    assert counts["bald"] < counts["short"] < counts["long"]
    assert counts["bald"] < counts["curly"] and counts["bald"] < counts["bun"]
    assert counts["long"] > 3 * counts["bald"]


def test_hair_binds_to_the_scalp_and_follows_the_head_not_the_jaw(head, avatars):
    avatar = avatars["long"]
    bald = avatars["bald"]
    n_hair = len(avatar.gaussians.means) - len(bald.gaussians.means)
    assert n_hair > 1000
    animator = AvatarAnimator(avatar, head)
    jaw = torch.zeros(5, 3)
    jaw[JOINT_NAMES.index("jaw"), 0] = 0.4
    moved_by_jaw = (animator(pose=jaw).means[0] - animator.means).norm(dim=1).numpy() > 1e-6
    hair_rows = np.flatnonzero(animator.rig.lbs_weights[:, JOINT_NAMES.index("neck")] > 0.99)
    assert len(hair_rows) > n_hair  # hair and the upper head follow the neck joint fully
    data = head.data
    forbidden = np.isin(data.vertex_regions, [data.region_names.index(n) for n in ("jaw", "left_eyeball", "right_eyeball", "teeth_lower")])
    # the hair is the last block of Gaussians before the (absent) beard: none of it moves with the jaw
    hair = slice(len(avatar.gaussians.means) - n_hair, None)
    assert not moved_by_jaw[hair].any()
    assert not forbidden[data.faces[avatar.binding.triangles[hair]]].any()


def test_beard_follows_the_jaw(head):
    with_beard = make_procedural_avatar(5, head, hair_style="bald", beard=True, beard_style="full", density=DENSITY)
    without = make_procedural_avatar(5, head, hair_style="bald", beard=False, density=DENSITY)
    n_beard = len(with_beard.gaussians.means) - len(without.gaussians.means)
    assert n_beard > 200
    animator = AvatarAnimator(with_beard, head)
    jaw = torch.zeros(5, 3)
    jaw[JOINT_NAMES.index("jaw"), 0] = 0.4
    moved = (animator(pose=jaw).means[0] - animator.means).norm(dim=1).numpy() > 1e-4
    assert moved[-n_beard:].mean() > 0.5  # most of the beard is on the chin and jaw


def test_eyes_have_sclera_iris_and_pupil(head, avatars):
    avatar = avatars["bald"]
    data = head.data
    eyeball_faces = data.part_mask("left_eyeball") | data.part_mask("right_eyeball")
    on_eyes = eyeball_faces[avatar.binding.triangles]
    colors = avatar.gaussians.colors()[on_eyes]
    assert on_eyes.sum() > 100
    brightness = colors.mean(1)
    assert (brightness < 0.08).sum() > 5  # pupils
    assert (brightness > 0.8).sum() > 20  # sclera


def test_bad_options(head):
    with pytest.raises(ValueError, match="hair style"):
        make_procedural_avatar(0, head, hair_style="mohawk")
    with pytest.raises(ValueError, match="density"):
        make_procedural_avatar(0, head, density=0)
    with pytest.raises(ValueError, match="beard style"):
        make_procedural_avatar(0, head, beard=True, beard_style="mutton")


def _colors(avatar) -> np.ndarray:
    return avatar.gaussians.colors()


@pytest.mark.parametrize("style", BEARD_STYLES)
def test_beard_styles_differ_in_extent(head, style):
    bald = make_procedural_avatar(5, head, hair_style="bald", beard=False, density=DENSITY)
    bearded = make_procedural_avatar(5, head, hair_style="bald", beard=True, beard_style=style, density=DENSITY)
    n = len(bearded.gaussians.means) - len(bald.gaussians.means)
    assert bearded.meta["beard_style"] == style and n > 30
    beard = bearded.gaussians.means[-n:]
    from pointillist.head import mediapipe_topology as mpt
    from pointillist.train.dataset import subject_landmarks

    lm = subject_landmarks(head, bearded.identity.shape)
    assert beard[:, 1].max() < lm[mpt.NOSE_TIP, 1]  # below the nose, always
    x_extent = np.ptp(beard[:, 0])
    if style in ("full", "stubble"):
        assert x_extent > 0.08  # ear to ear
    else:
        assert x_extent < 0.07  # around the mouth only
    if style == "stubble":  # short, flat and faint
        assert np.exp(bearded.gaussians.log_scales[-n:, 0]).max() < 0.0011
        assert (1 / (1 + np.exp(-bearded.gaussians.opacity_logits[-n:]))).max() < 0.5


def test_glasses_are_rigid_with_the_head(head):
    plain = make_procedural_avatar(8, head, hair_style="bald", beard=False, glasses=False, density=DENSITY)
    avatar = make_procedural_avatar(8, head, hair_style="bald", beard=False, glasses=True, density=DENSITY)
    n = len(avatar.gaussians.means) - len(plain.gaussians.means)
    assert avatar.meta["glasses"] in ("round", "rectangular", "browline") and n > 200
    validate_avatar(avatar, num_faces=head.num_faces, num_vertices=head.num_vertices)
    glasses = slice(len(plain.gaussians.means), None)
    animator = AvatarAnimator(avatar, head)
    names = head.data.expr_names
    expr = torch.zeros(len(names))
    for name in ("eyeBlinkLeft", "browInnerUp", "browOuterUpRight", "noseSneerLeft", "mouthSmileLeft", "cheekPuff"):
        expr[names.index(name)] = 1.0
    pose = torch.zeros(5, 3)
    pose[JOINT_NAMES.index("jaw"), 0] = 0.4
    still = animator(expression=expr, pose=pose).means[0]
    assert torch.allclose(still[glasses], animator.means[glasses], atol=1e-6)  # no blendshape or jaw bends the frame
    assert not torch.allclose(still[:len(plain.gaussians.means)], animator.means[:len(plain.gaussians.means)])
    pose[JOINT_NAMES.index("neck"), 1] = 0.3  # the neck turns the head: glasses follow it rigidly
    turned = animator(pose=pose).means[0][glasses].numpy().astype(np.float64)
    rest = animator.means[glasses].numpy().astype(np.float64)
    d_rest = np.linalg.norm(rest[:50, None] - rest[None, :50], axis=2)
    d_turned = np.linalg.norm(turned[:50, None] - turned[None, :50], axis=2)
    assert np.abs(d_rest - d_turned).max() < 1e-5 and np.abs(turned - rest).max() > 0.01


def test_lighting_is_baked_into_the_colours(head):
    look = appearance_for_seed(21)
    flat = dataclasses.replace(look, lighting=Lighting((0.0, 0.0, 1.0), 6500.0, 1.0, 0.0))
    left = dataclasses.replace(look, lighting=Lighting((1.0, 0.0, 0.0), 6500.0, 0.5, 0.6))
    a = make_procedural_avatar(21, head, hair_style="bald", beard=False, glasses=False, density=DENSITY, appearance=flat)
    b = make_procedural_avatar(21, head, hair_style="bald", beard=False, glasses=False, density=DENSITY, appearance=left)
    assert np.array_equal(a.gaussians.means, b.gaussians.means)  # the light changes colours only
    with torch.no_grad():
        verts = head.identity_vertices(torch.as_tensor(a.identity.shape)[None])[0].double().numpy()
    tri = verts[head.data.faces[a.binding.triangles]]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    expected = np.clip(_colors(a) * left.lighting.shade(n), 0, 1)
    assert np.abs(_colors(b) - expected).max() < 1e-4
    assert _colors(b)[n[:, 0] > 0.7].mean() > 1.3 * _colors(b)[n[:, 0] < -0.7].mean()  # the lit side is brighter


def test_appearance_palettes():
    light, deep = skin_color(0.0, 0.0), skin_color(1.0, 0.0)
    assert light.mean() > 2.5 * deep.mean() and fitzpatrick_bin(0.0) == "I" and fitzpatrick_bin(1.0) == "VI"
    assert skin_color(0.5, 1.0)[1] > skin_color(0.5, -1.0)[1]  # olive undertone is greener than pink
    ramp = np.array([skin_color(t, 0.0).mean() for t in np.linspace(0, 1, 50)])
    assert np.all(np.diff(ramp) < 0)  # a continuous, monotone tone axis
    assert melanin_color(0.0).mean() > 5 * melanin_color(1.0).mean()
    warm, cool = color_temperature_rgb(3200), color_temperature_rgb(7500)
    assert warm[0] > warm[2] and cool[2] > cool[0]
    a, b = appearance_for_seed(4), appearance_for_seed(4)
    assert a == b and a.to_json()["fitzpatrick"] == a.fitzpatrick


def test_every_new_style_changes_the_silhouette(head, avatars):
    """The new styles are not re-labelled old ones: their hair volumes differ."""
    def extent(style):
        a = avatars[style]
        return np.ptp(a.gaussians.means, axis=0)

    assert extent("ponytail")[2] > extent("short")[2] + 0.02  # the tail hangs out behind
    assert extent("afro")[0] > extent("short")[0] + 0.02  # volume out to the sides
    assert extent("bob")[1] > extent("short")[1] and extent("long")[1] > extent("bob")[1]
    assert len(avatars["buzz"].gaussians.means) < len(avatars["short"].gaussians.means) * 1.3


def test_a_lone_avatar_gets_the_studio_light_a_dataset_its_own(head):
    lone = make_procedural_avatar(21, head, hair_style="bald", beard=False, glasses=False, density=0.15)
    assert lone.meta["appearance"]["lighting"]["key"] == round(STUDIO_LIGHT.key, 4)
    look = appearance_for_seed(21)
    lit = make_procedural_avatar(21, head, hair_style="bald", beard=False, glasses=False, density=0.15, appearance=look)
    assert lit.meta["appearance"]["lighting"]["key"] == round(look.lighting.key, 4) != round(STUDIO_LIGHT.key, 4)
    assert np.array_equal(lone.gaussians.means, lit.gaussians.means)
    assert lone.meta["skin_tone"] == lit.meta["skin_tone"]  # the same person, lit differently
