"""Animation: rest = canonical, equivalence with explicit per-point LBS + blendshapes, rotations."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pointillist.avatar.animate import AvatarAnimator, animate, point_rig
from pointillist.avatar.binding import closest_point_barycentrics
from pointillist.avatar.gaussians import Avatar, AvatarFormatError, Binding, Gaussians, HeadIdentity
from pointillist.head.data import JOINT_NAMES, HeadModelData
from pointillist.head.lbs import quaternion_to_matrix
from pointillist.head.model import HeadModel


def make_avatar(head: HeadModel, n: int = 400, seed: int = 0, shape_scale: float = 0.0) -> Avatar:
    rng = np.random.default_rng(seed)
    shape = (rng.normal(size=head.num_shape) * shape_scale).astype(np.float32)
    with torch.no_grad():
        verts = head.identity_vertices(torch.as_tensor(shape)[None])[0].numpy()
    faces = head.data.faces
    tri = rng.integers(0, len(faces), n)
    bary = rng.dirichlet(np.ones(3), n)
    corners = verts[faces[tri]]
    means = ((corners * bary[..., None]).sum(1) + rng.normal(0, 0.0015, (n, 3))).astype(np.float32)
    q = rng.normal(size=(n, 4)).astype(np.float32)
    g = Gaussians(
        means=means, log_scales=rng.normal(-6, 0.3, (n, 3)).astype(np.float32),
        quats=q / np.linalg.norm(q, axis=1, keepdims=True), opacity_logits=rng.normal(size=n).astype(np.float32),
        sh_dc=rng.normal(size=(n, 3)).astype(np.float32), sh_rest=np.zeros((n, 0, 3), np.float32),
    )
    binding = Binding(triangles=tri.astype(np.int64), barycentrics=closest_point_barycentrics(means, corners).astype(np.float32))
    return Avatar(gaussians=g, binding=binding, identity=HeadIdentity(model_id=head.model_id, shape=shape, vertex_offsets=None), source=None, meta={})


def augmented_head(head: HeadModel, avatar: Avatar) -> HeadModel:
    """The head model with every Gaussian appended as an extra vertex carrying its blended rig data.

    Posing this model with `HeadModel.forward` is the explicit per-point LBS + blendshape computation
    the animator must agree with.
    """
    rig = point_rig(avatar, head)
    d = head.data
    n = len(avatar.gaussians.means)
    # the Gaussians sit at the identity already: undo the shape blendshapes the forward pass will add
    shape = torch.as_tensor(avatar.identity.shape)[None]
    return HeadModel(HeadModelData(
        model_id=d.model_id,
        vertices=np.concatenate([d.vertices, avatar.gaussians.means - _shape_offset(head, rig, avatar, shape)]),
        faces=d.faces,
        joint_regressor=np.concatenate([d.joint_regressor, np.zeros((5, n), np.float32)], 1),
        lbs_weights=np.concatenate([d.lbs_weights, rig.lbs_weights]),
        shape_dirs=np.concatenate([d.shape_dirs, _blend(head, avatar, d.shape_dirs)]),
        shape_names=d.shape_names,
        expr_dirs=np.concatenate([d.expr_dirs, rig.expr_offsets]),
        expr_names=d.expr_names,
    ))


def _blend(head, avatar, per_vertex):
    corners = head.data.faces[avatar.binding.triangles]
    b = avatar.binding.barycentrics
    return sum(b[:, k, None, None] * per_vertex[corners[:, k]] for k in range(3)).astype(np.float32)


def _shape_offset(head, rig, avatar, shape):
    return np.einsum("ncs,s->nc", _blend(head, avatar, head.data.shape_dirs), shape[0].numpy())


@pytest.fixture(scope="module")
def avatar(head):
    return make_avatar(head, shape_scale=1.0)


def test_rest_pose_is_canonical_exactly(head, avatar):
    posed = animate(avatar, head)
    np.testing.assert_array_equal(posed.means[0].numpy(), avatar.gaussians.means)
    np.testing.assert_array_equal(posed.quats[0].numpy(), avatar.gaussians.quats)
    np.testing.assert_array_equal(posed.log_scales[0].numpy(), avatar.gaussians.log_scales)


def test_matches_explicit_per_point_lbs_and_blendshapes(head, avatar):
    g = torch.Generator().manual_seed(5)
    expr = torch.randn(2, head.num_expr, generator=g)
    pose = torch.randn(2, 5, 3, generator=g) * 0.25
    trans = torch.randn(2, 3, generator=g) * 0.03
    posed = AvatarAnimator(avatar, head)(expr, pose, trans)
    reference = augmented_head(head, avatar)(shape=torch.as_tensor(avatar.identity.shape)[None].expand(2, -1), expression=expr, pose=pose, translation=trans)
    n = len(avatar.gaussians.means)
    torch.testing.assert_close(posed.means, reference.vertices[:, -n:], rtol=1e-4, atol=2e-6)


def test_gaussian_on_a_vertex_follows_that_vertex(head):
    avatar = make_avatar(head, n=3, seed=1)
    faces = head.data.faces
    tri = np.array([10, 500, 2000])
    corner = np.array([0, 1, 2])
    means = head.data.vertices[faces[tri, corner]]
    bary = np.eye(3, dtype=np.float32)[corner]
    avatar = replace(avatar, gaussians=replace(avatar.gaussians, means=means.astype(np.float32)),
                     binding=Binding(triangles=tri, barycentrics=bary))
    g = torch.Generator().manual_seed(6)
    expr = torch.randn(1, head.num_expr, generator=g)
    pose = torch.randn(1, 5, 3, generator=g) * 0.3
    posed = animate(avatar, head, expr, pose)
    verts = head(expression=expr, pose=pose).vertices[0]
    torch.testing.assert_close(posed.means[0], verts[torch.as_tensor(faces[tri, corner])], rtol=1e-4, atol=1e-6)


def test_rotation_follows_the_jaw(head):
    """A Gaussian fully weighted to the jaw turns with it; its scale does not change."""
    lower_teeth = np.flatnonzero(head.data.part_mask("teeth_lower"))[:5]
    avatar = make_avatar(head, n=5, seed=2)
    tri = lower_teeth
    corners = head.data.vertices[head.data.faces[tri]]
    means = corners.mean(1).astype(np.float32)
    avatar = replace(avatar, gaussians=replace(avatar.gaussians, means=means),
                     binding=Binding(triangles=tri, barycentrics=np.full((5, 3), 1 / 3, np.float32)))
    pose = torch.zeros(5, 3)
    pose[JOINT_NAMES.index("jaw"), 0] = math.radians(20)
    posed = animate(avatar, head, pose=pose)
    R = quaternion_to_matrix(posed.quats[0]) @ quaternion_to_matrix(torch.as_tensor(avatar.gaussians.quats)).transpose(-1, -2)
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    expected = torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    torch.testing.assert_close(R, expected.expand_as(R), atol=1e-5, rtol=0)
    torch.testing.assert_close(posed.log_scales[0], torch.as_tensor(avatar.gaussians.log_scales))


def test_point_rig_arrays(head, avatar):
    rig = point_rig(avatar, head)
    n = len(avatar.gaussians.means)
    assert rig.lbs_weights.shape == (n, 5) and np.allclose(rig.lbs_weights.sum(1), 1, atol=1e-5)
    assert rig.expr_offsets.shape == (n, 3, head.num_expr)
    assert rig.pose_offsets is None  # the procedural head has no pose correctives
    assert rig.rest_joints.shape == (5, 3)


def test_unbound_or_foreign_avatars_are_refused(head, avatar):
    with pytest.raises(AvatarFormatError, match="binding"):
        point_rig(replace(avatar, binding=None), head)
    bad = replace(avatar, binding=Binding(triangles=np.full(len(avatar.binding.triangles), head.num_faces), barycentrics=avatar.binding.barycentrics))
    with pytest.raises(AvatarFormatError, match="out of range"):
        point_rig(bad, head)
    foreign = replace(avatar, identity=replace(avatar.identity, model_id="flame2020"))
    with pytest.raises(AvatarFormatError, match="model_id"):
        point_rig(foreign, head)
