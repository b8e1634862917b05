"""Inria PLY exports (rest, posed, sequences) read back by plyfile, and SH rotation of posed Gaussians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData

from pointillist.avatar.animate import AvatarAnimator
from pointillist.avatar.controls import FaceControls
from pointillist.export.inria_ply import export_ply, export_ply_sequence
from pointillist.export.motion import FrameRange, load_motion
from pointillist.export.posing import FramePose, posed_gaussians
from pointillist.export.sh_rotation import rotate_sh_rest
from pointillist.render.sh import eval_sh

# Written out here, not imported: the Inria 3DGS property order every splat viewer expects.
INRIA_DEGREE0 = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
                 "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def inria_names(num_rest: int) -> list[str]:
    return INRIA_DEGREE0[:9] + [f"f_rest_{i}" for i in range(num_rest)] + INRIA_DEGREE0[9:]


def read_vertices(path) -> np.ndarray:
    ply = PlyData.read(str(path))
    assert [e.name for e in ply.elements] == ["vertex"]
    return ply["vertex"].data


def test_rest_ply_has_exactly_inria_properties_and_the_bundle_values(procedural_avatar, tmp_path):
    path = export_ply(procedural_avatar, tmp_path / "rest.ply")
    rows = read_vertices(path)
    assert list(rows.dtype.names) == inria_names(0)
    assert all(rows.dtype[name] == np.dtype("<f4") for name in rows.dtype.names)
    g = procedural_avatar.gaussians
    np.testing.assert_array_equal(np.stack([rows["x"], rows["y"], rows["z"]], 1), g.means)
    np.testing.assert_array_equal(np.stack([rows[f"rot_{i}"] for i in range(4)], 1), g.quats)
    np.testing.assert_array_equal(rows["opacity"], g.opacity_logits)


def test_sh3_ply_orders_f_rest_channel_major(sh3_avatar, tmp_path):
    rows = read_vertices(export_ply(sh3_avatar, tmp_path / "sh3.ply"))
    assert list(rows.dtype.names) == inria_names(45)
    rest = sh3_avatar.gaussians.sh_rest  # (N, 15, 3)
    np.testing.assert_array_equal(rows["f_rest_0"], rest[:, 0, 0])
    np.testing.assert_array_equal(rows["f_rest_15"], rest[:, 0, 1])  # green channel starts after 15 red ones
    np.testing.assert_array_equal(rows["f_rest_44"], rest[:, 14, 2])


def test_posed_ply_opens_the_jaw_and_keeps_the_rest_still(procedural_avatar, head, tmp_path):
    animator = AvatarAnimator(procedural_avatar, head)
    frame = FramePose.from_controls(FaceControls(jaw_deg=20.0), head.expr_names)
    rows = read_vertices(export_ply(procedural_avatar, tmp_path / "posed.ply", animator, frame))
    assert list(rows.dtype.names) == inria_names(0)
    posed = np.stack([rows["x"], rows["y"], rows["z"]], 1)
    rest = procedural_avatar.gaussians.means
    jaw_weight = animator.rig.lbs_weights[:, 2]
    moved = np.linalg.norm(posed - rest, axis=1)
    assert moved[jaw_weight == 0].max() < 1e-6  # only jaw-weighted Gaussians move
    strong = jaw_weight > 0.9
    assert strong.sum() > 20
    assert (posed[strong, 1] - rest[strong, 1]).mean() < -0.003  # the chin drops (+Y is up)
    q = np.stack([rows[f"rot_{i}"] for i in range(4)], 1)
    assert not np.allclose(q[strong], procedural_avatar.gaussians.quats[strong])  # rotations follow the jaw


def test_rest_frame_is_bit_exact(procedural_avatar, head):
    g = posed_gaussians(AvatarAnimator(procedural_avatar, head), FramePose.rest(head.num_expr))
    assert g is procedural_avatar.gaussians


def _random_rotations(n: int, seed: int) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.random(n, random_state=seed).as_matrix()


@pytest.mark.parametrize("k", [3, 8, 15])
def test_rotated_sh_in_world_equals_canonical_sh_toward_the_back_rotated_direction(k):
    rng = np.random.default_rng(k)
    n = 200
    sh_rest = rng.normal(size=(n, k, 3)).astype(np.float32)
    R = _random_rotations(n, seed=k)
    rotated = rotate_sh_rest(sh_rest, R)
    degree = {3: 1, 8: 2, 15: 3}[k]
    dc = rng.normal(size=(n, 1, 3))
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    original = torch.as_tensor(np.concatenate([dc, sh_rest], 1))
    posed = torch.as_tensor(np.concatenate([dc, rotated], 1))
    back = torch.as_tensor(np.einsum("nji,nj->ni", R, d))  # R^T d: what the renderer does with sh_frames
    np.testing.assert_allclose(eval_sh(degree, posed, torch.as_tensor(d)).numpy(),
                               eval_sh(degree, original, back).numpy(), atol=2e-5)


def test_sh_rotation_by_identity_changes_nothing():
    sh = np.random.default_rng(1).normal(size=(10, 15, 3)).astype(np.float32)
    np.testing.assert_allclose(rotate_sh_rest(sh, np.tile(np.eye(3), (10, 1, 1))), sh, atol=1e-6)


def test_posed_sh3_export_rotates_sh_with_each_gaussian(sh3_avatar, head, tmp_path):
    animator = AvatarAnimator(sh3_avatar, head)
    frame = FramePose.from_controls(FaceControls(jaw_deg=15.0, neck_yaw_deg=30.0), head.expr_names)
    rows = read_vertices(export_ply(sh3_avatar, tmp_path / "posed_sh3.ply", animator, frame))
    n = sh3_avatar.gaussians.num
    stored = np.stack([rows[f"f_rest_{i}"] for i in range(45)], 1).reshape(n, 3, 15).transpose(0, 2, 1)
    with torch.no_grad():
        R = animator(frame.expression, frame.pose).rotations[0].numpy()
    d = np.random.default_rng(2).normal(size=(n, 3))
    sh_world = torch.as_tensor(np.concatenate([sh3_avatar.gaussians.sh_dc[:, None], stored], 1), dtype=torch.float64)
    sh_canon = torch.as_tensor(np.concatenate([sh3_avatar.gaussians.sh_dc[:, None], sh3_avatar.gaussians.sh_rest], 1), dtype=torch.float64)
    back = torch.as_tensor(np.einsum("nji,nj->ni", R, d / np.linalg.norm(d, axis=1, keepdims=True)))
    np.testing.assert_allclose(eval_sh(3, sh_world, torch.as_tensor(d)).numpy(), eval_sh(3, sh_canon, back).numpy(), atol=1e-4)


def test_sequence_numbers_files_by_frame_and_matches_single_frame_exports(procedural_avatar, head, tmp_path):
    animator = AvatarAnimator(procedural_avatar, head)
    motion = load_motion("talk", head.expr_names, head_is_flame=False, fps=25.0)
    paths = export_ply_sequence(animator, tmp_path / "seq", motion, FrameRange(3, 12))
    assert [p.name for p in paths] == [f"frame_{i:04d}.ply" for i in range(3, 13)]
    assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == [p.name for p in paths]  # no temp files left
    frames = [read_vertices(p) for p in paths]
    assert all(list(f.dtype.names) == inria_names(0) for f in frames)
    single = read_vertices(export_ply(procedural_avatar, tmp_path / "f7.ply", animator, motion.frame(7)))
    for name in ("x", "y", "z", "rot_0"):
        np.testing.assert_allclose(frames[7 - 3][name], single[name], atol=1e-6)
    # Talking moves the face over time: consecutive frames differ.
    assert not np.array_equal(frames[0]["y"], frames[5]["y"])


def test_frame_range_parsing():
    assert list(FrameRange.parse("2:4")) == [2, 3, 4]
    assert len(FrameRange.parse("9")) == 1
    for bad in ("0:3", "5:2", "a:b"):
        with pytest.raises(ValueError, match="frame range"):
            FrameRange.parse(bad)
