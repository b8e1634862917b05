"""Import in real Blender (5.x and 4.2 LTS): what the artist gets from a bundle, a PLY, and from bad files."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.blender

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))

from addon import rig_build

IMPORT_AND_DUMP = """
import numpy as np, importlib
bpy.ops.avatar.import_bundle(filepath=ARGS["path"])
arm = bpy.context.view_layer.objects.active
imp = importlib.import_module(ADDON.__name__ + ".importer")
arm_obj, pts = imp.avatar_parts(arm)
me = pts.data
n = len(me.vertices)
co = np.empty(n * 3, np.float32); me.vertices.foreach_get("co", co)
attrs = {}
for a in me.attributes:
    if a.name.startswith(".") or a.name == "position":
        continue
    width = {"FLOAT": 1, "FLOAT_VECTOR": 3, "FLOAT_COLOR": 4, "QUATERNION": 4}[a.data_type]
    key = {"FLOAT": "value", "FLOAT_VECTOR": "vector", "FLOAT_COLOR": "color", "QUATERNION": "value"}[a.data_type]
    buf = np.empty(n * width, np.float32); a.data.foreach_get(key, buf); attrs[a.name] = buf.reshape(n, width)
weights = np.zeros((n, len(pts.vertex_groups)), np.float32)
names = [g.name for g in pts.vertex_groups]
for v in me.vertices:
    for g in v.groups:
        weights[v.index, g.group] = g.weight
keys = {}
for kb in me.shape_keys.key_blocks:
    buf = np.empty(n * 3, np.float32); kb.data.foreach_get("co", buf); keys[kb.name] = buf.reshape(n, 3)
np.savez(ARGS["out"], co=co.reshape(n, 3), weights=weights, **{"attr_" + k: v for k, v in attrs.items()},
         **{"key_" + k: v for k, v in keys.items()})
emit(kind=arm.type, bones={b.name: (b.parent.name if b.parent else None) for b in arm_obj.data.bones},
     bone_heads={b.name: list(b.head_local) for b in arm_obj.data.bones},
     bone_axes={b.name: [list(r) for r in b.matrix_local.to_3x3()] for b in arm_obj.data.bones},
     groups=names, modifiers=[m.type for m in pts.modifiers], key_names=[k.name for k in me.shape_keys.key_blocks],
     props={k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v) for k, v in arm_obj.items() if not k.startswith("_")},
     parent=pts.parent.name if pts.parent else None,
     heavy=[m for m in ("torch", "scipy", "PIL") if m in sys.modules])
"""


def expected_arrays(path):
    from pointillist.avatar.bundle import read_bundle
    from pointillist.avatar.point_rig import build_point_rig
    from pointillist.head.data import HeadModelData

    avatar = read_bundle(path)
    data = HeadModelData.load(rig_build.__file__.replace("addon/rig_build.py", "blender_assets/head_template.npz"))
    return avatar, rig_build.splat_arrays(avatar.gaussians), rig_build.rig_arrays(build_point_rig(avatar, data)), data


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_import_builds_the_rigged_avatar(blender, avatar_bundles, tmp_path, kind):
    out = tmp_path / "dump.npz"
    result = blender.run(IMPORT_AND_DUMP, path=str(avatar_bundles[kind]), out=str(out))
    avatar, splats, rig, data = expected_arrays(avatar_bundles[kind])
    got = np.load(out)
    assert result["kind"] == "ARMATURE"
    assert result["bones"] == {"root": None, "neck": "root", "jaw": "neck", "left_eye": "neck", "right_eye": "neck"}
    assert result["groups"] == list(rig_build.BONES)
    assert result["modifiers"] == ["ARMATURE", "NODES"]  # display after the rig, so splats follow it
    assert result["key_names"] == ["Basis", *data.expr_names]
    assert result["heavy"] == []  # the add-on never pulls in torch, scipy or Pillow
    assert result["parent"] is not None
    assert result["props"]["pointillist_model_id"] == data.model_id
    np.testing.assert_allclose(result["props"]["pointillist_identity_shape"], avatar.identity.shape, atol=1e-7)
    # head -> Blender axes: (x, y, z) -> (x, -z, y)
    np.testing.assert_array_equal(got["co"], splats.positions)
    np.testing.assert_allclose(got["co"][:, 1], -avatar.gaussians.means[:, 2])
    for j, bone in enumerate(rig_build.BONES):
        np.testing.assert_allclose(result["bone_heads"][bone], rig.joints[j], atol=1e-6)
        # bones along +Z with roll 0: local axes are head space (x, y up, z out of the face)
        np.testing.assert_allclose(np.array(result["bone_axes"][bone]), rig_build.HEAD_TO_BLENDER, atol=1e-6)
    np.testing.assert_allclose(got["weights"], rig.weights, atol=1e-6)
    for name in ("f_dc_0", "f_dc_2", "opacity", "scale_1", "rot_0", "rot_3"):
        np.testing.assert_array_equal(got[f"attr_{name}"][:, 0], splats.floats[name])
    assert not any(k.startswith("attr_f_rest_") for k in got.files)  # SH degree 0 bundle
    np.testing.assert_allclose(got["attr_splat_scale"], np.exp(avatar.gaussians.log_scales) * rig_build.DISPLAY_SIGMAS, rtol=1e-6)
    # rotation in Blender object space: R_axis * q
    q = np.stack([got[f"attr_rot_{i}"][:, 0] for i in range(4)], 1)
    np.testing.assert_allclose(q, rig_build.quat_multiply(rig_build.HEAD_TO_BLENDER_QUAT, avatar.gaussians.quats), atol=1e-6)
    for e, name in enumerate(data.expr_names[:5]):
        np.testing.assert_allclose(got[f"key_{name}"], splats.positions + rig.expr_offsets[e], atol=1e-6)


def test_plain_ply_imports_as_a_static_splat_object(blender, avatar_bundles):
    result = blender.run(
        """
        obj = ADDON.importer.import_avatar(bpy.context, ARGS["path"])
        emit(kind=obj.type, n=len(obj.data.vertices), keys=obj.data.shape_keys is not None,
             groups=len(obj.vertex_groups), modifiers=[m.type for m in obj.modifiers],
             armatures=len(bpy.data.armatures), attrs=sorted(a.name for a in obj.data.attributes if not a.name.startswith(".")))
        """,
        path=str(avatar_bundles["ply"]),
    )
    assert result["kind"] == "MESH" and result["n"] == avatar_bundles["count"]
    assert not result["keys"] and result["groups"] == 0 and result["armatures"] == 0
    assert result["modifiers"] == ["NODES"]
    assert {"f_dc_0", "opacity", "scale_0", "rot_0", "splat_color"} <= set(result["attrs"])


COUNT_DATA = """
def counts():
    return {c: len(getattr(bpy.data, c)) for c in ("objects", "meshes", "armatures", "node_groups", "materials",
                                                     "actions", "shape_keys", "collections")}
