"""Capture import in real Blender: a Live Link Face CSV and a FLAME sequence become keyframes on the avatar,
at the scene's frame rate, with the curves that had no target reported."""

from __future__ import annotations

import numpy as np
import pytest

from tests.addon.test_capture_formats import write_flame_npz, write_llf_csv

pytestmark = pytest.mark.blender

SCRIPT = """
import numpy as np
arm = ADDON.importer.import_avatar(bpy.context, ARGS["avatar"])
_, pts = ADDON.importer.avatar_parts(arm)
scene = bpy.context.scene
scene.render.fps, scene.render.fps_base = 24, 1.0
scene.frame_start, scene.frame_end = 1, 2
report = ADDON.capture.import_capture(bpy.context, ARGS["csv"], fps=60.0, start_frame=1)
anim = ADDON.anim_compat
key = pts.data.shape_keys
smile = anim.find_fcurve(key, 'key_blocks["mouthSmileLeft"].value')
jaw = anim.find_fcurve(arm, 'pose.bones["jaw"].rotation_euler', 0)
yaw = anim.find_fcurve(arm, 'pose.bones["neck"].rotation_euler', 1)
frames = [kp.co[0] for kp in smile.keyframe_points]
scene.frame_set(int(frames[2]), subframe=frames[2] - int(frames[2]))
values = {"smile": key.key_blocks["mouthSmileLeft"].value, "jaw": arm.pose.bones["jaw"].rotation_euler[0],
          "yaw": arm.pose.bones["neck"].rotation_euler[1]}
csv_report = dict(frames=report.frames, shape=report.shape_curves, bone=report.bone_curves, missing=report.no_target,
                  message=report.message(), keyframes=frames, values=values, frame_end=scene.frame_end)
# the operator path, FLAME sequence (this procedural head has no Exp### keys: they are reported, bones still move)
bpy.ops.avatar.import_capture(filepath=ARGS["npz"], source_fps=25.0, start_frame=100)
flame = ADDON.capture.import_capture(bpy.context, ARGS["npz"], fps=25.0, start_frame=100)
root_x = anim.find_fcurve(arm, 'pose.bones["root"].location', 0)
emit(csv=csv_report, flame=dict(shape=flame.shape_curves, bone=flame.bone_curves, missing=flame.no_target,
     first=flame.first_frame, last=flame.last_frame, root=[tuple(k.co) for k in root_x.keyframe_points]))
"""


def test_capture_files_become_keyframes(blender, avatar_bundles, tmp_path):
    values = write_llf_csv(tmp_path / "take.csv", frames=5)
    arrays = write_flame_npz(tmp_path / "seq.npz", frames=6)
    result = blender.run(SCRIPT, avatar=str(avatar_bundles["zip"]), csv=str(tmp_path / "take.csv"),
                         npz=str(tmp_path / "seq.npz"))
    csv = result["csv"]
    assert csv["frames"] == 5
    # 52 ARKit curves: jawOpen and 8 eyeLook* drive bones; of the other 43 this head has all but tongueOut
    assert csv["shape"] == 42
    assert csv["bone"] == 3 + 1 + 4  # neck yaw/pitch/roll, jaw, two eyes x (yaw, pitch)
    assert [m for m in csv["missing"] if "Eye" not in m] == ["tongueOut"]
    assert any(m.startswith("LeftEyeYaw") for m in csv["missing"])
    assert "no target for" in csv["message"]
    # 60 fps capture in a 24 fps scene: real time kept (sub-frame timecodes included)
    t = np.array([(17 + f + (f * 37 % 1000) / 1000) / 60 for f in range(5)])
    np.testing.assert_allclose(csv["keyframes"], 1 + (t - t[0]) * 24, atol=1e-4)
    assert csv["frame_end"] == int(np.ceil(csv["keyframes"][-1]))
    assert csv["values"]["smile"] == pytest.approx(round(values["MouthSmileLeft"][2], 6), abs=1e-5)
    assert csv["values"]["jaw"] == pytest.approx(np.radians(25.0) * round(values["JawOpen"][2], 6), abs=1e-5)
    assert csv["values"]["yaw"] == pytest.approx(round(values["HeadYaw"][2], 6), abs=1e-5)
    flame = result["flame"]
    assert flame["shape"] == 0 and sum(m.startswith("Exp") for m in flame["missing"]) == 10
    assert flame["bone"] == 5 * 3 + 3  # five bones' Euler channels + root location
    assert flame["first"] == 100 and flame["last"] == pytest.approx(100 + 5 / 25 * 24)
    np.testing.assert_allclose([v for _, v in flame["root"]], arrays["translation"][:, 0], atol=1e-6)
