"""The "Gaussian Splats" render engine: F12 and animation renders through the backend rasterizer.

Blender cannot draw Gaussians, so per frame this engine reads every splat object of the view layer (rigged
avatars and plain imported 3DGS PLYs: meshes carrying the Inria point attributes), poses them (positions from
the evaluated mesh; rotations skinned here, since the Armature modifier moves positions only), sends them
with the scene camera to the backend (`POST /v1/render`, static attributes registered once per object under
a content-addressed id) and writes the answer into the Combined (scene-linear, premultiplied) and Z passes.
All maths lives in `render_bridge` (no bpy); this module only reads Blender data and writes results.

Colour: splat colours are display sRGB (they were fitted to photos), so the Combined pass holds their
linearised values and the 'Standard' view transform shows the backend's pixels unchanged. The first time a
scene uses this engine its view transform is set to Standard (the artist may change it afterwards).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import bpy
import numpy as np
from bpy.app.handlers import persistent
from pointillist.render.colour import linear_to_srgb

from . import render_bridge as rb

ENGINE_ID = "POINTILLIST_SPLATS"
#: Scene flag: the view transform was set for this engine once (later choices are the artist's).
VIEW_SET_FLAG = "pointillist_view_transform_set"
DEPTH_PASS = "Depth"


# ------------------------------------------------------------------------------------------- reading
@dataclass
class SplatStatic:
    """What stays fixed while an object animates (cached by mesh; content-addressed on the backend)."""

    attrs: object  # render_payload.ObjectAttributes
    rest_quats: np.ndarray  # (N, 4) the rot_* attribute, Blender object space
    weights: rb.WeightPatterns | None  # vertex-group weights (columns follow `groups`) as distinct rows
    groups: tuple[str, ...]
    object_id: str
    raw: dict  # Inria-named attributes as read (for PLY export)


@dataclass
class PosedSplats:
    """One object's Gaussians at the current frame, world space (Blender axes)."""

    name: str
    static: SplatStatic
    means: np.ndarray  # (N, 3)
    rotation: np.ndarray  # (3, 3) the object's world rotation
    bones: np.ndarray | None  # (G, 4, 4) world deform matrices of `static.groups`; None for a static object
    scale: float  # the object's uniform scale (Gaussians grow with it)

    @property
    def quats(self) -> np.ndarray:
        """(N, 4) world rotations of the splats (PLY export, checks); frames send the bones instead."""
        return rb.skin_rotations(self.static.weights, self.bones, self.static.rest_quats, self.rotation)

    def frame_object(self):
        from pointillist.server.render_payload import FrameObject

        if self.bones is not None and self.static.attrs.pattern_weights is not None:
            return FrameObject(self.static.object_id, self.means, bones=self.bones[:, :3, :3].astype(np.float32),
                               post=rb.bone_frame_quat(self.rotation))
        return FrameObject(self.static.object_id, self.means, self.quats)


_STATIC_CACHE: dict[tuple, SplatStatic] = {}


def is_splat_object(obj) -> bool:
    if obj.type != "MESH":
        return False
    names = obj.original.data.attributes.keys()
    return rb.has_splat_attributes(names)


def _read_float_attributes(mesh: bpy.types.Mesh) -> dict[str, np.ndarray]:
    names = [a.name for a in mesh.attributes
             if a.domain == "POINT" and a.data_type == "FLOAT" and
             (a.name in rb.REQUIRED_ATTRIBUTES or a.name.startswith("f_rest_"))]
    rb.rest_count(names)
    n = len(mesh.vertices)
    out = {}
    for name in names:
        values = np.empty(n, np.float32)
        mesh.attributes[name].data.foreach_get("value", values)
        out[name] = values
    return out


