"""The head model: rest pose, rig locality, linearity, batching, gradients, stored-template sanity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointillist.head import mediapipe_topology as mpt
from pointillist.head.data import JOINT_NAMES, HeadModelData, HeadModelError
from pointillist.head.mesh_ops import boundary_edges
from pointillist.head.model import DEFAULT_HEAD_PATH, HeadModel
from pointillist.head.template_bases import REGION_GROUPS

REQUIRED_EXPRESSIONS = [
    f"{base}{side}"
    for base in ("eyeBlink", "eyeWide", "browDown", "browOuterUp", "mouthSmile", "mouthFrown", "mouthUpperUp",
                 "mouthLowerDown", "cheekSquint", "noseSneer")
    for side in ("Left", "Right")
] + ["browInnerUp", "mouthPucker", "mouthFunnel", "mouthClose", "mouthLeft", "mouthRight", "cheekPuff",
     "jawForward", "jawLeft", "jawRight"]


def region_mask(data: HeadModelData, names) -> np.ndarray:
    return np.isin(data.vertex_regions, [data.region_names.index(n) for n in names])


def test_template_shape_and_vocabulary(head):
    data = head.data
    assert 3500 <= data.num_vertices <= 6500
    assert 7000 <= data.num_faces <= 13000
    assert data.num_shape >= 20
    missing = [n for n in REQUIRED_EXPRESSIONS if n not in data.expr_names]
    assert not missing
    assert len(data.landmark_faces) == mpt.NUM_LANDMARKS
    for part in ("left_eyeball", "right_eyeball", "teeth_upper", "teeth_lower", "mouth_cavity"):
        assert data.part_mask(part).sum() > 20


def test_head_surface_is_closed_except_eye_openings(head):
    """The skin, mouth cavity and teeth are closed; only the eye openings (covered by eyeballs) are open."""
    faces = head.data.faces
    skin = faces[~(head.data.part_mask("left_eyeball") | head.data.part_mask("right_eyeball"))]
    open_vertices = set(boundary_edges(skin).ravel().tolist())
    eye_loops = set(mpt.closed_loop(mpt.LEFT_EYE_UPPER, mpt.LEFT_EYE_LOWER)) | set(mpt.closed_loop(mpt.RIGHT_EYE_UPPER, mpt.RIGHT_EYE_LOWER))
    assert open_vertices == eye_loops


def test_face_vertices_are_mediapipe_landmarks(head):
    data = head.data
    corners = data.vertices[data.faces[data.landmark_faces]]  # (L, 3, 3)
    points = (corners * data.landmark_barycentrics[..., None]).sum(1)
    np.testing.assert_allclose(points[: mpt.NUM_MESH_LANDMARKS], data.vertices[: mpt.NUM_MESH_LANDMARKS], atol=1e-7)
    # subject's own left is +X; nose tip is the most forward face point
    assert points[mpt.LEFT_EYE_OUTER, 0] > 0 > points[mpt.RIGHT_EYE_OUTER, 0]
    assert points[mpt.NOSE_TIP, 2] == pytest.approx(data.vertices[:, 2].max(), abs=0.01)
    # iris landmarks sit on the eyeballs
    eyeball_vertices = np.flatnonzero(data.region_mask("left_eyeball") | data.region_mask("right_eyeball"))
    iris_faces = data.landmark_faces[468:]
    assert np.isin(data.faces[iris_faces], eyeball_vertices).all()


def test_rest_pose_returns_template(head):
    out = head()
    torch.testing.assert_close(out.vertices[0], head.v_template, rtol=0, atol=1e-7)
    eye = torch.eye(4).expand(5, 4, 4)
    torch.testing.assert_close(out.joint_transforms[0], eye, rtol=0, atol=1e-6)


def test_joints_depend_on_identity_only(head):
    g = torch.Generator().manual_seed(0)
    shape = torch.randn(1, head.num_shape, generator=g)
    expr = torch.randn(1, head.num_expr, generator=g)
    a = head(shape=shape)
    b = head(shape=shape, expression=expr)
    torch.testing.assert_close(a.rest_joints, b.rest_joints)
    c = head(shape=shape * 2)
    assert not torch.allclose(a.rest_joints, c.rest_joints)


def test_jaw_moves_only_jaw_teeth_and_lower_lip(head):
    pose = torch.zeros(1, 5, 3)
    pose[0, JOINT_NAMES.index("jaw"), 0] = math.radians(20)
    moved = (head(pose=pose).vertices[0] - head.v_template).norm(dim=1).numpy() > 1e-6
    allowed = region_mask(head.data, ("jaw", "mouth", "teeth_lower", "mouth_cavity"))
    assert not (moved & ~allowed).any()
    assert moved[mpt.CHIN] and moved[14] and moved[17]  # chin, lower lip
    for still in (13, 0, mpt.NOSE_TIP, mpt.LEFT_EYE_OUTER):
        assert not moved[still]
    assert not moved[head.data.region_mask("teeth_upper")].any()
    assert moved[head.data.region_mask("teeth_lower")].all()
    # opening the jaw moves the chin down
    assert head(pose=pose).vertices[0, mpt.CHIN, 1] < head.v_template[mpt.CHIN, 1] - 0.01


def test_eye_joints_rotate_only_eyeballs(head):
    pose = torch.zeros(1, 5, 3)
    pose[0, JOINT_NAMES.index("left_eye"), 1] = math.radians(25)  # look toward +X (the subject's left)
    out = head(pose=pose).vertices[0]
    moved = (out - head.v_template).norm(dim=1).numpy() > 1e-6
    eyeball = head.data.region_mask("left_eyeball")
    assert not (moved & ~eyeball).any()
    assert moved[eyeball].mean() > 0.95  # all but the points on the rotation axis
    iris = head.data.faces[head.data.landmark_faces[mpt.LEFT_IRIS[0]]]
    vertex = int(iris[head.data.landmark_barycentrics[mpt.LEFT_IRIS[0]].argmax()])
    assert out[vertex, 0] > head.v_template[vertex, 0] + 0.003


def test_blendshapes_are_linear(head):
    g = torch.Generator().manual_seed(1)
    e1, e2 = torch.randn(2, head.num_expr, generator=g)
    pose = torch.randn(1, 5, 3, generator=g) * 0.2
    base = head(pose=pose).vertices
    f = lambda e: head(expression=e[None], pose=pose).vertices - base
    torch.testing.assert_close(f(0.3 * e1 - 1.7 * e2), 0.3 * f(e1) - 1.7 * f(e2), rtol=1e-4, atol=1e-6)


def test_batching_matches_single(head):
    g = torch.Generator().manual_seed(2)
    B = 3
    shape = torch.randn(B, head.num_shape, generator=g)
    expr = torch.randn(B, head.num_expr, generator=g)
    pose = torch.randn(B, 5, 3, generator=g) * 0.3
    trans = torch.randn(B, 3, generator=g) * 0.05
    batched = head(shape=shape, expression=expr, pose=pose, translation=trans)
    for i in range(B):
        single = head(shape=shape[i : i + 1], expression=expr[i : i + 1], pose=pose[i : i + 1], translation=trans[i : i + 1])
        torch.testing.assert_close(batched.vertices[i], single.vertices[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batched.joint_transforms[i], single.joint_transforms[0], rtol=1e-5, atol=1e-6)


def test_gradients_match_finite_differences():
    data = HeadModelData.load(DEFAULT_HEAD_PATH)
    head = HeadModel(data).double()
    g = torch.Generator().manual_seed(3)
    shape = (torch.randn(1, 4, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    expr = (torch.randn(1, 4, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    pose = (torch.randn(1, 5, 3, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    trans = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    probe = torch.tensor([mpt.CHIN, mpt.NOSE_TIP, 14, 386])

    def f(s, e, p, t):
        return head(shape=s, expression=e, pose=p, translation=t).vertices[:, probe]

    assert torch.autograd.gradcheck(f, (shape, expr, pose, trans), eps=1e-6, atol=1e-6)
    # and gradients flow at exactly the rest pose (Rodrigues' small-angle branch)
    zero_pose = torch.zeros(1, 5, 3, dtype=torch.float64, requires_grad=True)
    head(pose=zero_pose).vertices.sum().backward()
    assert torch.isfinite(zero_pose.grad).all()


@pytest.mark.parametrize("index", range(42))
def test_expression_is_local(head, index):
    """At least 90 % of each expression's displacement falls in its own region (and left/right are right)."""
    data = head.data
    if index >= data.num_expr:
        pytest.skip("fewer expressions")
    name = data.expr_names[index]
    if name.startswith(("eyeBlink", "eyeWide", "eyeSquint")):
        family = "left_eye" if name.endswith("Left") else "right_eye"
    else:
        family = {"brow": "brows", "chee": "cheeks", "nose": "nose", "jaw": "jaw"}.get(name[:4], "mouth")
        family = "jaw" if name.startswith("jaw") else family
    magnitude = np.linalg.norm(data.expr_dirs[:, :, index], axis=1)
    assert magnitude.max() > 5e-4, f"{name} barely moves"
    share = magnitude[region_mask(data, REGION_GROUPS[family])].sum() / magnitude.sum()
    assert share >= 0.90, f"{name}: only {share:.0%} of its displacement is in {family}"
    side = {"Left": 1.0, "Right": -1.0}.get(name[-5:].lstrip("t") if name.endswith("Right") else name[-4:], 0.0)
    if name in ("mouthLeft", "mouthRight", "jawLeft", "jawRight"):  # directions: move toward that side
        assert side * data.expr_dirs[:, 0, index].sum() > 0
    elif side:  # one-sided shapes act on the subject's own side
        assert side * (magnitude * data.vertices[:, 0]).sum() > 0, f"{name} acts on the wrong side"


