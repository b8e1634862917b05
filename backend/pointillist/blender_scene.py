"""Open an avatar bundle in headless Blender with the add-on, key the blink-and-talk clip, save a .blend.

Run in an interpreter that has `bpy` (the demo starts it as a subprocess, so bpy never shares a process with
torch): `python -m pointillist.blender_scene BUNDLE OUT.blend [--addon ADDON_DIR]`. The add-on is loaded
from its source folder the way Blender loads an installed extension. The .blend is written to a temp name
beside OUT and moved into place, so an artist never opens half a file. Prints one JSON line.
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


def extension_repo(addon_dir: Path, head_model: Path) -> Path:
    """A throw-away extension repository holding the source add-on (+ manifest and head model asset)."""
    repo = Path(tempfile.mkdtemp(prefix="pointillist-ext-"))
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


def build_scene(bundle: Path, out: Path, addon_dir: Path, head_model: Path) -> dict:
    import importlib

    import bpy

    addon_utils = importlib.import_module("addon_utils")  # only importable once bpy has set up its script paths

    bpy.ops.wm.read_factory_settings(use_empty=True)
    repo = extension_repo(addon_dir, head_model)
    try:
        bpy.context.preferences.extensions.repos.new(name="pointillist_demo", module="pointillist_demo",
                                                     custom_directory=str(repo), source="USER")
        addon_utils.enable(ADDON_MODULE, default_set=True, handle_error=None)
        addon = sys.modules[ADDON_MODULE]
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
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.stem}.{uuid.uuid4().hex[:8]}.blend"
        bpy.context.preferences.filepaths.save_version = 0  # no .blend1 backups beside the temp name
        try:
            bpy.ops.wm.save_as_mainfile(filepath=str(tmp), copy=True, check_existing=False)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        _, points = addon.importer.avatar_parts(arm)
        return {"blend": str(out), "armature": arm.name, "points": len(points.data.vertices),
                "shape_keys": len(points.data.shape_keys.key_blocks) - 1, "frames": [scene.frame_start, scene.frame_end],
                "blender": ".".join(map(str, bpy.app.version))}
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--addon", type=Path, default=ROOT / "addon")
    parser.add_argument("--head-model", type=Path, default=ROOT / "blender_assets" / "head_template.npz")
    args = parser.parse_args(argv)
    print(json.dumps(build_scene(args.bundle, args.out, args.addon, args.head_model)))


if __name__ == "__main__":
    main()
