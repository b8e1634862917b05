"""The "Gaussian Splats" render engine: F12 headless in bpy against a real backend on loopback.

Oracles independent of the engine's own code paths: the backend's `animate()` posing plus a direct
`POST /v1/render` of those Gaussians (pixels within 2/255 of the PNG Blender wrote), Blender's own
`world_to_camera_view` for where splats must land (orthographic, lens shift, sensor fit) and
`Object.calc_matrix_camera` for the camera maths.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from pointillist.render.colour import linear_to_srgb

pytestmark = [pytest.mark.blender, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from addon import render_bridge as rb
from addon import rig_build

OUT = ROOT / "out" / "render_bridge"
JAW_DEG = 22.0

SETUP = """
import math, numpy as np
from mathutils import Euler
prefs = bpy.context.preferences.addons[ADDON.__name__].preferences
prefs.backend_mode = "REMOTE"
prefs.remote_url = ARGS["url"]
prefs.remote_token = ARGS["token"]
scene = bpy.context.scene
scene.render.engine = "POINTILLIST_SPLATS"
bpy.context.view_layer.update()  # the engine's handler sets the view transform once
view_transform = scene.view_settings.view_transform
scene.render.dither_intensity = 0.0
scene.render.image_settings.file_format = "PNG"
scene.render.image_settings.color_mode = "RGBA"

def add_camera(location, rotation, **data):
    cam = bpy.data.cameras.new("Cam")
    for k, v in data.items():
        setattr(cam, k, v)
    obj = bpy.data.objects.new("Cam", cam)
    scene.collection.objects.link(obj)
    obj.location, obj.rotation_euler = location, rotation
    scene.camera = obj
    bpy.context.view_layer.update()
    return obj

def f12(path):
    scene.render.filepath = path
    bpy.ops.render.render(write_still=True)

def cam_info(obj):
    c = obj.data
    return {"matrix_world": [list(r) for r in obj.matrix_world], "type": c.type, "lens": c.lens,
            "ortho_scale": c.ortho_scale, "sensor_width": c.sensor_width, "sensor_height": c.sensor_height,
            "sensor_fit": c.sensor_fit, "shift_x": c.shift_x, "shift_y": c.shift_y,
            "clip_start": c.clip_start, "clip_end": c.clip_end}
"""

AVATAR_RENDER = SETUP + """
arm = ADDON.importer.import_avatar(bpy.context, ARGS["bundle"])
jaw = arm.pose.bones["jaw"]
jaw.rotation_mode = "ZXY"
jaw.rotation_euler = (0.0, 0.0, 0.0)
jaw.keyframe_insert("rotation_euler", frame=1)
jaw.rotation_euler = (math.radians(ARGS["jaw_deg"]), 0.0, 0.0)
jaw.keyframe_insert("rotation_euler", frame=2)
cam = add_camera((0.0, -0.75, 0.02), (math.radians(90), 0.0, 0.0), lens=70.0)
r = scene.render
r.resolution_x, r.resolution_y, r.resolution_percentage = 320, 320, 50
r.film_transparent = True
bpy.context.view_layer.use_pass_z = True
out = {}
for frame in (1, 2):
    scene.frame_set(frame)
    f12(ARGS["out"] + f"/frame{frame}.png")
out["timings"] = type(ADDON.render_engine.PointillistRenderEngine.last_timings)(
    ADDON.render_engine.PointillistRenderEngine.last_timings)
# the world colour instead of a transparent film
r.film_transparent = False
world = bpy.data.worlds.new("W"); scene.world = world
world.color = (0.2, 0.05, 0.02)
if hasattr(world, "use_nodes") and bpy.app.version < (5, 0, 0):
    world.use_nodes = True  # Blender 5 worlds always use nodes
