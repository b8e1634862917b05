"""Pointillist for Blender: portrait in, a rigged Gaussian-splat head avatar out.

The add-on never imports torch: it starts (or connects to) the `pointillist serve` backend and talks to it
over HTTP. Each submodule owns one concept and registers its own classes; this file only orders them.
Pure logic lives in modules that do not import bpy at top level, so tests can drive it without a UI.
"""

from __future__ import annotations

import importlib

#: Registration order: preferences and scene properties first (others refer to them), UI last.
_MODULES = (
    "preferences",
    "properties",
    "backend_ui",
    "create",
    "importer",
    "expressions",
    "capture",
    "render_engine",
    "export_ply",
    "export_rig",
)


def _modules():
    return [importlib.import_module(f".{name}", __package__) for name in _MODULES]


def register() -> None:
    done = []
    try:
        for module in _modules():
            module.register()
            done.append(module)
    except Exception:
        for module in reversed(done):  # leave Blender as it was: a half-registered add-on cannot be disabled
            module.unregister()
        raise


def unregister() -> None:
    for module in reversed(_modules()):
        module.unregister()
