"""Per-scene Create Avatar settings (`scene.pointillist_create`) and the portrait thumbnail.

Options map one to one onto the server's `options` JSON (see `job_runner.job_options`); 0 / -1 mean
"the quality preset's value", so the preset alone is a complete choice for a newcomer.
"""

from __future__ import annotations

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, PointerProperty, StringProperty
from bpy.types import PropertyGroup

from .job_runner import job_options

_previews = None  # bpy.utils.previews collection, made in register()


def _portrait_changed(self, context):
    portrait_icon(self.portrait)


class PointillistCreateSettings(PropertyGroup):
    portrait: StringProperty(name="Portrait", subtype="FILE_PATH", default="", update=_portrait_changed,
                             description="A photo of one face, looking roughly at the camera (JPEG, PNG, …)")
    quality: EnumProperty(
        name="Quality", default="standard",
        items=[("draft", "Draft", "Fewest points, no refinement: fastest"),
               ("standard", "Standard", "The default balance"),
               ("high", "High", "Most points and refinement steps: slowest")])
    point_budget: IntProperty(name="Point Budget", default=0, min=0, max=8192,
                              description="Surface points the generator may place; 0 = the quality preset's")
    seed: IntProperty(name="Seed", default=0, min=0, description="Same portrait + same seed = same avatar")
    refine_steps: IntProperty(name="Refine Steps", default=-1, min=-1, max=5000,
                              description="Photometric refinement steps; -1 = the preset's (none when the face is "
                                          "from the photo)")
    carve: BoolProperty(name="Trim to Silhouette", default=True,
                        description="Drop generated points that fall outside the person's outline in the portrait "
                                    "(turn off if the portrait's background is busy and hair gets cut)")

    anchor: BoolProperty(name="Face from Photo", default=True,
                         description="Lay the face on the fitted head and colour it from the photo, the hidden side "
                                     "from its mirror (turn off for the generator's own face and colours)")

    def options(self) -> dict:
        return job_options(self.quality, self.point_budget, self.seed, self.refine_steps, self.carve, self.anchor)


def portrait_icon(path: str) -> int:
    """An icon id for the portrait's thumbnail (0 when there is none, e.g. no file yet)."""
    if _previews is None or not path:
        return 0
    path = bpy.path.abspath(path)
    if not os.path.isfile(path):
        return 0
    key = f"{path}:{os.path.getmtime(path)}"
    if key not in _previews:
        _previews.load(key, path, "IMAGE")
    return _previews[key].icon_id


def settings(context) -> PointillistCreateSettings:
    return context.scene.pointillist_create


def register() -> None:
    global _previews
    import bpy.utils.previews

    bpy.utils.register_class(PointillistCreateSettings)
    bpy.types.Scene.pointillist_create = PointerProperty(type=PointillistCreateSettings)
    _previews = bpy.utils.previews.new()


def unregister() -> None:
    global _previews
    import bpy.utils.previews

    if _previews is not None:
        bpy.utils.previews.remove(_previews)
        _previews = None
    del bpy.types.Scene.pointillist_create
    bpy.utils.unregister_class(PointillistCreateSettings)
