"""Create Avatar: the sidebar panel and `avatar.create` / `avatar.cancel`.

With an event loop (the normal UI) the network work runs on a `JobRunner` thread and a 0.2 s timer
applies its progress to the panel and, when the bundle is downloaded, imports it on the main thread.
Without one (`bpy.app.background`, or `wait=True`) everything runs synchronously inside the operator
and failures raise `RuntimeError` through `self.report({'ERROR'})`, so scripts and tests can drive it.
The import is part B's `importer.import_avatar(context, filepath) -> armature object`; whatever it
created is removed again if it fails, so a failed create leaves no partial objects.
"""

from __future__ import annotations

import textwrap

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty
from bpy.types import Operator, Panel

from . import backend_ui
from .backend_manager import MANAGER
from .importer import PROP_WARNINGS
from .job_runner import CreateFailed, JobRunner, Progress, create_avatar
from .preferences import cache_dir, get_prefs
from .properties import portrait_icon, settings

TIMER_S = 0.2


class CreateState:
    """The one Create Avatar in flight (runner) and the last outcome, read by the panel."""

    def __init__(self):
        self.runner: JobRunner | None = None
        self.last = Progress()
        self.result_name = ""

    def progress(self) -> Progress:
        return self.runner.snapshot() if self.runner is not None else self.last


STATE = CreateState()


def _connect(cancel):
    return MANAGER.ensure(cancel)


def import_bundle(context, filepath: str):
    """Part B's importer; anything it created is removed if it raises (no partial objects)."""
    from .importer import import_avatar

    before = set(bpy.data.objects)
    try:
        return import_avatar(context, filepath)
    except Exception:
        for obj in set(bpy.data.objects) - before:
            bpy.data.objects.remove(obj, do_unlink=True)
        raise


def cancel_running() -> None:
    if STATE.runner is not None:
        STATE.runner.cancel()


def _finish(progress: Progress, context=None) -> tuple[str, str]:
    """(report type, message) once the runner has finished; imports on success (main thread)."""
    STATE.runner = None
    if progress.state == "importing":
        try:
            obj = import_bundle(context or bpy.context, progress.bundle_path)
        except Exception as exc:  # noqa: BLE001 - shown to the artist, Blender keeps running
            STATE.last = Progress("failed", 0.0, "failed", error=f"import failed: {exc}")
            return "ERROR", STATE.last.error
        STATE.result_name = getattr(obj, "name", "")
        warnings = tuple(str(obj.get(PROP_WARNINGS, "")).splitlines()) if obj is not None else ()
        STATE.last = Progress("done", 1.0, f"created {STATE.result_name}", bundle_path=progress.bundle_path,
                              warnings=warnings)
        if warnings:
            return "WARNING", f"Avatar created: {STATE.result_name}, with warnings: " + "; ".join(warnings)
        return "INFO", f"Avatar created: {STATE.result_name}"
    STATE.last = progress
    if progress.state == "cancelled":
        return "WARNING", "Create Avatar cancelled"
    return "ERROR", progress.error or "Create Avatar failed"


def poll_runner() -> float | None:
    """Timer body (a plain function: tests call it): apply the runner's progress; None when done."""
    runner = STATE.runner
    if runner is None:
        return None
    progress = runner.snapshot()
    if runner.thread.is_alive() or progress.active and progress.state != "importing":
        backend_ui.redraw_sidebars()
        return TIMER_S
    kind, message = _finish(progress)
    try:
        bpy.ops.avatar.report_message(kind=kind, message=message)
    except RuntimeError:
        pass  # no window to report in (e.g. closing); the panel shows it
    backend_ui.redraw_sidebars()
    return None