def _read_weights(obj, mesh: bpy.types.Mesh, groups: tuple[str, ...]) -> np.ndarray:
    """(N, G) weights; vertex groups have no bulk getter, so this loop runs once per mesh (cached)."""
    weights = np.zeros((len(mesh.vertices), len(groups)), np.float32)
    column = {obj.vertex_groups[g].index: j for j, g in enumerate(groups)}
    for v in mesh.vertices:
        for g in v.groups:
            j = column.get(g.group)
            if j is not None:
                weights[v.index, j] = g.weight
    return weights


def _armature_modifier(obj, for_render: bool):
    for mod in obj.modifiers:
        shown = mod.show_render if for_render else mod.show_viewport
        if mod.type == "ARMATURE" and shown and mod.object is not None and mod.use_vertex_groups:
            return mod
    return None


def read_static(obj, scale: float, for_render: bool = True) -> SplatStatic:
    """Static attributes of the original object, cached until its mesh changes (`clear_cache`)."""
    orig = obj.original
    mesh = orig.data
    mod = _armature_modifier(orig, for_render)
    groups = ()
    if mod is not None:
        bones = mod.object.data.bones
        groups = tuple(g.name for g in orig.vertex_groups if g.name in bones and bones[g.name].use_deform)
    key = (orig.name_full, mesh.name_full, len(mesh.vertices), groups, round(scale, 9))
    cached = _STATIC_CACHE.get(key)
    if cached is not None:
        return cached
    raw = _read_float_attributes(mesh)
    weights = rb.weight_patterns(_read_weights(orig, mesh, groups)) if groups else None
    attrs = rb.with_skinning(rb.static_attributes(raw, scale), weights)
    static = SplatStatic(attrs, rb.rest_quats(raw), weights, groups, rb.object_id(attrs), raw)
    _STATIC_CACHE[key] = static
    return static


def clear_cache() -> None:
    _STATIC_CACHE.clear()


def _matrix(m) -> np.ndarray:
    return np.array(m, dtype=np.float64)


def bone_matrices(obj_eval, depsgraph, groups: tuple[str, ...], for_render: bool = True) -> np.ndarray | None:
    """(G, 4, 4) world-space deform matrix of each group's bone: A · pose · rest⁻¹ · A⁻¹."""
    mod = _armature_modifier(obj_eval.original, for_render)
    if mod is None or not groups:
        return None
    arm = mod.object.evaluated_get(depsgraph)
    A = arm.matrix_world
    A_inv = A.inverted_safe()
    out = np.empty((len(groups), 4, 4))
    for j, name in enumerate(groups):  # mathutils' 4x4 products: numpy.linalg.inv costs ~0.3 ms a call in Blender
        pb = arm.pose.bones[name]
        out[j] = _matrix(A @ pb.matrix @ pb.bone.matrix_local.inverted_safe() @ A_inv)
    return out


def pose_object(obj_eval, depsgraph, for_render: bool = True) -> PosedSplats:
    """World-space posed Gaussians of one evaluated splat object at the depsgraph's frame."""
    M = _matrix(obj_eval.matrix_world)
    rotation, scale = rb.rigid_part(M)
    static = read_static(obj_eval, scale, for_render)
    n = len(static.rest_quats)
    # An evaluated mesh object's data is the mesh with its modifiers applied (bpy.types.Depsgraph docs): its
    # position attribute is read in place, ~15x faster than copying every Gaussian attribute with to_mesh().
    mesh = obj_eval.data
    position = mesh.attributes.get("position") if isinstance(mesh, bpy.types.Mesh) else None
    if position is None or len(position.data) != n:
        found = len(position.data) if position is not None else 0
        raise ValueError(f"its modifiers make {found} points out of {n} Gaussians; "
                         f"only the Armature modifier, shape keys and the splat display may deform it")
    co = np.empty(n * 3, np.float32)
    position.data.foreach_get("vector", co)
    means = rb.to_world(co.reshape(n, 3), M)
    bones = bone_matrices(obj_eval, depsgraph, static.groups, for_render)
    return PosedSplats(obj_eval.name, static, means, rotation, bones if static.weights is not None else None, scale)


