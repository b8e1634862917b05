"""Gaussian-splat rendering: cameras (numpy only), SH colour, and the rasterizer.

Importing this package pulls in numpy only, so the Blender add-on can use the camera helpers
without torch. Torch-based pieces load on first attribute access (``RenderOutput``,
``eval_sh``). Import the rasterizer function from its module::

    from pointillist.render.rasterize import rasterize, RenderOutput

(``pointillist.render.rasterize`` is the submodule; Python binds that name on the package as
soon as the submodule is imported, so re-exporting the function under the same name here would
give different objects depending on import order.)
"""

from __future__ import annotations

from typing import Any

from .camera import (K_from_focal, blender_intrinsics, blender_matrix_world_to_viewmat,
                     camera_center, fov_to_K, head_to_blender_matrix, look_at, orbit_viewmat,
                     project_points)

_LAZY = {
    "RenderOutput": ("rasterize", "RenderOutput"),
    "eval_sh": ("sh", "eval_sh"),
}

__all__ = [
    "K_from_focal", "blender_intrinsics", "blender_matrix_world_to_viewmat", "camera_center",
    "fov_to_K", "head_to_blender_matrix", "look_at", "orbit_viewmat", "project_points",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
