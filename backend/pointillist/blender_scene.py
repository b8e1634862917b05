"""Open an avatar bundle in headless Blender with the add-on, key the blink-and-talk clip, save a .blend,
render the clip through the "Gaussian Splats" engine and write the exports next to the .blend.

Run in an interpreter that has `bpy` (the demo starts it as a subprocess, so bpy never shares a process with
torch): `python -m pointillist.blender_scene BUNDLE OUT.blend [--addon ADDON_DIR] [--render-size N]
[--frame-step K] [--no-render]`. The add-on is loaded from its source folder the way Blender loads an
installed extension; for renders it starts its local backend with this same interpreter and stops it at the
end. Every file (the .blend, each frame, each export) is written to a temp name and moved into place, so an
artist never opens half a file. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADDON_MODULE = "bl_ext.pointillist_demo.pointillist"


def extension_repo(addon_dir: Path, head_model: Path, repo: Path | None = None) -> Path:
    """A throw-away extension repository (`repo`, or a new temp folder) holding `pointillist/`: the source
    add-on, its manifest and `assets/head_template.npz`, all symlinks (edits show), laid out as the zip."""
    repo = Path(tempfile.mkdtemp(prefix="pointillist-ext-")) if repo is None else repo
    pkg = repo / "pointillist"
    pkg.mkdir()
    for entry in addon_dir.iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    manifest = addon_dir.parent / "blender_manifest.toml"
    if not (pkg / "blender_manifest.toml").exists():
        (pkg / "blender_manifest.toml").symlink_to(manifest)
    if not (pkg / "assets").exists():
        (pkg / "assets").mkdir()
        (pkg / "assets" / "head_template.npz").symlink_to(head_model)
    return repo


def enable_source_addon(repo: Path, repo_name: str = "pointillist_demo"):
    """Register `repo` (from `extension_repo`) as a user extension repository and enable the add-on in it,
    as Blender does an installed extension; returns the add-on module. Call inside a bpy process."""
    import importlib

    import bpy

    addon_utils = importlib.import_module("addon_utils")  # only importable once bpy has set up its script paths
    bpy.context.preferences.extensions.repos.new(name=repo_name, module=repo_name, custom_directory=str(repo),
                                                 source="USER")
    module = f"bl_ext.{repo_name}.pointillist"
    addon_utils.enable(module, default_set=True, handle_error=None)
    return sys.modules[module]


def render_clip(scene, frames_dir: Path, size: int, step: int) -> list[str]:
    """F12 of every `step`-th frame of the scene's range through the add-on's render engine -> PNGs."""
    import bpy

    scene.render.engine = "POINTILLIST_SPLATS"
    bpy.context.view_layer.update()  # the engine's handler switches the view transform to Standard once
    r = scene.render
    r.resolution_x = r.resolution_y = size
    r.resolution_percentage = 100
    r.film_transparent = False
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGB"
    frames_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for frame in range(scene.frame_start, scene.frame_end + 1, step):
        scene.frame_set(frame)
        final = frames_dir / f"{frame:04d}.png"
        tmp = frames_dir / f".{frame:04d}.{uuid.uuid4().hex[:8]}.png"
        r.filepath = str(tmp)
        try:
            bpy.ops.render.render(write_still=True)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(str(final))
    scene.frame_set(scene.frame_start)
    return written


def write_exports(addon, arm, folder: Path) -> dict[str, str]:
    """The rigged avatar as FBX, USD and glTF (Blender's exporters, clip included) and Inria PLYs at rest
    and posed at the clip's middle frame."""
    import bpy

    context = bpy.context
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for fmt, name in (("fbx", "avatar.fbx"), ("usd", "avatar.usdc"), ("gltf", "avatar_rig.glb")):
        files[fmt] = str(addon.export_rig.export_rig(context, arm, fmt, str(folder / name), animation=True))
    _, points = addon.importer.avatar_parts(arm)
    scene = context.scene
    files["ply_rest"] = str(addon.export_ply.write_ply(folder / "avatar_rest.ply", addon.export_ply.rest_gaussians(points)))
    scene.frame_set((scene.frame_start + scene.frame_end) // 2)
    posed = addon.export_ply.posed_gaussians(points, context.evaluated_depsgraph_get())
    files["ply_posed"] = str(addon.export_ply.write_ply(folder / f"avatar_frame{scene.frame_current:04d}.ply", posed))
    scene.frame_set(scene.frame_start)
    return files


def build_scene(bundle: Path, out: Path, addon_dir: Path, head_model: Path, render_size: int = 0,
                frame_step: int = 1) -> dict:
    import importlib

    import bpy

    addon_utils = importlib.import_module("addon_utils")  # only importable once bpy has set up its script paths

    bpy.ops.wm.read_factory_settings(use_empty=True)
    repo = extension_repo(addon_dir, head_model)
    try:
        addon = enable_source_addon(repo)
        arm = addon.importer.import_avatar(bpy.context, str(bundle))
        scene = bpy.context.scene
        scene.render.fps, scene.frame_start, scene.frame_end = 24, 1, 72
        bpy.ops.avatar.blink_and_talk(seconds=3.0)
        bpy.ops.avatar.add_gaze_target()
        cam_data = bpy.data.cameras.new("Camera")
        cam_data.lens = 85.0
        cam = bpy.data.objects.new("Camera", cam_data)
        cam.location = (0.0, -0.75, 0.02)
        cam.rotation_euler = (1.5708, 0.0, 0.0)  # looks along +Y, at the face (which looks toward -Y)
        scene.collection.objects.link(cam)
        scene.camera = cam
        scene.frame_set(scene.frame_start)
        scene.render.engine = "POINTILLIST_SPLATS"  # F12 works as soon as the artist opens the file
        bpy.context.view_layer.update()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.stem}.{uuid.uuid4().hex[:8]}.blend"
        bpy.context.preferences.filepaths.save_version = 0  # no .blend1 backups beside the temp name
        try:
            bpy.ops.wm.save_as_mainfile(filepath=str(tmp), copy=True, check_existing=False)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        _, points = addon.importer.avatar_parts(arm)
        summary = {"blend": str(out), "armature": arm.name, "points": len(points.data.vertices),
                   "shape_keys": len(points.data.shape_keys.key_blocks) - 1,
                   "frames": [scene.frame_start, scene.frame_end], "blender": ".".join(map(str, bpy.app.version))}
        summary["exports"] = write_exports(addon, arm, out.parent / "exports")
        if render_size:
            prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
            prefs.backend_mode, prefs.python_path = "LOCAL", sys.executable  # this interpreter has the backend
            cache = Path(tempfile.mkdtemp(prefix="pointillist-backend-"))  # the backend's data; log on failure
            prefs.cache_dir = str(cache)
            try:
                summary["renders"] = render_clip(scene, out.parent / "frames", render_size, frame_step)
            except Exception as exc:
                log = cache / "backend.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"rendering the clip failed: {exc}\n{tail}") from exc
            finally:
                addon.backend_manager.MANAGER.stop()
                shutil.rmtree(cache, ignore_errors=True)
        return summary
    finally:
        if ADDON_MODULE in sys.modules:
            addon_utils.disable(ADDON_MODULE, default_set=True, handle_error=None)  # stops its backend
        shutil.rmtree(repo, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--addon", type=Path, default=ROOT / "addon")
    parser.add_argument("--head-model", type=Path, default=ROOT / "blender_assets" / "head_template.npz")
    parser.add_argument("--render-size", type=int, default=384, help="F12 size of the clip's frames in pixels")
    parser.add_argument("--frame-step", type=int, default=1, help="render every K-th frame")
    parser.add_argument("--no-render", action="store_true", help="skip the renders (no backend needed)")
    args = parser.parse_args(argv)
    summary = build_scene(args.bundle, args.out, args.addon, args.head_model,
                          render_size=0 if args.no_render else args.render_size, frame_step=args.frame_step)
    print(json.dumps(summary))
    sys.stdout.flush()
    os._exit(0)  # bpy 4.2 can crash at interpreter exit after a glTF export; everything is written by now


if __name__ == "__main__":
    main()
