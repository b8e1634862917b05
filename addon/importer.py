"""Import an avatar bundle (folder or .zip) or a plain 3DGS PLY as a rigged (or static) splat object.

`import_avatar(context, filepath, name=None)` is the one entry point: Create Avatar calls it after the
download, `avatar.import_bundle` and File > Import call it from the UI. It builds a vertices-only mesh (one
vertex per Gaussian, Inria-named attributes in Blender axes), an armature root -> neck -> jaw, left_eye,
right_eye at the identity's joints, vertex groups and shape keys from the shared per-point rig, and the
Geometry Nodes splat display. Everything is read and checked before any Blender data is made, and anything
made is removed again if a later step fails, so a bad file leaves the scene and bpy.data as they were.
"""

from __future__ import annotations

import bmesh
import bpy
import numpy as np
from bpy.props import StringProperty
from bpy_extras.io_utils import ImportHelper

from . import avatar_source, rig_build, splat_display

#: Custom properties the importer writes (read by the Expressions panel, capture import and exporters).
PROP_AVATAR = "pointillist_avatar"  # on the armature and the point object: the bundle path
PROP_MODEL = "pointillist_model_id"
PROP_SHAPE = "pointillist_identity_shape"
PROP_POINTS = "pointillist_points"
PROP_META = "pointillist_meta"
PROP_WARNINGS = "pointillist_warnings"


class _Created:
    """Datablocks made by one import, removed together if the import fails."""

    def __init__(self) -> None:
        self.ids: list = []

    def add(self, datablock):
        self.ids.append(datablock)
        return datablock

    def remove_all(self) -> None:
        alive = [d for d in self.ids if d is not None and d.name is not None]
        keys = []
        for d in alive:
            if isinstance(d, bpy.types.Mesh) and d.shape_keys is not None:
                keys.append(d.shape_keys)
        bpy.data.batch_remove(alive + keys)


def _set_attribute(mesh: bpy.types.Mesh, name: str, kind: str, values: np.ndarray) -> None:
    attr = mesh.attributes.new(name, kind, "POINT")
    key = {"FLOAT": "value", "FLOAT_VECTOR": "vector", "FLOAT_COLOR": "color", "QUATERNION": "value"}[kind]
    attr.data.foreach_set(key, np.ascontiguousarray(values, dtype=np.float32).ravel())


def _build_point_mesh(name: str, splats: rig_build.SplatArrays, created: _Created) -> bpy.types.Mesh:
    mesh = created.add(bpy.data.meshes.new(name))
    mesh.vertices.add(splats.count)
    mesh.vertices.foreach_set("co", np.ascontiguousarray(splats.positions, dtype=np.float32).ravel())
    return mesh


def _add_point_attributes(mesh: bpy.types.Mesh, splats: rig_build.SplatArrays) -> None:
    for attr_name, values in splats.floats.items():
        _set_attribute(mesh, attr_name, "FLOAT", values)
    _set_attribute(mesh, splat_display.COLOR_ATTR, "FLOAT_COLOR", splats.display_color)
    _set_attribute(mesh, splat_display.SCALE_ATTR, "FLOAT_VECTOR", splats.display_scale)
    _set_attribute(mesh, splat_display.ROTATION_ATTR, "QUATERNION", splats.display_rotation)
    mesh.update()


def _write_vertex_groups(obj: bpy.types.Object, weights: np.ndarray) -> None:
    """Vertex groups named after the bones, filled through a bmesh deform layer (vg.add is ~70 ms per group)."""
    for bone in rig_build.BONES:
        obj.vertex_groups.new(name=bone)
    bm = bmesh.new()
    try:
        bm.from_mesh(obj.data)
        layer = bm.verts.layers.deform.verify()
        bm.verts.ensure_lookup_table()
        verts = bm.verts
        rows, cols = np.nonzero(weights > 0.0)
        values = weights[rows, cols].tolist()
        for i, j, w in zip(rows.tolist(), cols.tolist(), values):
            verts[i][layer][j] = w
        bm.to_mesh(obj.data)
    finally:
        bm.free()


