"""Export the rigged point mesh through Blender's own exporters: FBX, USD and glTF (File > Export).

Game engines and DCC tools take the rig (armature, skin weights, expression shape keys, animation) from these
files; the splats themselves travel best as PLY or the backend's KHR_gaussian_splatting GLB. What survives:

- **FBX**: armature, vertex-group skinning, shape keys and baked animation (bones and shape-key values, one
  key per frame). FBX has no per-point attributes, so the Gaussian attributes are dropped.
- **USD**: all of the above as UsdSkel (skeleton, skin, blendshapes, animation) plus every Gaussian
  attribute (f_dc_*, f_rest_*, opacity, scale_*, rot_*, splat_*) as a primvar on the points.
- **glTF rig** (.glb): loose points as a POINTS primitive (`use_mesh_vertices`), skin, morph targets and
  sampled animation; only `_`-prefixed attributes survive glTF, so the Gaussian attributes are dropped.

The Geometry Nodes display modifier turns each point into a sphere; no exporter may apply it (FBX and glTF
would write thousands of spheres, USD would give up skinning the mesh). It is switched off for the export
and the scene is put back as it was afterwards: modifier switches, selection, active object, frame, even
when the exporter fails. Every file is written under a temporary name beside the target and moved into
place, so a failed export never leaves half a file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import bpy
from bpy.props import BoolProperty, StringProperty
from bpy_extras.io_utils import ExportHelper

from . import splat_display
from .importer import avatar_parts


def _fbx(filepath: str, animation: bool) -> None:
    bpy.ops.export_scene.fbx(
        filepath=filepath, use_selection=True, object_types={"ARMATURE", "MESH"},
        use_mesh_modifiers=False,  # applying modifiers would drop the shape keys (and bake the display)
        use_armature_deform_only=False, add_leaf_bones=False, armature_nodetype="NULL",
        bake_anim=animation, bake_anim_use_all_bones=True, bake_anim_use_nla_strips=False,
        bake_anim_use_all_actions=False, bake_anim_force_startend_keying=True,
        bake_anim_step=1.0, bake_anim_simplify_factor=0.0,  # one exact key per frame, nothing simplified away
        use_custom_props=True, path_mode="AUTO",
    )


def _usd(filepath: str, animation: bool) -> None:
    bpy.ops.wm.usd_export(
        filepath=filepath, selected_objects_only=True, export_animation=animation,
        export_armatures=True, export_shapekeys=True, only_deform_bones=False,
        export_meshes=True, export_materials=False, export_uvmaps=False, export_normals=False,
        export_custom_properties=True, evaluation_mode="RENDER",
    )


def _gltf(filepath: str, animation: bool) -> None:
    bpy.ops.export_scene.gltf(
        filepath=filepath, export_format="GLB", use_selection=True,
        use_mesh_vertices=True,  # loose points become a POINTS primitive instead of being dropped
        export_apply=False, export_skins=True, export_morph=True, export_morph_normal=False,
        export_def_bones=False, export_animations=animation, export_animation_mode="ACTIVE_ACTIONS",  # bones + shape keys: one clip
        export_force_sampling=True, export_optimize_animation_size=False, export_materials="NONE",
        export_attributes=True, export_normals=False, export_texcoords=False,
    )


#: format -> (file extension, exporter). USD accepts .usd/.usda/.usdc/.usdz; the first is the default.
EXPORTERS: dict[str, tuple[tuple[str, ...], Callable[[str, bool], None]]] = {
    "fbx": ((".fbx",), _fbx),
    "usd": ((".usdc", ".usd", ".usda", ".usdz"), _usd),
    "gltf": ((".glb",), _gltf),
}


def _display_modifiers(points: bpy.types.Object) -> list[bpy.types.Modifier]:
    return [m for m in points.modifiers
            if m.type == "NODES" and m.node_group is not None and m.node_group.name.startswith(splat_display.GROUP_NAME)]


def export_rig(context, obj: bpy.types.Object, fmt: str, filepath: str, animation: bool = True) -> Path:
    """Export the avatar `obj` belongs to (armature + point mesh) as `fmt`; returns the file written.

    Raises RuntimeError with a readable message (no avatar, wrong extension, exporter failure); the scene
    is left exactly as it was in every case.
    """
    if fmt not in EXPORTERS:
        raise RuntimeError(f"unknown rig export format {fmt!r}; choose one of {', '.join(EXPORTERS)}")
    arm, points = avatar_parts(obj)
    if arm is None or points is None:
        raise RuntimeError("select a rigged Pointillist avatar (import a bundle first)")
    extensions, exporter = EXPORTERS[fmt]
    target = Path(bpy.path.abspath(filepath))
    if target.suffix.lower() not in extensions:
        raise RuntimeError(f"{target.name}: {fmt.upper()} files must end in {' or '.join(extensions)}")
    if target.is_dir():
        raise RuntimeError(f"{target}: is a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}{target.suffix}")

    view_layer = context.view_layer
    selected = [o for o in view_layer.objects if o.select_get()]
    active = view_layer.objects.active
    frame = context.scene.frame_current
    switches = [(m, m.show_viewport, m.show_render) for m in _display_modifiers(points)]
    if context.object is not None and context.object.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    try:
        for mod, _, _ in switches:
            mod.show_viewport = mod.show_render = False
        for other in selected:
            other.select_set(False)
        arm.select_set(True)
        points.select_set(True)
        view_layer.objects.active = arm
        exporter(str(tmp), animation)
        if not tmp.is_file():
            raise RuntimeError(f"Blender's {fmt.upper()} exporter wrote no file")
        os.replace(tmp, target)
    except RuntimeError as exc:
        raise RuntimeError(f"{fmt.upper()} export failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        for mod, viewport, render in switches:
            mod.show_viewport, mod.show_render = viewport, render
        for other in view_layer.objects:
            other.select_set(other in selected)
        view_layer.objects.active = active
        if context.scene.frame_current != frame:
            context.scene.frame_set(frame)
    return target


class _ExportRig(ExportHelper):
    """Shared operator body: the format is fixed per class, the file comes from the file browser."""

    format = ""

    animation: BoolProperty(name="Animation", default=True,
                            description="Include the keyed animation (bones and expression shape keys)")
    avatar: StringProperty(name="Avatar", default="", description="Object of the avatar (default: the active object)")

    def execute(self, context):
        obj = bpy.data.objects.get(self.avatar) if self.avatar else context.active_object
        try:
            path = export_rig(context, obj, self.format, self.filepath, self.animation)
        except RuntimeError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {path.name}")
        return {"FINISHED"}


class AVATAR_OT_export_fbx(bpy.types.Operator, _ExportRig):
    """Export the selected avatar's rig, skin, shape keys and animation as FBX (no Gaussian attributes)"""

    bl_idname = "avatar.export_fbx"
    bl_label = "Export Pointillist Avatar (FBX)"
    format = "fbx"
    filename_ext = ".fbx"
    filter_glob: StringProperty(default="*.fbx", options={"HIDDEN"})


