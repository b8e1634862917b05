"""Add-on preferences: which backend (local process or remote URL), its Python, device, cache folder,
and Install Backend (a private venv made from the backend wheel the extension carries).

The helpers below turn preferences into the plain settings the bpy-free modules take
(`backend_config`, `cache_dir`, `resolved_python`), so operators stay thin.
"""

from __future__ import annotations

import shlex
import threading
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy.types import AddonPreferences, Operator

from . import install_backend
from .backend_manager import BackendConfig
from .backend_process import LaunchSettings, detect_python, venv_python

ADDON_DIR = Path(__file__).parent
PRIVATE_VENV = "backend-venv"


def get_prefs(context=None):
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences


def user_dir() -> Path:
    """The extension's own writable folder (survives extension updates)."""
    return Path(bpy.utils.extension_path_user(__package__, path="", create=True))


def private_venv() -> Path:
    return user_dir() / PRIVATE_VENV


def resolved_python(prefs) -> str:
    """The preference if set, else the checkout's .venv or the private venv (see backend_process)."""
    return bpy.path.abspath(prefs.python_path) if prefs.python_path else detect_python(private_venv(), Path(__file__))


def cache_dir(prefs) -> Path:
    path = Path(bpy.path.abspath(prefs.cache_dir)) if prefs.cache_dir else user_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def bundled_asset(name: str) -> str:
    path = ADDON_DIR / "assets" / name
    return str(path) if path.is_file() else ""


def head_model_file(prefs) -> str:
    """The head model the artist chose (a FLAME .npz from `pointillist head import-flame`), or ""."""
    return bpy.path.abspath(prefs.head_model) if prefs.head_model else ""


def backend_config(prefs) -> BackendConfig:
    if prefs.backend_mode == "REMOTE":
        return BackendConfig(mode="remote", url=prefs.remote_url, token=prefs.remote_token)
    checkpoint = bpy.path.abspath(prefs.checkpoint) if prefs.checkpoint else bundled_asset("generator.safetensors")
    launch = LaunchSettings(python=resolved_python(prefs), data_dir=cache_dir(prefs) / "server",
                            device=prefs.device.lower(), checkpoint=checkpoint,
                            head=head_model_file(prefs) or bundled_asset("head_template.npz"))
    return BackendConfig(mode="local", launch=launch)


class PointillistPreferences(AddonPreferences):
    bl_idname = __package__

    backend_mode: EnumProperty(
        name="Backend", default="LOCAL",
        items=[("LOCAL", "Local", "Start the backend on this computer with the Python below"),
               ("REMOTE", "Remote", "Use a backend already running elsewhere (e.g. a GPU machine)")])
    python_path: StringProperty(
        name="Python", subtype="FILE_PATH", default="",
        description="Python that runs the local backend; empty = auto (the repository's .venv, or the "
                    "environment made by Install Backend)")
    device: EnumProperty(
        name="Device", default="AUTO",
        items=[("AUTO", "Auto", "CUDA when available, else CPU"), ("CPU", "CPU", ""), ("CUDA", "CUDA", "")])
    checkpoint: StringProperty(
        name="Checkpoint", subtype="FILE_PATH", default="",
        description="Generator weights (.safetensors); empty = the one the extension ships")
    head_model: StringProperty(
        name="Head Model", subtype="FILE_PATH", default="",
        description="A FLAME head converted once with `pointillist head import-flame` (.npz). The local backend "
                    "creates avatars on it and the importer rigs avatars made for it; empty = the procedural "
                    "head the extension ships")
    remote_url: StringProperty(name="URL", default="http://127.0.0.1:8765",
                               description="The remote backend, e.g. http://gpu-box:8765")
    remote_token: StringProperty(name="Token", subtype="PASSWORD", default="",
                                 description="The bearer token the remote backend was started with (--token-file)")
    cache_dir: StringProperty(
        name="Cache Folder", subtype="DIR_PATH", default="",
        description="Downloaded avatars and the local backend's data; empty = the extension's user folder")
    base_python: StringProperty(
        name="Base Python", subtype="FILE_PATH", default="",
        description="A Python 3.11 to make the backend environment from; empty = found automatically")
    pip_args: StringProperty(
        name="Extra pip Arguments", default="",
        description="Passed to pip by Install Backend, e.g. --no-index --find-links /path/to/wheels for an "
                    "offline install, or --index-url for a mirror")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "backend_mode", expand=True)
        if self.backend_mode == "LOCAL":
            layout.prop(self, "python_path")
            if not self.python_path:
                layout.label(text=f"Auto: {resolved_python(self) or 'none found; press Install Backend'}")
            layout.prop(self, "device")
            layout.prop(self, "checkpoint")
        else:
            layout.prop(self, "remote_url")
            layout.prop(self, "remote_token")
        layout.prop(self, "head_model")
        layout.prop(self, "cache_dir")
        box = layout.box()
        box.label(text="Install Backend (private environment, downloads torch from PyPI)")
        box.prop(self, "base_python")
        box.prop(self, "pip_args")
        progress = INSTALL.snapshot()
        if progress.state == "running":
            _progress(box, progress.progress, progress.stage)
            box.operator("avatar.install_backend_cancel", icon="CANCEL")
        else:
            if progress.error:
                box.label(text=progress.error.splitlines()[0], icon="ERROR")
            box.operator("avatar.install_backend", icon="IMPORT")