class AVATAR_OT_create(Operator):
    """Make a rigged Gaussian-splat head avatar from the portrait (runs on the Pointillist backend)"""

    bl_idname = "avatar.create"
    bl_label = "Create Avatar"
    bl_options = {"REGISTER"}

    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Run to the end before returning (always so without an event loop)")

    def execute(self, context):
        if STATE.runner is not None:
            self.report({"WARNING"}, "an avatar is already being created")
            return {"CANCELLED"}
        props = settings(context)
        prefs = get_prefs(context)
        try:
            options = props.options()
            portrait = bpy.path.abspath(props.portrait)
            backend_ui.configure(context)
            cache = cache_dir(prefs)
        except (CreateFailed, RuntimeError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if self.wait or bpy.app.background:
            return self._run_here(context, portrait, options, cache)
        STATE.last = Progress()
        STATE.runner = JobRunner(_connect, portrait, options, cache).start()
        bpy.app.timers.register(poll_runner, first_interval=TIMER_S)
        return {"FINISHED"}

    def _run_here(self, context, portrait, options, cache):
        def report(progress: Progress) -> None:
            STATE.last = progress

        try:
            path = create_avatar(_connect, portrait, options, cache, report)
        except CreateFailed as exc:
            STATE.last = Progress("failed", 0.0, "failed", error=str(exc))
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        kind, message = _finish(Progress("importing", 0.97, "importing", bundle_path=str(path)), context)
        self.report({kind}, message)
        return {"FINISHED"} if kind == "INFO" else {"CANCELLED"}


class AVATAR_OT_cancel(Operator):
    """Stop the avatar being created (the backend stops the job at its next check)"""

    bl_idname = "avatar.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        if STATE.runner is None:
            self.report({"WARNING"}, "no avatar is being created")
            return {"CANCELLED"}
        STATE.runner.cancel()
        return {"FINISHED"}


class AVATAR_OT_report_message(Operator):
    """Puts a background job's outcome in the info bar (timers cannot report by themselves)"""

    bl_idname = "avatar.report_message"
    bl_label = "Report"
    bl_options = {"INTERNAL"}

    kind: EnumProperty(items=[(k, k, "") for k in ("INFO", "WARNING", "ERROR")], default="INFO")
    message: StringProperty()

    def execute(self, context):
        self.report({self.kind}, self.message)
        return {"FINISHED"}


class VIEW3D_PT_avatar_create(Panel):
    bl_label = "Create Avatar"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = backend_ui.CATEGORY
    bl_order = 0

    def draw(self, context):
        layout = self.layout
        props = settings(context)
        layout.prop(props, "portrait", text="")
        icon = portrait_icon(props.portrait)
        if icon:
            layout.template_icon(icon_value=icon, scale=6.0)
        col = layout.column(align=True)
        col.prop(props, "quality")
        col.prop(props, "point_budget")
        col.prop(props, "refine_steps")
        col.prop(props, "seed")
        col.prop(props, "carve")
        col.prop(props, "anchor")
        progress = STATE.progress()
        if STATE.runner is not None:
            if hasattr(layout, "progress"):  # Blender 4.0+
                layout.progress(factor=progress.progress, type="BAR", text=progress.stage or progress.state)
            else:
                layout.label(text=f"{progress.stage} ({progress.progress:.0%})")
            layout.operator("avatar.cancel", icon="CANCEL")
            return
        layout.operator("avatar.create", icon="USER")
        if progress.state == "failed":
            for line in progress.error.splitlines()[:3]:
                layout.label(text=line, icon="ERROR")
        elif progress.state in ("done", "cancelled"):
            layout.label(text=progress.stage, icon="CHECKMARK" if progress.state == "done" else "CANCEL")
            for warning in progress.warnings:
                for line in textwrap.wrap(warning, 60)[:4]:
                    layout.label(text=line, icon="ERROR")


_CLASSES = (AVATAR_OT_create, AVATAR_OT_cancel, AVATAR_OT_report_message, VIEW3D_PT_avatar_create)


def register() -> None:
    for cls in _CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    cancel_running()
    if bpy.app.timers.is_registered(poll_runner):
        bpy.app.timers.unregister(poll_runner)
    STATE.runner = None
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
