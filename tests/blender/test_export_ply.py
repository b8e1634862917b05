"""File > Export > Gaussian Splats (.ply): rest, posed at the current frame, and a sequence, read back by plyfile.

Oracles: plyfile (an independent reader) for the exact Inria property names and order, the bundle's own
Gaussians for the rest export, and the backend's `animate()` for the posed one (within 1e-5 in head space).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.blender

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from addon import render_bridge as rb

EXPORT = """
import math
arm = ADDON.importer.import_avatar(bpy.context, ARGS["bundle"])
_, pts = ADDON.importer.avatar_parts(arm)
scene = bpy.context.scene
for name, value in ARGS["expression"].items():
    pts.data.shape_keys.key_blocks[name].value = value
jaw, neck = arm.pose.bones["jaw"], arm.pose.bones["neck"]
for pb in (jaw, neck):
    pb.rotation_mode = "ZXY"
jaw.rotation_euler = (0.0, 0.0, 0.0)
jaw.keyframe_insert("rotation_euler", frame=1)
jaw.rotation_euler = (math.radians(ARGS["jaw_deg"]), 0.0, 0.0)
jaw.keyframe_insert("rotation_euler", frame=2)
neck.rotation_euler = ARGS["neck"]
scene.frame_set(2)
bpy.context.view_layer.objects.active = arm
bpy.ops.export_scene.pointillist_ply(filepath=ARGS["out"] + "/posed.ply", pose="POSED")
bpy.ops.export_scene.pointillist_ply(filepath=ARGS["out"] + "/rest.ply", pose="REST")
bpy.ops.export_scene.pointillist_ply_sequence(directory=ARGS["out"] + "/seq", frame_start=1, frame_end=2)
frame_after = scene.frame_current
bpy.context.view_layer.objects.active = None
try:
    bpy.ops.export_scene.pointillist_ply(filepath=ARGS["out"] + "/none.ply")
    refused = ""
except RuntimeError as exc:
    refused = str(exc)
emit(frame_after=frame_after, refused=refused, name=pts.name)
"""


def test_ply_exports_read_back_with_inria_names_and_match_animate(blender, avatar_bundles, head, tmp_path):
    from plyfile import PlyData
    from pointillist.avatar.animate import AvatarAnimator
    from pointillist.avatar.bundle import read_bundle
    from pointillist.avatar.ply import property_names

    avatar = read_bundle(avatar_bundles["zip"])
    animator = AvatarAnimator(avatar, head)
    names = animator.expr_names
    expression = {names[0]: 0.6, names[min(3, len(names) - 1)]: 0.4}
    neck = [math.radians(-8.0), math.radians(15.0), 0.0]  # ZXY Euler channels: (pitch, yaw, roll)
    got = blender.run(EXPORT, bundle=str(avatar_bundles["zip"]), out=str(tmp_path), expression=expression,
                      jaw_deg=20.0, neck=neck)
    assert got["frame_after"] == 2 and "select a splat object" in got["refused"]

    g = avatar.gaussians
    k = g.sh_rest.shape[1]

    def read(path):
        vertex = PlyData.read(str(path))["vertex"]
        assert [p.name for p in vertex.properties] == property_names(k, False)
        return vertex

    def column(vertex, *props):
        return np.stack([np.asarray(vertex[p]) for p in props], axis=1)

    rest = read(tmp_path / "rest.ply")
    np.testing.assert_allclose(column(rest, "x", "y", "z"), g.means, atol=1e-6)
    assert rb.quats_angle(column(rest, "rot_0", "rot_1", "rot_2", "rot_3"), g.quats).max() < 1e-5
    np.testing.assert_array_equal(np.asarray(rest["opacity"]), g.opacity_logits)
    np.testing.assert_array_equal(column(rest, "f_dc_0", "f_dc_1", "f_dc_2"), g.sh_dc)

    psi = np.array([expression.get(n, 0.0) for n in names], np.float32)
    pose = np.zeros((5, 3), np.float32)
    from scipy.spatial.transform import Rotation

    pose[1] = Rotation.from_euler("YXZ", [neck[1], neck[0], neck[2]]).as_rotvec()  # Blender 'ZXY' = Ry Rx Rz
    pose[2, 0] = math.radians(20.0)
    want = animator(psi, pose)
    posed = read(tmp_path / "posed.ply")
    means = column(posed, "x", "y", "z")
    assert np.abs(means - g.means).max() > 0.005  # the pose moved the splats
    np.testing.assert_allclose(means, want.means[0].numpy(), atol=1e-5)
    assert rb.quats_angle(column(posed, "rot_0", "rot_1", "rot_2", "rot_3"), want.quats[0].numpy()).max() < 1e-4
    np.testing.assert_array_equal(column(posed, "scale_0", "scale_1", "scale_2"), g.log_scales)

    seq = sorted((tmp_path / "seq").glob("*.ply"))
    assert [p.name for p in seq] == [f"{got['name']}_0001.ply", f"{got['name']}_0002.ply"]
    np.testing.assert_allclose(column(read(seq[1]), "x", "y", "z"), means, atol=1e-6)
    frame1 = column(read(seq[0]), "x", "y", "z")
    assert np.abs(frame1 - means).max() > 0.002  # the keyed jaw differs between the frames
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files
