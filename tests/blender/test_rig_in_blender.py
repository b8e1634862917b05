"""Blender's armature + shape keys reproduce `HeadModel` exactly (DESIGN §3: a fixed armature is exact).

Builds the head template in real Blender (the `bpy` wheel, in a subprocess so its libraries never share a
process with torch/numba): vertex groups from the LBS weights, shape keys from the expression basis, bones at
the regressed joints, then poses jaw, neck, eyes and root plus expressions and compares Blender's evaluated
mesh with the torch model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.blender

BLENDER_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, bpy
    data = np.load(sys.argv[1])
    verts, faces, weights = data["vertices"], data["faces"], data["weights"]
    expr_dirs, joints, parents = data["expr_dirs"], data["joints"], data["parents"]
    names = ["root", "neck", "jaw", "left_eye", "right_eye"]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    mesh = bpy.data.meshes.new("head")
    mesh.vertices.add(len(verts))
    mesh.vertices.foreach_set("co", verts.astype(np.float32).ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.update()
    obj = bpy.data.objects.new("head", mesh)
    bpy.context.scene.collection.objects.link(obj)
    arm_data = bpy.data.armatures.new("rig")
    arm = bpy.data.objects.new("rig", arm_data)
    bpy.context.scene.collection.objects.link(arm)
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    bones = []
    for j, name in enumerate(names):
        b = arm_data.edit_bones.new(name)
        b.head = joints[j]
        b.tail = joints[j] + np.array([0.0, 0.02, 0.0])  # along +Y, roll 0: bone frame = head space
        b.roll = 0.0
        if parents[j] >= 0:
            b.parent = bones[parents[j]]
        bones.append(b)
    bpy.ops.object.mode_set(mode="OBJECT")
    for j, name in enumerate(names):
        vg = obj.vertex_groups.new(name=name)
        for i in np.flatnonzero(weights[:, j] > 0):
            vg.add([int(i)], float(weights[i, j]), "REPLACE")
    obj.shape_key_add(name="Basis")
    for e in range(expr_dirs.shape[2]):
        key = obj.shape_key_add(name=f"e{e}")
        key.data.foreach_set("co", (verts + expr_dirs[:, :, e]).astype(np.float32).ravel())
        key.value = float(data["expression"][e])
    mod = obj.modifiers.new("rig", "ARMATURE")
    mod.object = arm
    mod.use_vertex_groups = True
    mod.use_deform_preserve_volume = False
    for j, name in enumerate(names):
        pb = arm.pose.bones[name]
        pb.rotation_mode = "AXIS_ANGLE"
        aa = data["pose"][j]
        angle = float(np.linalg.norm(aa))
        axis = aa / angle if angle > 0 else np.array([0.0, 1.0, 0.0])
        pb.rotation_axis_angle = (angle, *axis)
    bpy.context.view_layer.update()
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
    out = np.empty(len(verts) * 3, dtype=np.float32)
    evaluated.vertices.foreach_get("co", out)
    np.save(sys.argv[2], out.reshape(-1, 3))
    """
)


def test_blender_armature_and_shape_keys_match_head_model(head, tmp_path):
    pytest.importorskip("bpy")  # the module must exist in this environment; it runs in a subprocess
    g = torch.Generator().manual_seed(11)
    expression = torch.rand(head.num_expr, generator=g) * 0.8
    pose = torch.randn(5, 3, generator=g) * 0.25
    with torch.no_grad():
        expected = head(expression=expression[None], pose=pose[None]).vertices[0].numpy()
        joints = head.rest_joints(head.v_template[None])[0].numpy()
    data = head.data
    np.savez(
        tmp_path / "rig.npz", vertices=data.vertices, faces=data.faces, weights=data.lbs_weights,
        expr_dirs=data.expr_dirs, joints=joints, parents=np.array(head.joint_parents), expression=expression.numpy(), pose=pose.numpy(),
    )
    script = tmp_path / "build.py"
    script.write_text(BLENDER_SCRIPT)
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender")}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "rig.npz"), str(tmp_path / "out.npy")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    blender = np.load(tmp_path / "out.npy")
    assert np.abs(blender - data.vertices).max() > 0.005  # the pose really moved the mesh
    np.testing.assert_allclose(blender, expected, atol=2e-5)
