"""Keyframes and F-curves that work on Blender 4.2 LTS and 5.x.

5.0 removed `Action.fcurves`: curves live in a channelbag per action slot (layered actions, 4.4+). Every
animation write in the add-on goes through here, so the version split is in one place. Bulk writes use
`keyframe_points.add` + `foreach_set`, which is what makes importing thousands of capture frames fast.
"""

from __future__ import annotations

import bpy
import numpy as np


def _layered() -> bool:
    return bpy.app.version >= (4, 4, 0)


def ensure_action(id_data: bpy.types.ID, name: str | None = None) -> bpy.types.Action:
    """The ID's action, created (and, on layered versions, given a slot) if it has none."""
    anim = id_data.animation_data or id_data.animation_data_create()
    if anim.action is None:
        anim.action = bpy.data.actions.new(name or f"{id_data.name}Action")
    if _layered() and anim.action_slot is None:
        action = anim.action
        slot = next((s for s in action.slots if s.target_id_type == id_data.id_type), None)
        if slot is None:
            slot = action.slots.new(id_type=id_data.id_type, name=id_data.name)
        anim.action_slot = slot
    return anim.action


def fcurves(id_data: bpy.types.ID) -> list:
    """The ID's F-curves for its assigned action (and slot); [] when it has none."""
    anim = id_data.animation_data
    if anim is None or anim.action is None:
        return []
    if _layered():
        from bpy_extras.anim_utils import action_get_channelbag_for_slot

        bag = action_get_channelbag_for_slot(anim.action, anim.action_slot)
        return list(bag.fcurves) if bag is not None else []
    return list(anim.action.fcurves)


def find_fcurve(id_data: bpy.types.ID, data_path: str, index: int = 0):
    return next((fc for fc in fcurves(id_data) if fc.data_path == data_path and fc.array_index == index), None)


def ensure_fcurve(id_data: bpy.types.ID, data_path: str, index: int = 0, group: str = "") -> bpy.types.FCurve:
    """The F-curve animating `data_path[index]` on `id_data`, created if missing."""
    action = ensure_action(id_data)
    found = find_fcurve(id_data, data_path, index)
    if found is not None:
        return found
    if _layered():
        from bpy_extras.anim_utils import action_ensure_channelbag_for_slot

        bag = action_ensure_channelbag_for_slot(action, id_data.animation_data.action_slot)
        fc = bag.fcurves.new(data_path, index=index)
        if group:
            fc.group = bag.groups.get(group) or bag.groups.new(group)
        return fc
    return action.fcurves.new(data_path, index=index, action_group=group)


def set_keys(fcurve: bpy.types.FCurve, frames: np.ndarray, values: np.ndarray, interpolation: str = "LINEAR",
             replace: bool = True) -> None:
    """Write keyframes in bulk (replacing the curve's keys by default)."""
    frames = np.asarray(frames, dtype=np.float32).ravel()
    values = np.asarray(values, dtype=np.float32).ravel()
    points = fcurve.keyframe_points
    if replace:
        points.clear()
    start = len(points)
    points.add(len(frames))
    co = np.empty(2 * len(points), dtype=np.float32)
    points.foreach_get("co", co)
    co[2 * start::2] = frames
    co[2 * start + 1::2] = values
    points.foreach_set("co", co)
    interp = np.full(len(points), _interpolation_value(interpolation), dtype=np.int32)
    points.foreach_set("interpolation", interp)
    fcurve.update()


def _interpolation_value(name: str) -> int:
    items = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items
    return items[name].value


def key_property(id_data: bpy.types.ID, data_path: str, frame: float, group: str = "") -> None:
    """Keyframe the current value of `data_path` (all its array elements) at `frame`."""
    ensure_action(id_data)
    id_data.keyframe_insert(data_path, frame=frame, group=group)


def remove_curves(id_data: bpy.types.ID, prefix: str) -> int:
    """Delete the ID's F-curves whose data path starts with `prefix`; returns how many."""
    anim = id_data.animation_data
    if anim is None or anim.action is None:
        return 0
    if _layered():
        from bpy_extras.anim_utils import action_get_channelbag_for_slot

        bag = action_get_channelbag_for_slot(anim.action, anim.action_slot)
        collection = bag.fcurves if bag is not None else None
    else:
        collection = anim.action.fcurves
    if collection is None:
        return 0
    doomed = [fc for fc in collection if fc.data_path.startswith(prefix)]
    for fc in doomed:
        collection.remove(fc)
    return len(doomed)
