"""Procedural avatars: deterministic, valid, bound where they should be, adaptive in point count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pointillist.avatar.animate import AvatarAnimator
from pointillist.avatar.gaussians import validate_avatar
from pointillist.head.data import JOINT_NAMES
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
    with_beard = make_procedural_avatar(5, head, hair_style="bald", beard=True, density=DENSITY)
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