def _progress(layout, factor: float, text: str) -> None:
    if hasattr(layout, "progress"):  # UILayout.progress exists since Blender 4.0
        layout.progress(factor=factor, type="BAR", text=text)
    else:
        layout.label(text=f"{text} ({factor:.0%})")


# ------------------------------------------------------------------------------------ Install Backend
class InstallState:
    """The running install (one at a time), read by the preferences' draw()."""

    def __init__(self):
        self._lock = threading.Lock()
        self.progress = install_backend.InstallProgress()
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None

    def set(self, progress) -> None:
        with self._lock:
            self.progress = progress

    def snapshot(self):
        with self._lock:
            return self.progress


INSTALL = InstallState()


def install_arguments(prefs):
    wheel = install_backend.bundled_backend_wheel(ADDON_DIR)
    if wheel is None:
        raise install_backend.InstallError("this add-on carries no backend wheel (a source checkout? use its .venv)")
    base = bpy.path.abspath(prefs.base_python) if prefs.base_python else install_backend.find_base_python()
    return base, wheel, shlex.split(prefs.pip_args)


def run_install(prefs, report=INSTALL.set) -> str:
    """The whole install (blocking); sets the Python preference to the new environment on success."""
    base, wheel, pip_args = install_arguments(prefs)
    python = install_backend.install(base, private_venv(), wheel, pip_args=pip_args,
                                     online_access=bool(getattr(bpy.app, "online_access", True)), report=report,
                                     cancel=INSTALL.cancel)
    return python


class AVATAR_OT_install_backend(Operator):
    """Make a private Python environment with the Pointillist backend (from the wheel in this extension)"""

    bl_idname = "avatar.install_backend"
    bl_label = "Install Backend"

    def execute(self, context):
        prefs = get_prefs(context)
        INSTALL.cancel.clear()
        if bpy.app.background:  # no event loop: run it here, errors as RuntimeError
            try:
                python = run_install(prefs)
            except install_backend.InstallError as exc:
                INSTALL.set(install_backend.InstallProgress("failed", error=str(exc)))
                self.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
            prefs.python_path = ""  # auto-detection finds the private venv
            self.report({"INFO"}, f"backend installed: {python}")
            return {"FINISHED"}
        if INSTALL.thread is not None and INSTALL.thread.is_alive():
            self.report({"WARNING"}, "an install is already running")
            return {"CANCELLED"}
        try:
            arguments = install_arguments(prefs)
        except install_backend.InstallError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        online = bool(getattr(bpy.app, "online_access", True))

        def work():
            base, wheel, pip_args = arguments
            try:
                install_backend.install(base, private_venv(), wheel, pip_args=pip_args, online_access=online,
                                        report=INSTALL.set, cancel=INSTALL.cancel)
            except install_backend.InstallError as exc:
                INSTALL.set(install_backend.InstallProgress("cancelled" if INSTALL.cancel.is_set() else "failed",
                                                            error=str(exc)))
            except Exception as exc:  # noqa: BLE001 - the thread must end in a state the UI shows
                INSTALL.set(install_backend.InstallProgress("failed", error=repr(exc)))

        INSTALL.set(install_backend.InstallProgress("running", 0.0, "starting"))
        INSTALL.thread = threading.Thread(target=work, name="pointillist-install", daemon=True)
        INSTALL.thread.start()
        bpy.app.timers.register(_redraw_preferences, first_interval=0.5)
        return {"FINISHED"}


class AVATAR_OT_install_backend_cancel(Operator):
    """Stop the running Install Backend (nothing half-installed is kept)"""

    bl_idname = "avatar.install_backend_cancel"
    bl_label = "Cancel Install"

    def execute(self, context):
        INSTALL.cancel.set()
        return {"FINISHED"}


def _redraw_preferences():
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()
    return 0.5 if INSTALL.snapshot().state == "running" else None


_CLASSES = (PointillistPreferences, AVATAR_OT_install_backend, AVATAR_OT_install_backend_cancel)


def register() -> None:
    for cls in _CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    INSTALL.cancel.set()
    if bpy.app.timers.is_registered(_redraw_preferences):
        bpy.app.timers.unregister(_redraw_preferences)
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)


__all__ = ["backend_config", "cache_dir", "get_prefs", "resolved_python", "venv_python"]
