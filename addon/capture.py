"""Capture import: a Live Link Face / ARKit CSV or a FLAME parameter sequence as keyframes on the avatar.

Reading is `capture_formats` (no bpy); this module maps the take's seconds onto the scene's frames
(frame = start + t * scene fps, so a 60 fps capture plays at its real speed in a 24 fps scene) and writes
one F-curve per channel in bulk. Channels with no target on this avatar (a shape key it does not have,
a column that means nothing here) are listed in the report rather than silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import bpy
import numpy as np
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import anim_compat, capture_formats, face_motion
from .expressions import expression_keys, resolve_avatar


@dataclass
class CaptureReport:
    frames: int
    first_frame: float
    last_frame: float
    shape_curves: int = 0
    bone_curves: int = 0
    no_target: list[str] = field(default_factory=list)

    def message(self) -> str:
        text = (f"Capture: {self.frames} samples on frames {self.first_frame:g}-{self.last_frame:g}, "
                f"{self.shape_curves} shape-key and {self.bone_curves} bone curves")
        if self.no_target:
            shown = ", ".join(self.no_target[:12]) + (f" and {len(self.no_target) - 12} more" if len(self.no_target) > 12 else "")
            text += f"; no target for {len(self.no_target)}: {shown}"
        return text


def apply_take(scene, arm: bpy.types.Object, points: bpy.types.Object, take: capture_formats.CaptureTake,
               start_frame: float) -> CaptureReport:
    """Write a take as F-curves on the avatar's shape keys and bones; returns what went where."""
    fps = scene.render.fps / scene.render.fps_base
    frames = start_frame + take.times * fps
    report = CaptureReport(take.frames, float(frames[0]), float(frames[-1]), no_target=list(take.unused))
    key = points.data.shape_keys
    have = {k.name for k in expression_keys(points)}
    for name, values in take.shapes.items():
        if name not in have:
            report.no_target.append(name)
            continue
        fc = anim_compat.ensure_fcurve(key, face_motion.shape_path(name), 0, group="Expressions")
        anim_compat.set_keys(fc, frames, values)
        report.shape_curves += 1
    for (bone, index), values in take.bones.items():
        if bone not in arm.pose.bones:
            report.no_target.append(f"{bone} bone")
            continue
        arm.pose.bones[bone].rotation_mode = "ZXY"
        fc = anim_compat.ensure_fcurve(arm, face_motion.bone_path(bone), index, group=bone)
        anim_compat.set_keys(fc, frames, values)
        report.bone_curves += 1
    if take.root_location is not None:
        # a bone along +Z with roll 0 has head-space axes, so its local location is head space
        path = 'pose.bones["root"].location'
        for axis in range(3):
            fc = anim_compat.ensure_fcurve(arm, path, axis, group="root")
            anim_compat.set_keys(fc, frames, take.root_location[:, axis])
            report.bone_curves += 1
    return report


def import_capture(context, filepath: str, avatar: str = "", fps: float | None = None,
                   start_frame: float | None = None, head_degrees: bool = False,
                   extend_scene: bool = True) -> CaptureReport:
    """Read a capture file and key it onto the named (or active) avatar; RuntimeError on bad input."""
    arm, points = resolve_avatar(context, avatar)
    try:
        take = capture_formats.read_capture(filepath, fps, head_degrees)
    except capture_formats.CaptureFormatError as exc:
        raise RuntimeError(str(exc)) from None
    scene = context.scene
    report = apply_take(scene, arm, points, take, scene.frame_start if start_frame is None else start_frame)
    if extend_scene:
        scene.frame_end = max(scene.frame_end, int(np.ceil(report.last_frame)))
    return report


class AVATAR_OT_import_capture(bpy.types.Operator, ImportHelper):
    """Key a Live Link Face / ARKit CSV or a FLAME parameter sequence (.npz) onto the selected avatar"""

    bl_idname = "avatar.import_capture"
    bl_label = "Import Face Capture"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ""
    filter_glob: StringProperty(default="*.csv;*.npz", options={"HIDDEN"})
    avatar: StringProperty(name="Avatar", default="", description="Avatar object (default: the active object)")
    source_fps: FloatProperty(name="Capture FPS", default=0.0, min=0.0, max=1000.0,
                              description="Frame rate of the capture (0: 60 for Live Link Face, 30 for FLAME)")
    start_frame: IntProperty(name="Start Frame", default=-1, description="First frame (-1: the scene's start)")
    head_degrees: BoolProperty(name="Head Rotation in Degrees", default=False,
                               description="The CSV's HeadYaw/Pitch/Roll are degrees (Live Link Face writes radians)")

    def execute(self, context):
        try:
            report = import_capture(context, self.filepath, self.avatar, self.source_fps or None,
                                    None if self.start_frame < 0 else self.start_frame, self.head_degrees)
        except RuntimeError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"WARNING"} if report.no_target else {"INFO"}, report.message())
        return {"FINISHED"}


class VIEW3D_PT_avatar_capture(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Avatar"
    bl_label = "Face Capture"
    bl_parent_id = "VIEW3D_PT_avatar_expressions"

    def draw(self, context):
        self.layout.operator(AVATAR_OT_import_capture.bl_idname, icon="IMPORT")


CLASSES = (AVATAR_OT_import_capture, VIEW3D_PT_avatar_capture)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