class AVATAR_OT_export_usd(bpy.types.Operator, _ExportRig):
    """Export the selected avatar as USD: rig, skin, shape keys, animation and the Gaussian attributes"""

    bl_idname = "avatar.export_usd"
    bl_label = "Export Pointillist Avatar (USD)"
    format = "usd"
    filename_ext = ".usdc"
    filter_glob: StringProperty(default="*.usd;*.usdc;*.usda;*.usdz", options={"HIDDEN"})

    def check(self, context):  # keep whichever USD flavour the artist typed
        return False if Path(self.filepath).suffix.lower() in EXPORTERS["usd"][0] else super().check(context)


class AVATAR_OT_export_gltf_rig(bpy.types.Operator, _ExportRig):
    """Export the selected avatar's points, skin, morph targets and animation as glTF (no Gaussian attributes)"""

    bl_idname = "avatar.export_gltf_rig"
    bl_label = "Export Pointillist Avatar (glTF rig)"
    format = "gltf"
    filename_ext = ".glb"
    filter_glob: StringProperty(default="*.glb", options={"HIDDEN"})


CLASSES = (AVATAR_OT_export_fbx, AVATAR_OT_export_usd, AVATAR_OT_export_gltf_rig)


def menu_export(self, context) -> None:
    self.layout.operator(AVATAR_OT_export_fbx.bl_idname, text="Pointillist Avatar (FBX)")
    self.layout.operator(AVATAR_OT_export_usd.bl_idname, text="Pointillist Avatar (USD)")
    self.layout.operator(AVATAR_OT_export_gltf_rig.bl_idname, text="Pointillist Avatar (glTF rig)")


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
