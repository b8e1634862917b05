"""Backend status in the Avatar tab, Start/Stop operators, and the backend's lifetime hooks.

The process itself is `backend_manager.MANAGER`. Here: operators (synchronous when Blender has no event
loop, else a worker thread), a 2 s timer that notices a dead backend and restarts it, and the hooks that
stop its whole process tree: add-on disable (unregister) and Blender quitting (atexit). Opening another
file keeps the backend (starting one costs a model load) but cancels a Create Avatar in flight.
"""

from __future__ import annotations

import atexit
import threading

import bpy
from bpy.app.handlers import persistent
from bpy.types import Operator, Panel

from .backend_manager import MANAGER
from .backend_process import BackendProcessError
from .http_client import BackendError
from .preferences import backend_config, get_prefs

CATEGORY = "Avatar"
WATCH_INTERVAL_S = 2.0
_starter: threading.Thread | None = None


def configure(context) -> None:
    """Apply the preferences to the manager (main thread)."""
    MANAGER.configure(backend_config(get_prefs(context)))


def start_sync(context) -> str:
    """Start (or check) the backend here and now; raises RuntimeError with the reason."""
    configure(context)
    try:
        client = MANAGER.ensure()
    except (BackendProcessError, BackendError) as exc:
        raise RuntimeError(str(exc)) from None
    return client.url


def start_async(context=None) -> bool:
    """Start the backend on a worker thread (False when a start is already running)."""
    global _starter
    if _starter is not None and _starter.is_alive():
        return False
    if context is not None:
        configure(context)

    def work():
        try:
            MANAGER.ensure()
        except (BackendProcessError, BackendError, OSError):
            pass  # MANAGER.state / message hold the error for the panel

    _starter = threading.Thread(target=work, name="pointillist-backend-start", daemon=True)
    _starter.start()
    return True


def redraw_sidebars() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", ()):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def _watch():
    before = MANAGER.state
    MANAGER.watch()
    if MANAGER.wants_restart():
        start_async()
    if MANAGER.state != before or MANAGER.state == "starting":
        redraw_sidebars()
    return WATCH_INTERVAL_S


class AVATAR_OT_backend_start(Operator):
    """Start the Pointillist backend (or connect to the remote one)"""

    bl_idname = "avatar.backend_start"
    bl_label = "Start Backend"

    def execute(self, context):
        if bpy.app.background:
            try:
                url = start_sync(context)
            except RuntimeError as exc:
                self.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
            self.report({"INFO"}, f"backend ready at {url}")
            return {"FINISHED"}
        if not start_async(context):
            self.report({"WARNING"}, "the backend is already starting")
        return {"FINISHED"}


class AVATAR_OT_backend_stop(Operator):
    """Stop the local backend and everything it started"""

    bl_idname = "avatar.backend_stop"
    bl_label = "Stop Backend"

    def execute(self, context):
        MANAGER.stop()
        return {"FINISHED"}


class VIEW3D_PT_avatar_backend(Panel):
    bl_label = "Backend"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_order = 10
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        state = MANAGER.state
        icon = {"running": "CHECKMARK", "remote": "WORLD", "error": "ERROR", "died": "ERROR"}.get(state, "TIME")
        layout.label(text=state.capitalize(), icon=icon)
        if MANAGER.message:
            layout.label(text=MANAGER.message.splitlines()[0])
        row = layout.row(align=True)
        row.operator("avatar.backend_start", icon="PLAY")
        row.operator("avatar.backend_stop", icon="PAUSE")


@persistent
def _on_load_post(*_args):
    from . import create  # create registers after this module

    create.cancel_running()


def _stop_at_exit() -> None:
    MANAGER.stop()


_CLASSES = (AVATAR_OT_backend_start, AVATAR_OT_backend_stop, VIEW3D_PT_avatar_backend)


def register() -> None:
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.app.handlers.load_post.append(_on_load_post)
    atexit.register(_stop_at_exit)
    bpy.app.timers.register(_watch, first_interval=WATCH_INTERVAL_S, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(_watch):
        bpy.app.timers.unregister(_watch)
    atexit.unregister(_stop_at_exit)
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    MANAGER.stop()  # disabling the add-on leaves no backend behind
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