def posed_scene(depsgraph, for_render: bool = True) -> list[PosedSplats]:
    """Every visible splat object of the depsgraph's view layer, posed."""
    out = []
    for obj in depsgraph.objects:
        if not is_splat_object(obj) or not len(obj.original.data.vertices):
            continue
        try:
            out.append(pose_object(obj, depsgraph, for_render))
        except ValueError as exc:
            raise RuntimeError(f"{obj.name}: {exc}") from None
    return out


# ------------------------------------------------------------------------------------------- scene
def camera_params(cam_obj) -> rb.CameraParams:
    cam = cam_obj.data
    return rb.CameraParams(matrix_world=_matrix(cam_obj.matrix_world), kind=cam.type, lens=cam.lens,
                           ortho_scale=cam.ortho_scale, sensor_width=cam.sensor_width,
                           sensor_height=cam.sensor_height, sensor_fit=cam.sensor_fit, shift_x=cam.shift_x,
                           shift_y=cam.shift_y, clip_start=cam.clip_start, clip_end=cam.clip_end)


def world_background(scene) -> np.ndarray:
    """The world's visible colour (Background node colour × strength, else `world.color`) as display sRGB."""
    world = scene.world
    if world is None:
        return np.zeros(3, np.float32)
    colour = np.array(world.color[:3], np.float32)
    tree = world.node_tree if getattr(world, "use_nodes", True) else None
    if tree is not None:
        out = next((n for n in tree.nodes if n.type == "OUTPUT_WORLD" and n.is_active_output), None)
        link = out.inputs["Surface"].links[0] if out is not None and out.inputs["Surface"].is_linked else None
        if link is not None and link.from_node.type == "BACKGROUND":
            node = link.from_node
            if not node.inputs["Color"].is_linked:
                colour = np.array(node.inputs["Color"].default_value[:3], np.float32)
            if not node.inputs["Strength"].is_linked:
                colour = colour * float(node.inputs["Strength"].default_value)
    return linear_to_srgb(np.clip(colour, 0.0, 1.0)).astype(np.float32)


# ------------------------------------------------------------------------------------------- transport
_REGISTERED: set[tuple[str, str]] = set()  # (backend url, object id) known to be registered


def backend_client():
    """The configured backend (local process started on demand, or remote); RuntimeError if unusable."""
    from .backend_manager import MANAGER
    from .backend_process import BackendProcessError
    from .http_client import BackendError
    from .preferences import backend_config, get_prefs

    try:
        MANAGER.configure(backend_config(get_prefs(bpy.context)))
        return MANAGER.ensure()
    except (BackendProcessError, BackendError) as exc:
        raise RuntimeError(f"no backend to render with: {exc}") from None