"""


def test_bad_input_raises_and_leaves_nothing(blender, avatar_bundles, tmp_path):
    from pointillist.avatar.bundle import read_bundle, write_bundle

    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(avatar_bundles["zip"].read_bytes()[:-200])
    not_gaussian = tmp_path / "points.ply"
    not_gaussian.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\n"
                             b"property float y\nproperty float z\nend_header\n" + np.zeros(6, "<f4").tobytes())
    foreign = read_bundle(avatar_bundles["folder"])
    foreign.identity.model_id = "somebody-elses-head"
    write_bundle(foreign, tmp_path / "foreign.zip")
    cases = {"missing": str(tmp_path / "nope.zip"), "corrupt": str(corrupt), "truncated": str(truncated),
             "not_gaussian": str(not_gaussian), "foreign_head": str(tmp_path / "foreign.zip"),
             "empty_folder": str(tmp_path)}
    result = blender.run(
        COUNT_DATA + textwrap.dedent("""
        bpy.ops.avatar.import_bundle(filepath=ARGS["good"])  # an avatar already in the scene must survive
        before = counts()
        errors = {}
        for name, path in ARGS["cases"].items():
            try:
                bpy.ops.avatar.import_bundle(filepath=path)
                errors[name] = None
            except RuntimeError as exc:
                errors[name] = str(exc)
        emit(errors=errors, before=before, after=counts())
        """),
        good=str(avatar_bundles["zip"]), cases=cases,
    )
    assert result["before"] == result["after"]
    errors = result["errors"]
    assert all(errors[name] for name in cases), errors
    assert "no such bundle" in errors["missing"]
    assert "unknown head model 'somebody-elses-head'" in errors["foreign_head"]
    assert "zip" in errors["corrupt"] and "zip" in errors["truncated"]
    assert "missing avatar.json" in errors["empty_folder"]


def test_failure_midway_removes_what_was_made(blender, avatar_bundles):
    """A failure after objects exist (simulated inside the build) removes every datablock made so far."""
    result = blender.run(
        COUNT_DATA + textwrap.dedent("""
        imp = ADDON.importer
        before = counts()
        original = imp._add_shape_keys
        def boom(*a, **k):
            raise ValueError("simulated failure")
        imp._add_shape_keys = boom
        try:
            imp.import_avatar(bpy.context, ARGS["path"])
            message = None
        except RuntimeError as exc:
            message = str(exc)
        imp._add_shape_keys = original
        after = counts()
        arm = imp.import_avatar(bpy.context, ARGS["path"])  # and the next import works
        emit(message=message, before=before, after=after, again=arm.type)
        """),
        path=str(avatar_bundles["zip"]),
    )
    assert "simulated failure" in result["message"]
    assert result["before"] == result["after"]
    assert result["again"] == "ARMATURE"


def test_import_is_undoable_operator(blender):
    result = blender.run(
        """
        op = bpy.types.AVATAR_OT_import_bundle
        emit(options=sorted(op.bl_options), menu=any(f.__name__ == "menu_import" for f in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize()))
        """
    )
    assert result["options"] == ["REGISTER", "UNDO"]
    assert result["menu"]
