"""Expressions in real Blender: sliders move only what they should, keys and the blink-and-talk clip play
back, the gaze target turns the eyes, in 5.x (channelbags) and 4.2 LTS (action.fcurves)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.blender

SETUP = """
import numpy as np
arm = ADDON.importer.import_avatar(bpy.context, ARGS["path"])
_, pts = ADDON.importer.avatar_parts(arm)
key = pts.data.shape_keys
def positions():
    bpy.context.view_layer.update()
    ev = pts.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = ev.to_mesh()
    co = np.empty(len(mesh.vertices) * 3, np.float32); mesh.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    return co.reshape(-1, 3)
def weights(group):
    g = pts.vertex_groups[group].index
    w = np.zeros(len(pts.data.vertices))
    for v in pts.data.vertices:
        for e in v.groups:
            if e.group == g:
                w[v.index] = e.weight
    return w
"""


def test_sliders_and_bones_move_only_their_region(blender, avatar_bundles):
    result = blender.run(SETUP + """
rest = positions()
key.key_blocks["eyeBlinkLeft"].value = 1.0
blink = positions()
offset = np.empty(len(rest) * 3, np.float32); key.key_blocks["eyeBlinkLeft"].data.foreach_get("co", offset)
has_offset = np.abs(offset.reshape(-1, 3) - rest).max(1) > 0
ADDON.expressions.reset_pose(arm, pts)
arm.pose.bones["jaw"].rotation_euler[0] = 0.3
jaw = positions()
ADDON.expressions.reset_pose(arm, pts)
back = positions()
moved_blink = np.abs(blink - rest).max(1) > 1e-7
moved_jaw = np.abs(jaw - rest).max(1) > 1e-7
emit(blink_moved=int(moved_blink.sum()), blink_outside=int((moved_blink & ~has_offset).sum()),
     blink_side=float(rest[moved_blink, 0].min()) if moved_blink.any() else None,
     jaw_moved=int(moved_jaw.sum()), jaw_outside=int((moved_jaw & (weights("jaw") == 0)).sum()),
     jaw_down=float((jaw - rest)[moved_jaw, 2].mean()), reset=float(np.abs(back - rest).max()))
""", path=str(avatar_bundles["zip"]))
    assert result["blink_moved"] > 0 and result["blink_outside"] == 0
    assert result["blink_side"] > 0  # eyeBlinkLeft closes the eye at +X (the subject's own left)
    assert result["jaw_moved"] > 0 and result["jaw_outside"] == 0
    assert result["jaw_down"] < 0  # a positive jaw pitch opens the mouth: the chin goes down (-Z)
    assert result["reset"] == 0.0


def test_key_all_and_blink_and_talk_play_back(blender, avatar_bundles):
    result = blender.run(SETUP + """
anim = ADDON.anim_compat
scene = bpy.context.scene
scene.frame_set(10)
key.key_blocks["mouthSmileLeft"].value = 0.6
arm.pose.bones["neck"].rotation_euler[1] = 0.2
bpy.ops.avatar.key_all()
keyed = len(anim.fcurves(key)), len(anim.fcurves(arm))
bpy.ops.avatar.reset_expression()
scene.frame_set(10)
after_key = key.key_blocks["mouthSmileLeft"].value, arm.pose.bones["neck"].rotation_euler[1]
anim.remove_curves(key, "key_blocks"); anim.remove_curves(arm, "pose.bones")
scene.frame_start, scene.frame_end = 1, 10
bpy.ops.avatar.blink_and_talk()
fps = scene.render.fps / scene.render.fps_base
curves = sorted(fc.data_path + str(fc.array_index) for fc in anim.fcurves(key) + anim.fcurves(arm))
scene.frame_set(1)
start = positions()
blink_frame = 1 + 0.8 * fps  # the clip's first blink
scene.frame_set(int(blink_frame), subframe=blink_frame - int(blink_frame))
blink_value = key.key_blocks["eyeBlinkLeft"].value
mid = positions()
emit(keyed=keyed, after_key=after_key, curves=curves, frame_end=scene.frame_end, blink=blink_value,
     moved=float(np.abs(mid - start).max()), fps=fps, version=list(bpy.app.version))
""", path=str(avatar_bundles["zip"]))
    n_expr, n_bones = result["keyed"]
    assert n_expr == 42 and n_bones == 5 * 3  # every slider, every bone's 3 Euler channels
    assert result["after_key"][0] == pytest.approx(0.6) and result["after_key"][1] == pytest.approx(0.2)
    assert 'key_blocks["eyeBlinkLeft"].value0' in result["curves"]
    assert 'pose.bones["jaw"].rotation_euler0' in result["curves"]
    assert result["frame_end"] >= 1 + 3 * result["fps"] - 1
    assert result["blink"] == pytest.approx(1.0, abs=1e-3)
    assert result["moved"] > 0.002


def test_gaze_target_turns_the_eyes(blender, avatar_bundles):
    result = blender.run(SETUP + """
bpy.ops.avatar.add_gaze_target()
bpy.ops.avatar.add_gaze_target()  # a second click reuses the first target
empties = [o for o in bpy.data.objects if o.type == "EMPTY"]
target = empties[0]
target.location.x += 0.4  # toward the subject's own left
bpy.context.view_layer.update()
out = {}
for eye in ("left_eye", "right_eye"):
    pb = arm.pose.bones[eye]
    m = arm.matrix_world @ pb.matrix
    forward = np.array(m.col[2][:3]); forward /= np.linalg.norm(forward)
    to_target = np.array(target.matrix_world.translation - m.translation); to_target /= np.linalg.norm(to_target)
    out[eye] = float(forward @ to_target)
emit(empties=len(empties), alignment=out)
""", path=str(avatar_bundles["zip"]))
    assert result["empties"] == 1
    assert all(a > 0.9999 for a in result["alignment"].values()), result


def test_operators_need_an_avatar(blender):
    result = blender.run("""
errors = []
for op in (bpy.ops.avatar.key_all, bpy.ops.avatar.blink_and_talk, bpy.ops.avatar.reset_expression):
    try:
        op(avatar="nothing here")
        errors.append(None)
    except RuntimeError as exc:
        errors.append(str(exc))
emit(errors=errors, panels=[p for p in dir(bpy.types) if p.startswith("VIEW3D_PT_avatar")])
""")
    assert all(e and "select a rigged Pointillist avatar" in e for e in result["errors"]), result
    assert "VIEW3D_PT_avatar_expressions" in result["panels"] and "VIEW3D_PT_avatar_expr_mouth" in result["panels"]