def render_frame(client, splats: list[PosedSplats], view: rb.View, background: np.ndarray | None,
                 want_depth: bool, timings: dict | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The film from the backend: RGBA (H, W, 4) scene-linear premultiplied and depth (H, W) or None, bottom
    row first (`rb.render_request` asks for Blender's layout; only the covered block travels, pasted into the
    empty film here); registers objects it lacks (once, or after a 404)."""
    from pointillist.server.render_payload import (
        decode_film_image,
        encode_object,
        encode_render,
    )

    from .http_client import BackendError

    def register(force: bool) -> None:
        for s in splats:
            key = (client.url, s.static.object_id)
            if force or key not in _REGISTERED:
                client.put_object(s.static.object_id, encode_object(s.static.attrs))
                _REGISTERED.add(key)

    t0 = time.perf_counter()
    register(False)
    objects = [s.frame_object() for s in splats]
    body = encode_render(rb.render_request(view, objects, background, want_depth))
    t1 = time.perf_counter()
    try:
        answer, backend_ms = client.render(body)
    except BackendError as exc:
        if exc.code != "unknown_object":  # a restarted backend forgot the objects: register and retry once
            raise RuntimeError(f"the backend could not render: {exc}") from None
        register(True)
        answer, backend_ms = client.render(body)
    t2 = time.perf_counter()
    rgba, depth = decode_film_image(answer)
    if timings is not None:
        timings["decode"] = timings.get("decode", 0.0) + (time.perf_counter() - t2)
        timings["encode"] = timings.get("encode", 0.0) + (t1 - t0)
        timings["backend_roundtrip"] = timings.get("backend_roundtrip", 0.0) + (t2 - t1)
        for step, ms in backend_ms.items():
            timings[f"backend_{step}"] = timings.get(f"backend_{step}", 0.0) + ms / 1000
    return rgba, depth


# ------------------------------------------------------------------------------------------- engine
class PointillistRenderEngine(bpy.types.RenderEngine):
    """Gaussian splats through the Pointillist backend's rasterizer."""

    bl_idname = ENGINE_ID
    bl_label = "Gaussian Splats"
    bl_use_preview = False
    bl_use_postprocess = True
    bl_use_shading_nodes_custom = False

    #: filled by the last render() for benchmarks: seconds per stage
    last_timings: dict = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.viewport = None  # viewport_draw.ViewportState, made on the first view_update

    def update_render_passes(self, scene=None, renderlayer=None):
        self.register_pass(scene, renderlayer, "Combined", 4, "RGBA", "COLOR")
        if renderlayer is not None and renderlayer.use_pass_z:
            self.register_pass(scene, renderlayer, DEPTH_PASS, 1, "Z", "VALUE")

    def render(self, depsgraph):
        scene = depsgraph.scene
        try:
            self._render(depsgraph, scene)
        except Exception as exc:  # noqa: BLE001 - never a crash: the artist sees why, the render ends empty
            message = str(exc) if isinstance(exc, (RuntimeError, ValueError)) else f"{type(exc).__name__}: {exc}"
            self.report({"ERROR"}, f"Gaussian Splats: {message}")
            self.error_set(f"Gaussian Splats: {message}")

    def _render(self, depsgraph, scene) -> None:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        r = scene.render
        border = (r.border_min_x, r.border_max_x, r.border_min_y, r.border_max_y) if r.use_border else None
        region = rb.render_region(r.resolution_x, r.resolution_y, r.resolution_percentage, border)
        cam_obj = self.camera_override or scene.camera
        if cam_obj is None:
            raise RuntimeError("the scene has no camera: add one and make it the scene camera")
        view = rb.view_from_camera(camera_params(cam_obj.evaluated_get(depsgraph)), region,
                                   r.pixel_aspect_x / r.pixel_aspect_y)
        view_layer = depsgraph.view_layer
        want_depth = bool(view_layer.use_pass_z)
        transparent = bool(r.film_transparent)
        background = None if transparent else world_background(scene)
        self.update_stats("", "Gaussian Splats: posing splats")
        splats = posed_scene(depsgraph, for_render=True)
        timings["pose"] = time.perf_counter() - t0
        if self.test_break():
            return
        self.update_progress(0.2)
        if splats:
            self.update_stats("", f"Gaussian Splats: rendering {sum(len(s.means) for s in splats)} splats")
            rgba, depth = render_frame(backend_client(), splats, view, background, want_depth, timings)
        else:  # nothing to draw: the film alone, no backend needed
            rgba, depth = rb.empty_film(view.width, view.height, background, want_depth)
        if self.test_break():
            return
        self.update_progress(0.8)
        t1 = time.perf_counter()  # the backend answered in the passes' own layout: reshaped views, no conversion
        combined = rb.film_pixels(rgba)
        z = depth.reshape(-1, 1) if depth is not None else None
        timings["convert"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        result = self.begin_result(0, 0, view.width, view.height)
        layer = result.layers[0]
        layer.passes["Combined"].rect = combined
        if z is not None:
            layer.passes[DEPTH_PASS].rect = z
        self.end_result(result)
        timings["write_result"] = time.perf_counter() - t2
        self.update_progress(1.0)
        timings["total"] = time.perf_counter() - t0
        type(self).last_timings = timings

    # viewport (Rendered shading): thin wrappers over viewport_draw, which never runs headless
    def view_update(self, context, depsgraph):
        from . import viewport_draw

        if self.viewport is None:
            self.viewport = viewport_draw.ViewportState()
        self.viewport.update(self, context, depsgraph)

    def view_draw(self, context, depsgraph):
        from . import viewport_draw

        if self.viewport is None:
            self.viewport = viewport_draw.ViewportState()
        self.viewport.draw(self, context, depsgraph)

    def __del__(self):
        viewport = getattr(self, "viewport", None)
        if viewport is not None:
            viewport.free()
        parent = getattr(super(), "__del__", None)
        if parent is not None:
            parent()


# ------------------------------------------------------------------------------------------- colour setup
def apply_view_transform(scene) -> bool:
    """The first time `scene` renders with this engine: 'Standard', no look, exposure 0, gamma 1, so the
    image shows the backend's colours. True when something was changed."""
    if scene.render.engine != ENGINE_ID or scene.get(VIEW_SET_FLAG):
        return False
    vs = scene.view_settings
    vs.view_transform = "Standard"
    vs.look = "None"
    vs.exposure = 0.0
    vs.gamma = 1.0
    scene[VIEW_SET_FLAG] = True
    return True


@persistent
def _on_depsgraph_update(scene, depsgraph=None):
    apply_view_transform(scene)
    if depsgraph is not None:
        for update in depsgraph.updates:  # edited splat data (attributes, weights) is read again
            if isinstance(update.id, bpy.types.Mesh) and not update.is_updated_transform:
                clear_cache()
                break


@persistent
def _on_render_pre(scene, *_args):
    apply_view_transform(scene)


@persistent
def _on_load_post(*_args):
    clear_cache()
    _REGISTERED.clear()


class RENDER_PT_pointillist_splats(bpy.types.Panel):
    """Film and passes for Gaussian Splats renders."""

    bl_label = "Gaussian Splats"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    COMPAT_ENGINES = {ENGINE_ID}

    @classmethod
    def poll(cls, context):
        return context.engine in cls.COMPAT_ENGINES

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        scene = context.scene
        layout.prop(scene.render, "film_transparent", text="Transparent Film")
        layout.prop(context.view_layer, "use_pass_z", text="Depth Pass")
        layout.prop(scene.view_settings, "view_transform")
        if scene.view_settings.view_transform != "Standard":
            layout.label(text="'Standard' shows splat colours as the backend renders them", icon="INFO")


def _compatible_panels():
    """Blender's own property panels that suit any engine (format, output, camera, colour management...)."""
    skip = ("material", "particle", "physics", "texture", "freestyle", "light", "strip")
    for panel in bpy.types.Panel.__subclasses__():
        engines = getattr(panel, "COMPAT_ENGINES", None)
        module = getattr(panel, "__module__", "")
        if (isinstance(engines, set) and "BLENDER_RENDER" in engines and module.startswith("bl_ui.properties_")
                and not any(word in module for word in skip)):
            yield panel


_CLASSES = (PointillistRenderEngine, RENDER_PT_pointillist_splats)


def register() -> None:
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    for panel in _compatible_panels():
        panel.COMPAT_ENGINES.add(ENGINE_ID)
    bpy.app.handlers.depsgraph_update_post.append(_on_depsgraph_update)
    bpy.app.handlers.render_pre.append(_on_render_pre)
    bpy.app.handlers.load_post.append(_on_load_post)


def unregister() -> None:
    for handlers, fn in ((bpy.app.handlers.depsgraph_update_post, _on_depsgraph_update),
                         (bpy.app.handlers.render_pre, _on_render_pre), (bpy.app.handlers.load_post, _on_load_post)):
        if fn in handlers:
            handlers.remove(fn)
    for panel in _compatible_panels():
        panel.COMPAT_ENGINES.discard(ENGINE_ID)
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
    clear_cache()
