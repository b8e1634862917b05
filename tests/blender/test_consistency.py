"""Blender's evaluated splat positions equal the backend's `animate()` means (DESIGN §3 "Binding").

One test runs both sides: torch in this process, the imported avatar posed in the bpy subprocess, compared
within 1e-5 m after the head -> Blender axis change. Poses go in both as quaternions (any rotation) and as the
add-on's artist-facing Euler 'ZXY' channels from `FaceControls`, which checks the angle conventions too.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.blender

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from addon import rig_build

POSE_AND_READ = """
import numpy as np
from mathutils import Quaternion
arm = ADDON.importer.import_avatar(bpy.context, ARGS["path"])
_, pts = ADDON.importer.avatar_parts(arm)
results = {}
for case in ARGS["cases"]:
    ADDON.expressions.reset_pose(arm, pts)
    for name, value in case["expression"].items():
        pts.data.shape_keys.key_blocks[name].value = value
    for bone, spec in case["bones"].items():
        pb = arm.pose.bones[bone]
        if "axis_angle" in spec:
            aa = np.array(spec["axis_angle"]); angle = float(np.linalg.norm(aa))
            pb.rotation_mode = "QUATERNION"
            pb.rotation_quaternion = Quaternion((aa / angle).tolist() if angle > 0 else (1.0, 0.0, 0.0), angle)
        else:
            pb.rotation_mode = "ZXY"
            pb.rotation_euler = spec["euler"]
    bpy.context.view_layer.update()
    ev = pts.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = ev.to_mesh()
    co = np.empty(len(mesh.vertices) * 3, np.float32); mesh.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    results[case["name"]] = co.tolist()
emit(**results)
"""


def test_blender_matches_backend_animate(blender, avatar_bundles, head):
    from pointillist.avatar.animate import AvatarAnimator
    from pointillist.avatar.bundle import read_bundle
    from pointillist.avatar.controls import FaceControls

    avatar = read_bundle(avatar_bundles["zip"])
    animator = AvatarAnimator(avatar, head)
    names = animator.expr_names
    rng = np.random.default_rng(5)
    cases, expected = [], {}

    # 1: random expression and quaternion poses on every joint, root included
    expr = {n: float(v) for n, v in zip(names, rng.uniform(0, 0.8, len(names)))}
    pose = rng.normal(0, 0.25, (5, 3))
    cases.append({"name": "random", "expression": expr,
                  "bones": {b: {"axis_angle": pose[j].tolist()} for j, b in enumerate(rig_build.BONES)}})
    psi = np.array([expr[n] for n in names], np.float32)
    expected["random"] = animator(psi, pose.astype(np.float32)).means[0].numpy()

    # 2: artist controls -> Euler ZXY channels (pitch, yaw, roll), as the panel and capture import key them
    controls = FaceControls(expressions={"mouthSmileLeft": 0.7, "eyeBlinkRight": 1.0}, jaw_deg=18.0,
                            neck_yaw_deg=20.0, neck_pitch_deg=-10.0, neck_roll_deg=6.0, gaze_deg=(15.0, 8.0))
    e, p = controls.to_model(names)
    r = math.radians
    gaze = [-r(8.0), r(15.0), 0.0]
    cases.append({"name": "controls", "expression": controls.expressions, "bones": {
        "jaw": {"euler": [r(18.0), 0.0, 0.0]}, "neck": {"euler": [r(-10.0), r(20.0), r(6.0)]},
        "left_eye": {"euler": gaze}, "right_eye": {"euler": gaze}}})
    expected["controls"] = animator(e, p).means[0].numpy()

    got = blender.run(POSE_AND_READ, path=str(avatar_bundles["zip"]), cases=cases)
    rest = rig_build.to_blender(avatar.gaussians.means)
    for name, means in expected.items():
        blender_pos = np.asarray(got[name], np.float32).reshape(-1, 3)
        want = rig_build.to_blender(means)
        assert np.abs(want - rest).max() > 0.005, name  # the pose really moved the splats
        np.testing.assert_allclose(blender_pos, want, atol=1e-5, err_msg=name)


FLAME_POSE_AND_READ = """
import numpy as np
from mathutils import Quaternion
bpy.context.preferences.addons[ADDON.__name__].preferences.head_model = ARGS["head"]
arm = ADDON.importer.import_avatar(bpy.context, ARGS["path"])
_, pts = ADDON.importer.avatar_parts(arm)
blocks = pts.data.shape_keys.key_blocks
for name, value in ARGS["expression"].items():
    blocks[name].value = value