def _build_armature(context, name: str, joints: np.ndarray, created: _Created) -> bpy.types.Object:
    arm_data = created.add(bpy.data.armatures.new(f"{name}_rig"))
    arm_obj = created.add(bpy.data.objects.new(f"{name}_rig", arm_data))
    _collection(context).objects.link(arm_obj)
    view_layer = context.view_layer
    view_layer.objects.active = arm_obj
    with context.temp_override(active_object=arm_obj, object=arm_obj):
        bpy.ops.object.mode_set(mode="EDIT")
        try:
            bones = []
            for j, bone_name in enumerate(rig_build.BONES):
                bone = arm_data.edit_bones.new(bone_name)
                head = [float(v) for v in joints[j]]
                bone.head = head
                bone.tail = (head[0], head[1], head[2] + rig_build.BONE_LENGTHS[bone_name])  # +Z, roll 0: head-space axes
                bone.roll = 0.0
                if rig_build.BONE_PARENTS[j] >= 0:
                    bone.parent = bones[rig_build.BONE_PARENTS[j]]
                bones.append(bone)
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")
    for pose_bone in arm_obj.pose.bones:
        pose_bone.rotation_mode = "ZXY"  # rotation_euler = (pitch, yaw, roll): R = Ry Rx Rz, as face_angles
    arm_data.display_type = "STICK"
    arm_obj.show_in_front = True
    return arm_obj


def _add_shape_keys(obj: bpy.types.Object, rest: np.ndarray, rig: rig_build.RigArrays) -> None:
    obj.shape_key_add(name="Basis", from_mix=False)
    for e, expr in enumerate(rig.expr_names):
        key = obj.shape_key_add(name=expr, from_mix=False)
        key.data.foreach_set("co", rig.shape_key_positions(rest, e))
        key.slider_min, key.slider_max = rig_build.shape_key_range(expr)
        key.value = 0.0


def _add_pose_correctives(obj: bpy.types.Object, arm: bpy.types.Object, rest: np.ndarray,
                          rig: rig_build.RigArrays) -> None:
    """FLAME pose correctives as shape keys driven by the bones' local rotations (DESIGN §3 "Rig").

    They sit before the Armature modifier like the expressions, so Blender adds them at rest and skins the
    sum, exactly as `animate()` does. Drivers read each bone's rotation as a quaternion in local space, so
    they follow whatever rotation mode the artist keys in.
    """
    for c in rig_build.correctives():
        key = obj.shape_key_add(name=c.name, from_mix=False)
        key.data.foreach_set("co", np.ascontiguousarray(rest + rig.pose_offsets[c.index], dtype=np.float32).ravel())
        key.slider_min, key.slider_max = -2.0, 2.0  # elements of R - I lie in [-2, 2]
        driver = key.driver_add("value").driver
        driver.type = "SCRIPTED"
        for channel in "wxyz":
            var = driver.variables.new()
            var.name, var.type = channel, "TRANSFORMS"
            target = var.targets[0]
            target.id = arm
            target.bone_target = c.bone
            target.transform_type = f"ROT_{channel.upper()}"
            target.rotation_mode = "QUATERNION"
            target.transform_space = "LOCAL_SPACE"
        driver.expression = c.expression


def _collection(context) -> bpy.types.Collection:
    return getattr(context, "collection", None) or context.scene.collection


def import_avatar(context, filepath: str, name: str | None = None) -> bpy.types.Object:
    """Import a bundle folder / .zip (rigged: returns the armature) or a .ply (static: returns the point object).

    Raises RuntimeError with a readable message on bad input, leaving no new objects or data behind.
    """
    from .preferences import get_prefs, head_model_file

    head_models = (head_model_file(get_prefs(context)),)
    loaded = avatar_source.load_avatar(filepath, name, head_models)  # all reading and checking happens here
    if context.object is not None and context.object.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    created = _Created()
    had_group = bpy.data.node_groups.get(splat_display.GROUP_NAME) is not None
    had_material = bpy.data.materials.get(splat_display.MATERIAL_NAME) is not None
    try:
        result = _build(context, loaded, created)
    except Exception as exc:
        created.remove_all()
        if not had_group and (group := bpy.data.node_groups.get(splat_display.GROUP_NAME)) is not None:
            bpy.data.node_groups.remove(group)
        if not had_material and (mat := bpy.data.materials.get(splat_display.MATERIAL_NAME)) is not None:
            bpy.data.materials.remove(mat)
        raise RuntimeError(f"could not build the avatar from {loaded.source}: {exc}") from exc
    return result


