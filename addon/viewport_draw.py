"""Rendered shading in the 3D View: the backend's image of the posed splats, drawn with the `gpu` module.

Thin on purpose (view_draw never runs headless): cameras, sizes and pixel conversion are `render_bridge`
functions the tests exercise. Frames render on a worker thread so the UI never waits on the network; while
the view moves they are a third of the size, and a timer asks for a full-size frame once it stops.
"""

from __future__ import annotations

import threading
import time

import bpy
import numpy as np

from . import render_bridge as rb

#: Seconds without a view change after which the reduced image is replaced by a full-size one.
SETTLE_S = 0.3


class ViewportState:
    """Per-engine viewport data: the posed splats of the last depsgraph update, and the drawn texture."""

    def __init__(self) -> None:
        self.splats = []
        self.error = ""
        self.generation = 0  # bumped by every depsgraph update
        self.texture = None
        self.texture_key = None
        self.pending = None  # (key, thread)
        self.result = None  # (key, combined (H*W, 4), w, h) from the worker
        self.last_key = None
        self.last_change = 0.0
        self._lock = threading.Lock()

    def update(self, engine, context, depsgraph) -> None:
        from .render_engine import posed_scene

        try:
            self.splats = posed_scene(depsgraph, for_render=False)
            self.error = ""
        except RuntimeError as exc:
            self.splats, self.error = [], str(exc)
        self.generation += 1

    def draw(self, engine, context, depsgraph) -> None:
        import gpu
        from gpu_extras.presets import draw_texture_2d

        region, r3d, scene = context.region, context.region_data, depsgraph.scene
        view = rb.view_from_matrices(np.array(r3d.view_matrix), np.array(r3d.window_matrix), region.width,
                                     region.height)
        key_view = (view.viewmat.round(6).tobytes(), view.K.round(4).tobytes(), view.ortho, self.generation,
                    bool(scene.render.film_transparent))
        now = time.monotonic()
        if key_view != self.last_key:
            self.last_key, self.last_change = key_view, now
        navigating = now - self.last_change < SETTLE_S
        w, h = rb.reduced_size(region.width, region.height, navigating)
        key = (key_view, w, h)
        self._collect()
        if self.texture_key != key and self.pending is None and self.splats:
            self._start(key, rb.scaled_view(view, w, h), scene, engine)
        if navigating or (self.pending is not None):
            _redraw_later(engine)
        if self.error:
            engine.update_stats("", f"Gaussian Splats: {self.error}")
        if self.texture is None:
            return
        gpu.state.blend_set("ALPHA_PREMULT")
        engine.bind_display_space_shader(scene)
        draw_texture_2d(self.texture, (0, 0), region.width, region.height)
        engine.unbind_display_space_shader()
        gpu.state.blend_set("NONE")

    def _start(self, key, view: rb.View, scene, engine) -> None:
        from .render_engine import backend_client, render_frame, world_background

        splats = list(self.splats)
        transparent = bool(scene.render.film_transparent)
        background = None if transparent else world_background(scene)
        try:
            client = backend_client()
        except RuntimeError as exc:
            self.error = str(exc)
            return

        def work():
            try:
                rgba, _ = render_frame(client, splats, view, background, False)
                out = (key, rb.film_pixels(rgba), view.width, view.height)
            except Exception as exc:  # noqa: BLE001 - shown in the header; the next view change retries
                out = (key, str(exc), 0, 0)
            with self._lock:
                self.result = out

        thread = threading.Thread(target=work, name="pointillist-viewport", daemon=True)
        self.pending = (key, thread)
        thread.start()

    def _collect(self) -> None:
        """Turn a finished worker frame into the drawn texture (GPU calls stay on the main thread)."""
        import gpu

        with self._lock:
            result, self.result = self.result, None
        if result is None:
            return
        self.pending = None
        key, pixels, w, h = result
        if isinstance(pixels, str):
            self.error, self.texture_key = pixels, key
            return
        buffer = gpu.types.Buffer("FLOAT", w * h * 4, np.ascontiguousarray(pixels).ravel())
        self.texture = gpu.types.GPUTexture((w, h), format="RGBA16F", data=buffer)
        self.texture_key, self.error = key, ""

    def free(self) -> None:
        self.texture = None


def _redraw_later(engine) -> None:
    """Ask for another draw shortly (the worker's frame, or the full-size one once the view settles)."""
    def tick():
        try:
            engine.tag_redraw()
        except ReferenceError:  # the viewport engine is gone
            pass

    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=0.1)