bg = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
bg.inputs["Color"].default_value = (0.1, 0.025, 0.01, 1.0)
bg.inputs["Strength"].default_value = 2.0  # the camera sees colour x strength
scene.frame_set(1)
f12(ARGS["out"] + "/world.png")
# a border: the same pixels as the full frame, inside the border only
r.film_transparent = True
r.use_border, r.use_crop_to_border = True, True
r.border_min_x, r.border_max_x, r.border_min_y, r.border_max_y = 0.25, 0.8, 0.3, 0.9
f12(ARGS["out"] + "/border.png")
r.use_border = False
emit(camera=cam_info(cam), view_transform=view_transform, **out)
"""


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGBA"), np.float32) / 255.0


def _direct_render(server, avatar, head, jaw_deg: float, camera: dict, size: int,
                   background=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The service's own render of `animate()`'s Gaussians (Blender axes), as 8-bit RGBA / 255."""
    import io

    from PIL import Image
    from pointillist.avatar.animate import AvatarAnimator
    from pointillist.render.camera import (
        blender_intrinsics,
        blender_matrix_world_to_viewmat,
    )
    from pointillist.server.render_payload import (
        FrameObject,
        ObjectAttributes,
        RenderRequest,
        encode_object,
        encode_render,
    )

    g = avatar.gaussians
    pose = np.zeros((5, 3), np.float32)
    pose[2, 0] = math.radians(jaw_deg)
    posed = AvatarAnimator(avatar, head)(None, pose)
    sh = np.concatenate([g.sh_dc[:, None], g.sh_rest], axis=1).astype(np.float32)
    attrs = ObjectAttributes(opacities=g.opacities().astype(np.float32), scales=g.scales().astype(np.float32),
                             sh=sh, rest_quats=g.quats.astype(np.float32))
    assert server.client.put("/v1/objects/direct", content=encode_object(attrs),
                             headers={"Content-Type": "application/octet-stream"}).status_code == 200
    means = rig_build.to_blender(posed.means[0].numpy())
    quats = rig_build.quats_to_blender(posed.quats[0].numpy())
    viewmat = blender_matrix_world_to_viewmat(np.array(camera["matrix_world"]))
    K = blender_intrinsics(camera["lens"], camera["sensor_width"], camera["sensor_height"], camera["sensor_fit"],
                           0.0, 0.0, size, size)
    body = encode_render(RenderRequest(width=size, height=size, near=camera["clip_start"], far=camera["clip_end"],
                                       background=np.array(background, np.float32), viewmat=viewmat, K=K,
                                       objects=[FrameObject("direct", means, quats)]))
    answer = server.client.post("/v1/render", content=body, headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    return np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGBA"), np.float32) / 255.0


def test_f12_matches_the_backend_and_a_keyed_jaw_moves_only_the_lower_face(blender, live_server, avatar_bundles,
                                                                            head, tmp_path):
    from pointillist.avatar.bundle import read_bundle

    got = blender.run(AVATAR_RENDER, url=live_server.url, token=live_server.token, bundle=str(avatar_bundles["zip"]),
                      out=str(tmp_path), jaw_deg=JAW_DEG)
    assert got["view_transform"] == "Standard"
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("frame1", "frame2", "world", "border"):
        shutil.copy(tmp_path / f"{name}.png", OUT / f"{blender.label}_{name}.png")
    rest, keyed = _read_png(tmp_path / "frame1.png"), _read_png(tmp_path / "frame2.png")
    assert rest.shape == (160, 160, 4)

    avatar = read_bundle(avatar_bundles["zip"])
    for image, jaw in ((rest, 0.0), (keyed, JAW_DEG)):
        want = _direct_render(live_server, avatar, head, jaw, got["camera"], 160)
        alpha = image[..., 3]
        assert (alpha > 0.5).mean() > 0.15  # the head covers a good part of the frame
        np.testing.assert_array_less(np.abs(alpha - want[..., 3]), 2.01 / 255)
        # Blender writes straight alpha; the service composited over black (premultiplied)
        np.testing.assert_array_less(np.abs(image[..., :3] * alpha[..., None] - want[..., :3]), 2.01 / 255 + 1e-6)

    # the jaw changes the lower face only: nothing above the eyes moves
    changed = np.abs(keyed - rest).max(axis=-1) > 4 / 255
    rows = np.nonzero(changed.any(axis=1))[0]
    assert changed.sum() > 50
    eye_row = _eye_row(avatar, head, got["camera"], 160)
    assert rows.min() > eye_row, (rows.min(), eye_row)

    # world colour behind the splats: corners are the world colour as the view shows it
    world = _read_png(tmp_path / "world.png")
    assert np.all(world[..., 3] == 1.0)
    np.testing.assert_allclose(world[0, 0, :3], linear_to_srgb(np.array([0.2, 0.05, 0.02])), atol=1.5 / 255)
    want_world = _direct_render(live_server, avatar, head, 0.0, got["camera"], 160,
                                background=linear_to_srgb(np.array([0.2, 0.05, 0.02])))
    np.testing.assert_array_less(np.abs(world[..., :3] - want_world[..., :3]), 2.01 / 255)

    # border (cropped): exactly the full frame's pixels inside it
    border = _read_png(tmp_path / "border.png")
    x0, x1, y0, y1 = int(0.25 * 160), int(0.8 * 160), 160 - int(0.9 * 160), 160 - int(0.3 * 160)
    assert border.shape == (y1 - y0, x1 - x0, 4)
    np.testing.assert_array_less(np.abs(border * border[..., 3:] - (rest * rest[..., 3:])[y0:y1, x0:x1]), 2.01 / 255)


def _eye_row(avatar, head, camera: dict, size: int) -> float:
    from pointillist.avatar.point_rig import build_point_rig
    from pointillist.render.camera import (
        blender_intrinsics,
        blender_matrix_world_to_viewmat,
        project_points,
    )

    joints = rig_build.to_blender(build_point_rig(avatar, head.data).rest_joints)
    viewmat = blender_matrix_world_to_viewmat(np.array(camera["matrix_world"]))
    K = blender_intrinsics(camera["lens"], camera["sensor_width"], camera["sensor_height"], camera["sensor_fit"],
                           0.0, 0.0, size, size)
    uv, _ = project_points(joints[3:5], viewmat, K)
    return float(uv[:, 1].mean())


CAMERAS = SETUP + """
from bpy_extras.object_utils import world_to_camera_view
obj = ADDON.importer.import_avatar(bpy.context, ARGS["ply"])
pts = [tuple(v) for v in ARGS["points"]]
r = scene.render
r.resolution_x, r.resolution_y, r.resolution_percentage = 150, 100, 100
r.film_transparent = True
results = {}
cases = {
    "ortho_shift": dict(type="ORTHO", ortho_scale=0.5, shift_x=0.12, shift_y=-0.08, sensor_fit="AUTO"),
    "persp_vertical": dict(type="PERSP", lens=40.0, shift_x=-0.1, shift_y=0.15, sensor_fit="VERTICAL",
                           sensor_height=20.0),
}
for name, data in cases.items():
    cam = add_camera((0.03, -0.9, 0.05), (math.radians(88), 0.0, math.radians(4)), clip_start=0.05, **data)
    f12(ARGS["out"] + f"/{name}.png")
    dg = bpy.context.evaluated_depsgraph_get()
    from mathutils import Vector
    where = [list(world_to_camera_view(scene, cam, Vector(p))) for p in pts]
    proj = cam.calc_matrix_camera(dg, x=r.resolution_x, y=r.resolution_y)
    results[name] = {"where": where, "camera": cam_info(cam), "window": [list(row) for row in proj],
                     "view": [list(row) for row in cam.matrix_world.inverted()]}
    bpy.data.objects.remove(cam)
# a modifier that changes the point count: an error naming the object, not misplaced splats
add_camera((0.03, -0.9, 0.05), (math.radians(88), 0.0, 0.0))
dots = next(o for o in scene.objects if o.type == "MESH")
weld = dots.modifiers.new("Weld", "WELD")
weld.merge_threshold = 1.0
try:
    f12(ARGS["out"] + "/weld.png")
    results["weld"] = "rendered"
except RuntimeError as exc:
    results["weld"] = str(exc)
dots.modifiers.remove(weld)
# no camera: an error the artist can read, not a crash
scene.camera = None
try:
    f12(ARGS["out"] + "/none.png")
    results["no_camera"] = "rendered"
except RuntimeError as exc:
    results["no_camera"] = str(exc)
emit(**results)
"""


@pytest.fixture(scope="module")
def dots_ply(tmp_path_factory):
    """Three small opaque splats of distinct colours at known world points (a plain 3DGS PLY)."""
    from pointillist.avatar.gaussians import Gaussians
    from pointillist.avatar.ply import write_gaussian_ply

    world = np.array([[0.0, 0.0, 0.0], [0.12, 0.05, 0.08], [-0.1, -0.04, -0.07]], np.float32)
    colours = np.eye(3, dtype=np.float32)
    g = Gaussians(means=rig_build.from_blender(world), log_scales=np.full((3, 3), math.log(0.006), np.float32),
                  quats=np.tile(np.float32([1, 0, 0, 0]), (3, 1)), opacity_logits=np.full(3, 6.0, np.float32),
                  sh_dc=((colours - 0.5) / 0.28209479177387814).astype(np.float32),
                  sh_rest=np.zeros((3, 0, 3), np.float32))
    path = tmp_path_factory.mktemp("dots") / "dots.ply"
    write_gaussian_ply(path, g)
    return path, world


def test_orthographic_and_shifted_cameras_put_splats_where_blender_projects_them(blender, live_server, dots_ply,
                                                                                  tmp_path):
    path, world = dots_ply
    got = blender.run(CAMERAS, url=live_server.url, token=live_server.token, ply=str(path), out=str(tmp_path),
                      points=world.tolist())
    assert "camera" in got["no_camera"], got["no_camera"]
    assert "modifiers make 1 points out of 3 Gaussians" in got["weld"], got["weld"]
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("ortho_shift", "persp_vertical"):
        shutil.copy(tmp_path / f"{name}.png", OUT / f"{blender.label}_{name}.png")
        image = _read_png(tmp_path / f"{name}.png")
        assert image.shape == (100, 150, 4)
        case = got[name]
        for c, (x, y, _) in enumerate(case["where"]):
            want = np.array([x * 150, (1 - y) * 100])  # world_to_camera_view: y from the bottom
            weight = image[..., c] * image[..., 3] * (image[..., (c + 1) % 3] < 0.3)
            assert weight.sum() > 1.0, (name, c)
            ys, xs = np.mgrid[0:100, 0:150] + 0.5
            centroid = np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()
            np.testing.assert_allclose(centroid, want, atol=0.75, err_msg=f"{name} splat {c}")
        # the bridge's camera from Blender's parameters equals the one from Blender's own projection matrix
        cam = case["camera"]
        params = rb.CameraParams(matrix_world=np.array(cam["matrix_world"]), kind=cam["type"], lens=cam["lens"],
                                 ortho_scale=cam["ortho_scale"], sensor_width=cam["sensor_width"],
                                 sensor_height=cam["sensor_height"], sensor_fit=cam["sensor_fit"],
                                 shift_x=cam["shift_x"], shift_y=cam["shift_y"], clip_start=cam["clip_start"],
                                 clip_end=cam["clip_end"])
        ours = rb.view_from_camera(params, rb.render_region(150, 100, 100, None))
        theirs = rb.view_from_matrices(np.array(case["view"]), np.array(case["window"]), 150, 100)
        assert ours.ortho == theirs.ortho == (cam["type"] == "ORTHO")
        np.testing.assert_allclose(ours.K, theirs.K, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(ours.viewmat, theirs.viewmat, atol=1e-5)
        assert ours.near == pytest.approx(theirs.near, rel=1e-3) and ours.far == pytest.approx(theirs.far, rel=1e-3)