def _build(context, loaded: avatar_source.LoadedAvatar, created: _Created) -> bpy.types.Object:
    splats, rig = loaded.splats, loaded.rig
    mesh = _build_point_mesh(loaded.name, splats, created)
    obj = created.add(bpy.data.objects.new(loaded.name, mesh))
    _collection(context).objects.link(obj)
    if rig is not None:
        _write_vertex_groups(obj, rig.weights)
    _add_point_attributes(mesh, splats)
    obj[PROP_AVATAR] = loaded.source
    obj[PROP_POINTS] = splats.count
    if rig is None:
        splat_display.add_display_modifier(obj)
        _select_only(context, obj)
        return obj
    _add_shape_keys(obj, splats.positions, rig)
    arm = _build_armature(context, loaded.name, rig.joints, created)
    if rig.pose_offsets is not None:
        _add_pose_correctives(obj, arm, splats.positions, rig)
    obj.parent = arm
    mod = obj.modifiers.new("Armature", "ARMATURE")
    mod.object = arm
    mod.use_vertex_groups = True
    mod.use_bone_envelopes = False
    mod.use_deform_preserve_volume = False
    splat_display.add_display_modifier(obj)
    for target in (arm, obj):
        target[PROP_AVATAR] = loaded.source
        target[PROP_MODEL] = loaded.model_id or ""
        target[PROP_SHAPE] = loaded.identity_shape or []
    arm[PROP_POINTS] = splats.count
    if loaded.meta:
        arm[PROP_META] = {k: v for k, v in loaded.meta.items() if isinstance(v, (int, float, str))}
        warnings = loaded.meta.get("warnings")
        if isinstance(warnings, list) and warnings:  # how `create` made it, when not as asked (a fallback)
            arm[PROP_WARNINGS] = "\n".join(str(w) for w in warnings)  # ID properties hold no string lists
    _select_only(context, arm)
    return arm


def _select_only(context, obj: bpy.types.Object) -> None:
    for other in context.view_layer.objects:
        if other.select_get():
            other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj


def avatar_parts(obj: bpy.types.Object | None) -> tuple[bpy.types.Object | None, bpy.types.Object | None]:
    """(armature, point object) of the avatar `obj` belongs to (either may be None)."""
    if obj is None:
        return None, None
    if obj.type == "ARMATURE":
        points = next((c for c in obj.children if c.type == "MESH" and PROP_AVATAR in c), None)
        return obj, points
    if obj.type == "MESH" and PROP_AVATAR in obj:
        parent = obj.parent if obj.parent is not None and obj.parent.type == "ARMATURE" else None
        return parent, obj
    return None, None


class AVATAR_OT_import_bundle(bpy.types.Operator, ImportHelper):
    """Import a Pointillist avatar bundle (folder or .zip) or a 3DGS .ply as a rigged splat avatar"""

    bl_idname = "avatar.import_bundle"
    bl_label = "Import Pointillist Avatar"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ""
    filter_glob: StringProperty(default="*.zip;*.ply;*.json", options={"HIDDEN"})
    filepath: StringProperty(name="File Path", subtype="FILE_PATH")

    def execute(self, context):
        path = self.filepath
        path = path.removesuffix("avatar.json")  # picking a bundle folder's manifest imports the folder
        try:
            obj = import_avatar(context, path)
        except RuntimeError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Imported {obj.name}")
        return {"FINISHED"}


def menu_import(self, context) -> None:
    self.layout.operator(AVATAR_OT_import_bundle.bl_idname, text="Pointillist Avatar (.zip, .ply, bundle)")


def register() -> None:
    bpy.utils.register_class(AVATAR_OT_import_bundle)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    bpy.utils.unregister_class(AVATAR_OT_import_bundle)