for bone, aa in ARGS["pose"].items():
    aa = np.array(aa); angle = float(np.linalg.norm(aa))
    pb = arm.pose.bones[bone]
    if bone == "jaw":  # correctives must follow any rotation mode the artist keys in
        pb.rotation_mode = "ZXY"
        pb.rotation_euler = Quaternion((aa / angle).tolist(), angle).to_euler("ZXY")
    else:
        pb.rotation_mode = "QUATERNION"
        pb.rotation_quaternion = Quaternion((aa / angle).tolist(), angle)
bpy.context.view_layer.update()
ev = pts.evaluated_get(bpy.context.evaluated_depsgraph_get())
mesh = ev.to_mesh()
co = np.empty(len(mesh.vertices) * 3, np.float32); mesh.vertices.foreach_get("co", co)
ev.to_mesh_clear()
correctives = [k.name for k in blocks if k.name.startswith("pose_")]
emit(co=co.tolist(), correctives=correctives, sliders=[k.name for k in ADDON.expressions.expression_keys(pts)])
"""


@pytest.fixture(scope="module")
def flame_avatar(tmp_path_factory):
    """A bound avatar on a synthetic FLAME head (random pose correctives), its bundle and the converted .npz."""
    from pointillist.avatar.bundle import write_bundle
    from pointillist.head.flame import convert_flame
    from pointillist.head.model import HeadModel
    from tests.avatar.synthetic import make_bound_avatar
    from tests.head.flame_fixture import flame_arrays, write_chumpy_pickle

    folder = tmp_path_factory.mktemp("flame")
    data = convert_flame(write_chumpy_pickle(folder / "generic_model.pkl", flame_arrays(seed=5)), n_shape=20, n_expr=10)
    data.save(folder / "flame.npz")
    head = HeadModel(data)
    avatar = make_bound_avatar(head, n=300)
    write_bundle(avatar, folder / "flame.zip")
    return avatar, head, folder / "flame.npz", folder / "flame.zip"


def test_flame_pose_correctives_are_driven_by_the_bones(blender, flame_avatar):
    """FLAME's 36 pose correctives become shape keys driven by bone rotations: Blender matches `animate()`."""
    from pointillist.avatar.animate import AvatarAnimator

    avatar, head, npz, bundle = flame_avatar
    animator = AvatarAnimator(avatar, head)
    rng = np.random.default_rng(9)
    expr = {n: float(v) for n, v in zip(animator.expr_names, rng.normal(0, 1.0, len(animator.expr_names)))}
    pose = rng.normal(0, 0.3, (5, 3)).astype(np.float32)
    psi = np.array([expr[n] for n in animator.expr_names], np.float32)
    want = rig_build.to_blender(animator(psi, pose).means[0].numpy())
    animator.pose_offsets = None
    without = rig_build.to_blender(animator(psi, pose).means[0].numpy())
    assert np.abs(want - without).max() > 1e-4  # the correctives matter at this pose

    got = blender.run(FLAME_POSE_AND_READ, path=str(bundle), head=str(npz), expression=expr,
                      pose={b: pose[j].tolist() for j, b in enumerate(rig_build.BONES)})
    assert len(got["correctives"]) == 36 and not set(got["correctives"]) & set(got["sliders"])
    np.testing.assert_allclose(np.asarray(got["co"], np.float32).reshape(-1, 3), want, atol=1e-5)


def test_corrective_expressions_are_rotation_minus_identity():
    """The driver expressions (Blender's simple-expression syntax) are R - I of the bone's quaternion."""
    from scipy.spatial.transform import Rotation

    for q in np.random.default_rng(2).normal(size=(5, 4)):
        w, x, y, z = q / np.linalg.norm(q)
        R = Rotation.from_quat([x, y, z, w]).as_matrix()
        for c in rig_build.correctives()[:9]:
            value = eval(c.expression, {}, {"w": w, "x": x, "y": y, "z": z})  # noqa: S307 - our own constants
            assert value == pytest.approx(R[c.row, c.col] - (c.row == c.col), abs=1e-12)
    order = [(c.bone, c.row, c.col) for c in rig_build.correctives()]
    assert order[0] == ("neck", 0, 0) and order[9] == ("jaw", 0, 0) and order[-1] == ("right_eye", 2, 2)
