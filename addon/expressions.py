"""Expressions panel and operators: sliders on the shape keys, jaw/neck/eye bones, gaze target, Key All, Reset,
and one-click "blink and talk".

Panels only draw properties and operators; everything they do is an operator that works headless
(tests drive them through `bpy.ops`). Animation goes through `anim_compat` so it works on 4.2 and 5.x.
"""

from __future__ import annotations

import bpy
import numpy as np
from bpy.props import FloatProperty, StringProperty
from mathutils import Vector

from . import anim_compat, face_motion, rig_build
from .importer import avatar_parts

GAZE_CONSTRAINT = "Gaze"
EYE_BONES = ("left_eye", "right_eye")


def resolve_avatar(context, name: str = "") -> tuple[bpy.types.Object, bpy.types.Object]:
    """(armature, point object) of the named object or the active one; RuntimeError if it is no rigged avatar."""
    obj = bpy.data.objects.get(name) if name else context.active_object
    arm, points = avatar_parts(obj)
    if arm is None or points is None or points.data.shape_keys is None:
        raise RuntimeError("select a rigged Pointillist avatar (import a bundle first)")
    return arm, points


def expression_keys(points: bpy.types.Object) -> list[bpy.types.ShapeKey]:
    """The artist's expression keys: not the basis, not the driven FLAME pose correctives."""
    keys = points.data.shape_keys.key_blocks
    return [k for k in keys if k != points.data.shape_keys.reference_key and not rig_build.is_corrective(k.name)]


def key_all(arm: bpy.types.Object, points: bpy.types.Object, frame: float) -> int:
    """Keyframe every expression value and bone rotation at `frame`; returns the number of channels keyed."""
    key = points.data.shape_keys
    count = 0
    for block in expression_keys(points):
        anim_compat.key_property(key, face_motion.shape_path(block.name), frame, group="Expressions")
        count += 1
    for bone in arm.pose.bones:
        anim_compat.key_property(arm, face_motion.bone_path(bone.name), frame, group=bone.name)
        count += 1
    return count


def reset_pose(arm: bpy.types.Object, points: bpy.types.Object) -> None:
    """All expressions to 0 and all bones to rest (the values, not the keyframes)."""
    for block in expression_keys(points):
        block.value = 0.0
    for bone in arm.pose.bones:
        bone.rotation_euler = (0.0, 0.0, 0.0)
        bone.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
        bone.rotation_axis_angle = (0.0, 0.0, 1.0, 0.0)
        bone.location = (0.0, 0.0, 0.0)
        bone.scale = (1.0, 1.0, 1.0)


def write_clip(arm: bpy.types.Object, points: bpy.types.Object, clip: face_motion.Clip, start_frame: float,
               fps: float, interpolation: str = "BEZIER") -> int:
    """Write a {channel: (seconds, values)} clip as F-curves starting at `start_frame`; returns curves written."""
    key = points.data.shape_keys
    for channel, (times, values) in clip.items():
        frames = start_frame + np.asarray(times) * fps
        if channel[0] == "shape":
            fc = anim_compat.ensure_fcurve(key, face_motion.shape_path(channel[1]), 0, group="Expressions")
        else:
            _, bone, index = channel
            arm.pose.bones[bone].rotation_mode = "ZXY"
            fc = anim_compat.ensure_fcurve(arm, face_motion.bone_path(bone), index, group=bone)
        anim_compat.set_keys(fc, frames, values, interpolation=interpolation)
    return len(clip)


def add_gaze_target(context, arm: bpy.types.Object, distance: float = 0.6) -> bpy.types.Object:
    """An empty in front of the eyes that both eye bones track (Damped Track on their forward, local +Z)."""
    existing = [c.target for b in EYE_BONES for c in arm.pose.bones[b].constraints if c.name == GAZE_CONSTRAINT and c.target]
    if existing:
        return existing[0]
    heads = np.array([arm.data.bones[b].head_local for b in EYE_BONES])
    centre = heads.mean(0) + np.array([0.0, -distance, 0.0])  # Blender: the face looks toward -Y
    empty = bpy.data.objects.new(f"{arm.name}_gaze", None)
    empty.empty_display_type = "SPHERE"
    empty.empty_display_size = 0.02
    empty.location = arm.matrix_world @ Vector(centre.tolist())
    (arm.users_collection[0] if arm.users_collection else context.scene.collection).objects.link(empty)
    for bone in EYE_BONES:
        con = arm.pose.bones[bone].constraints.new("DAMPED_TRACK")
        con.name = GAZE_CONSTRAINT
        con.target = empty
        con.track_axis = "TRACK_Z"
    return empty


class _AvatarOperator:
    avatar: StringProperty(name="Avatar", description="Object of the avatar (default: the active object)", default="")

    # No poll: the panel shows these buttons only for an avatar, and a script calling them without one
    # gets a message saying what to select rather than "context is incorrect".
    def execute(self, context):
        try:
            arm, points = resolve_avatar(context, self.avatar)
        except RuntimeError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return self.run(context, arm, points)  # each operator's own work


class AVATAR_OT_key_all(_AvatarOperator, bpy.types.Operator):
    """Insert a keyframe on every expression and face bone at the current frame"""

    bl_idname = "avatar.key_all"
    bl_label = "Key All"
    bl_options = {"REGISTER", "UNDO"}

    def run(self, context, arm, points):
        count = key_all(arm, points, context.scene.frame_current)
        self.report({"INFO"}, f"Keyed {count} channels at frame {context.scene.frame_current}")
        return {"FINISHED"}


