"""File > Export of splat objects as Inria 3DGS PLYs: at rest, posed at the current frame, or one per frame.

Every splat viewer and research tool reads this layout. Files are written by the backend's own numpy PLY
writer (`pointillist.avatar.ply.write_gaussian_ply`: exact Inria property names and order, atomic), in the
bundle's head space (+Y up, face toward +Z), so a rest export round-trips to the imported Gaussians and a
posed one equals the backend's `animate()` at the same pose. Posing is the render engine's (positions from
the evaluated mesh, skinned rotations); SH coefficients stay in each Gaussian's canonical frame.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import bpy
import numpy as np
from bpy.props import EnumProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper

from . import rig_build
from .render_engine import is_splat_object, pose_object, read_static

_BLENDER_TO_HEAD_QUAT = rig_build.HEAD_TO_BLENDER_QUAT * np.array([1.0, -1.0, -1.0, -1.0])


def splat_object(context):
    """The splat mesh the artist means: the active object, or the point mesh of the active avatar rig."""
    from .importer import avatar_parts

    obj = context.active_object
    if obj is not None and obj.type == "ARMATURE":
        obj = avatar_parts(obj)[1]
    if obj is None or not is_splat_object(obj):
        raise RuntimeError("select a splat object (an imported avatar or 3DGS PLY) to export")
    return obj


def _gaussians(raw: dict[str, np.ndarray], means_blender: np.ndarray, quats_blender: np.ndarray,
               log_scale_offset: float):
    """Head-space `Gaussians` from Blender-axis means/rotations and the raw Inria attributes."""
    from pointillist.avatar.gaussians import Gaussians

    n = len(means_blender)
    k = (len([name for name in raw if name.startswith("f_rest_")])) // 3
    rest = (np.stack([raw[f"f_rest_{i}"] for i in range(3 * k)], axis=1).reshape(n, 3, k).transpose(0, 2, 1)
            if k else np.zeros((n, 0, 3), np.float32))
    return Gaussians(
        means=rig_build.from_blender(means_blender).astype(np.float32),
        log_scales=(np.stack([raw[f"scale_{c}"] for c in range(3)], axis=1) + log_scale_offset).astype(np.float32),
        quats=rig_build.quat_multiply(_BLENDER_TO_HEAD_QUAT, quats_blender).astype(np.float32),
        opacity_logits=np.asarray(raw["opacity"], np.float32),
        sh_dc=np.stack([raw[f"f_dc_{c}"] for c in range(3)], axis=1).astype(np.float32),
        sh_rest=np.ascontiguousarray(rest, dtype=np.float32))


def rest_gaussians(obj):
    """The object's canonical Gaussians (basis positions, rest rotations; no object transform)."""
    static = read_static(obj, 1.0)
    mesh = obj.original.data
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    return _gaussians(static.raw, co.reshape(-1, 3), static.rest_quats, 0.0)


def posed_gaussians(obj, depsgraph):
    """The Gaussians as rendered at the depsgraph's frame (world transform included)."""
    posed = pose_object(obj.evaluated_get(depsgraph), depsgraph, for_render=False)
    return _gaussians(posed.static.raw, posed.means, posed.quats, math.log(posed.scale))


def write_ply(path: str | os.PathLike, gaussians) -> Path:
    from pointillist.avatar.ply import write_gaussian_ply

    return write_gaussian_ply(path, gaussians)


def export_sequence(context, obj, folder: str | os.PathLike, start: int, end: int) -> list[Path]:
    """`<name>_<frame>.ply` per frame of start..end (inclusive); the scene returns to its frame after."""
    if end < start:
        raise RuntimeError(f"the frame range {start}..{end} is empty")
    scene = context.scene
    before = scene.frame_current
    folder = Path(folder)
    stem = bpy.path.clean_name(obj.name)
    written = []
    try:
        for frame in range(start, end + 1):
            scene.frame_set(frame)
            g = posed_gaussians(obj, context.evaluated_depsgraph_get())
            written.append(write_ply(folder / f"{stem}_{frame:04d}.ply", g))
    finally:
        scene.frame_set(before)
    return written


class EXPORT_OT_pointillist_ply(bpy.types.Operator, ExportHelper):
    """Export the selected splat object as an Inria 3DGS PLY (at rest or posed at the current frame)"""

    bl_idname = "export_scene.pointillist_ply"
    bl_label = "Export Gaussian Splat PLY"
    bl_options = {"REGISTER"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    pose: EnumProperty(name="Pose", items=(("POSED", "Current Frame", "The splats as posed and rendered now"),
                                            ("REST", "Rest", "The canonical splats, as in the avatar bundle")),
                       default="POSED")

    def execute(self, context):
        try:
            obj = splat_object(context)
            g = (posed_gaussians(obj, context.evaluated_depsgraph_get()) if self.pose == "POSED"
                 else rest_gaussians(obj))
            path = write_ply(self.filepath, g)
        except (RuntimeError, ValueError, OSError) as exc:
            self.report({"ERROR"}, f"PLY export failed: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote {g.num} splats to {path}")
        return {"FINISHED"}


class EXPORT_OT_pointillist_ply_sequence(bpy.types.Operator):
    """Export the selected splat object as one posed 3DGS PLY per frame of a range"""

    bl_idname = "export_scene.pointillist_ply_sequence"
    bl_label = "Export Gaussian Splat PLY Sequence"
    bl_options = {"REGISTER"}

    directory: StringProperty(name="Folder", subtype="DIR_PATH")
    frame_start: IntProperty(name="Start", default=-1, description="First frame (-1: the scene's start)")
    frame_end: IntProperty(name="End", default=-1, description="Last frame (-1: the scene's end)")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        scene = context.scene
        start = scene.frame_start if self.frame_start < 0 else self.frame_start
        end = scene.frame_end if self.frame_end < 0 else self.frame_end
        if not self.directory:
            self.report({"ERROR"}, "choose a folder for the PLY sequence")
            return {"CANCELLED"}
        try:
            written = export_sequence(context, splat_object(context), bpy.path.abspath(self.directory), start, end)
        except (RuntimeError, ValueError, OSError) as exc:
            self.report({"ERROR"}, f"PLY sequence export failed: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote {len(written)} PLY files to {self.directory}")
        return {"FINISHED"}


def menu_export(self, context) -> None:
    self.layout.operator(EXPORT_OT_pointillist_ply.bl_idname, text="Gaussian Splats (.ply)")
    self.layout.operator(EXPORT_OT_pointillist_ply_sequence.bl_idname, text="Gaussian Splats Sequence (.ply)")


_CLASSES = (EXPORT_OT_pointillist_ply, EXPORT_OT_pointillist_ply_sequence)


def register() -> None:
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