def test_blink_closes_the_lid(head):
    i = head.expr_names.index("eyeBlinkLeft")
    e = torch.zeros(1, head.num_expr)
    e[0, i] = 1.0
    v = head(expression=e).vertices[0]
    gap = (v[386] - v[374]).norm()  # upper vs lower lid centre
    assert gap < 0.25 * (head.v_template[386] - head.v_template[374]).norm()


def test_load_refuses_pickled_arrays_and_names_fields(tmp_path):
    bad = tmp_path / "evil.npz"
    np.savez(bad, header_json=np.frombuffer(b"{}", dtype=np.uint8), vertices=np.array([object()], dtype=object))
    with pytest.raises(HeadModelError, match="not a readable|schema_version"):
        HeadModelData.load(bad)
    data = HeadModelData.load(DEFAULT_HEAD_PATH)
    data.lbs_weights = data.lbs_weights[:-1]
    with pytest.raises(HeadModelError, match="lbs_weights"):
        data.validate()
    with pytest.raises(HeadModelError, match="not found"):
        HeadModelData.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(HeadModelError, match="not a readable"):
        HeadModelData.load(tmp_path / "junk.npz")


@pytest.mark.slow
def test_template_regenerates_from_its_script():
    """The stored asset is what the project's own build script makes (MediaPipe on the astronaut portrait)."""
    pytest.importorskip("mediapipe")
    pytest.importorskip("skimage")
    from pointillist.head.build_template import build_template

    rebuilt = build_template()
    stored = HeadModelData.load(DEFAULT_HEAD_PATH)
    assert rebuilt.expr_names == stored.expr_names and rebuilt.shape_names == stored.shape_names
    np.testing.assert_array_equal(rebuilt.faces, stored.faces)
    np.testing.assert_allclose(rebuilt.vertices, stored.vertices, atol=2e-5)
    np.testing.assert_allclose(rebuilt.expr_dirs, stored.expr_dirs, atol=2e-5)


def test_identity_offsets_broadcast_over_a_batch(head):
    shape = torch.randn(3, head.num_shape)
    offsets = torch.randn(1, head.num_vertices, 3) * 1e-3
    batched = head(shape=shape, offsets=offsets)
    single = head(shape=shape[1:2], offsets=offsets)
    torch.testing.assert_close(batched.vertices[1], single.vertices[0], rtol=1e-5, atol=1e-6)