class AVATAR_OT_reset_expression(_AvatarOperator, bpy.types.Operator):
    """Set every expression to 0 and every face bone to its rest pose"""

    bl_idname = "avatar.reset_expression"
    bl_label = "Reset"
    bl_options = {"REGISTER", "UNDO"}

    def run(self, context, arm, points):
        reset_pose(arm, points)
        return {"FINISHED"}


class AVATAR_OT_add_gaze_target(_AvatarOperator, bpy.types.Operator):
    """Add an empty in front of the face that the eyes follow"""

    bl_idname = "avatar.add_gaze_target"
    bl_label = "Gaze Target"
    bl_options = {"REGISTER", "UNDO"}

    distance: FloatProperty(name="Distance", default=0.6, min=0.05, max=10.0, unit="LENGTH")

    def run(self, context, arm, points):
        empty = add_gaze_target(context, arm, self.distance)
        self.report({"INFO"}, f"The eyes follow {empty.name}")
        return {"FINISHED"}


class AVATAR_OT_blink_and_talk(_AvatarOperator, bpy.types.Operator):
    """Key a short clip (blinks, talking jaw and lips, a smile, a head turn) from the scene's start frame"""

    bl_idname = "avatar.blink_and_talk"
    bl_label = "Blink and Talk"
    bl_options = {"REGISTER", "UNDO"}

    seconds: FloatProperty(name="Seconds", default=3.0, min=1.0, max=30.0)

    def run(self, context, arm, points):
        scene = context.scene
        fps = scene.render.fps / scene.render.fps_base
        names = [k.name for k in expression_keys(points)]
        clip = face_motion.blink_and_talk(names, self.seconds)
        write_clip(arm, points, clip, scene.frame_start, fps)
        scene.frame_end = max(scene.frame_end, scene.frame_start + round(self.seconds * fps))
        self.report({"INFO"}, f"Keyed {len(clip)} curves over {self.seconds:g} s; press Play")
        return {"FINISHED"}


# ------------------------------------------------------------------------------------------------ panels
class VIEW3D_PT_avatar_expressions(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Avatar"
    bl_label = "Expressions"
    bl_idname = "VIEW3D_PT_avatar_expressions"

    def draw(self, context):
        layout = self.layout
        arm, points = avatar_parts(context.active_object)
        if arm is None or points is None:
            layout.label(text="Select an imported avatar", icon="INFO")
            layout.operator("avatar.import_bundle", icon="IMPORT")
            return
        row = layout.row(align=True)
        row.operator(AVATAR_OT_key_all.bl_idname, icon="KEYFRAME")
        row.operator(AVATAR_OT_reset_expression.bl_idname, icon="LOOP_BACK")
        layout.operator(AVATAR_OT_blink_and_talk.bl_idname, icon="PLAY")


class VIEW3D_PT_avatar_face_bones(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Avatar"
    bl_label = "Jaw, Neck and Eyes"
    bl_parent_id = "VIEW3D_PT_avatar_expressions"

    def draw(self, context):
        arm, _points = avatar_parts(context.active_object)
        if arm is None:
            return
        col = self.layout.column()
        bones = arm.pose.bones
        col.prop(bones["jaw"], "rotation_euler", index=0, text="Jaw Open")
        col.prop(bones["neck"], "rotation_euler", text="Neck (pitch, yaw, roll)")
        for eye in EYE_BONES:
            col.prop(bones[eye], "rotation_euler", text=eye.replace("_", " ").title())
        col.operator(AVATAR_OT_add_gaze_target.bl_idname, icon="HIDE_OFF")


def _group_panel(label: str) -> type:
    """A collapsible sub-panel holding one group's expression sliders."""

    def draw(self, context):
        _arm, points = avatar_parts(context.active_object)
        if points is None or points.data.shape_keys is None:
            return
        blocks = points.data.shape_keys.key_blocks
        names = rig_build.group_expressions([k.name for k in expression_keys(points)]).get(label, [])
        col = self.layout.column(align=True)
        for name in names:
            col.prop(blocks[name], "value", text=name, slider=True)

    def poll(cls, context):
        _arm, points = avatar_parts(context.active_object)
        if points is None or points.data.shape_keys is None:
            return False
        return label in rig_build.group_expressions([k.name for k in expression_keys(points)])

    return type(f"VIEW3D_PT_avatar_expr_{label.lower()}", (bpy.types.Panel,), {
        "bl_space_type": "VIEW_3D", "bl_region_type": "UI", "bl_category": "Avatar", "bl_label": label,
        "bl_parent_id": VIEW3D_PT_avatar_expressions.bl_idname, "bl_options": {"DEFAULT_CLOSED"},
        "draw": draw, "poll": classmethod(poll),
    })


_GROUP_LABELS = [label for label, _ in rig_build.EXPRESSION_GROUPS] + ["Other"]
CLASSES = (AVATAR_OT_key_all, AVATAR_OT_reset_expression, AVATAR_OT_add_gaze_target, AVATAR_OT_blink_and_talk,
           VIEW3D_PT_avatar_expressions, VIEW3D_PT_avatar_face_bones)
_registered: list[type] = []


def register() -> None:
    for cls in (*CLASSES, *(_group_panel(label) for label in _GROUP_LABELS)):
        bpy.utils.register_class(cls)
        _registered.append(cls)


def unregister() -> None:
    while _registered:
        bpy.utils.unregister_class(_registered.pop())
