"""The demo's Blender stage: a bundle opened in headless Blender, blink-and-talk keyed, saved as a .blend an
artist can open (re-opened here in a fresh Blender, which checks the file, not our process's memory), the
exports beside it and, where this interpreter also has the backend (Blender 5 here), the clip rendered through
the "Gaussian Splats" engine by a local backend the add-on starts and stops."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[2]


def test_blender_scene_saves_an_animated_avatar(blender, avatar_bundles, tmp_path):
    out = tmp_path / "scene" / "avatar.blend"
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "backend"), os.environ.get("PYTHONPATH", "")])}
    render = blender.label == "bpy5"  # the 4.2 environment has bpy only, no torch for a backend
    options = ["--render-size", "64", "--frame-step", "36"] if render else ["--no-render"]
    proc = subprocess.run([blender.python, "-m", "pointillist.blender_scene", str(avatar_bundles["zip"]), str(out),
                           *options], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["blend"] == str(out) and summary["points"] == avatar_bundles["count"]
    expected = ["avatar.blend", "exports"] + (["frames"] if render else [])
    assert sorted(p.name for p in out.parent.iterdir()) == expected  # no temp, backup or cache files left
    exports = sorted(p.name for p in (out.parent / "exports").iterdir())
    first, last = summary["frames"]
    middle = f"avatar_frame{(first + last) // 2:04d}.ply"
    assert exports == sorted(["avatar.fbx", "avatar.usdc", middle, "avatar_rest.ply", "avatar_rig.glb"])
    assert all((out.parent / "exports" / name).stat().st_size > 1000 for name in exports)
    if render:
        from PIL import Image

        frames = [np.asarray(Image.open(p), dtype=np.float32) for p in summary["renders"]]
        assert [Path(p).name for p in summary["renders"]] == [f"{f:04d}.png" for f in range(first, last + 1, 36)]
        for img in frames:
            assert img.shape == (64, 64, 3) and img.std() > 5  # an avatar on the background, not a blank frame
        assert max(np.abs(frames[0] - f).max() for f in frames[1:]) > 20  # the clip moves the face
    result = blender.run(
        """
        bpy.ops.wm.open_mainfile(filepath=ARGS["blend"])
        arm = next(o for o in bpy.data.objects if o.type == "ARMATURE")
        pts = next(o for o in bpy.data.objects if o.type == "MESH")
        scene = bpy.context.scene
        scene.frame_set(scene.frame_start)
        a = arm.pose.bones["jaw"].rotation_euler[0]
        scene.frame_set(scene.frame_start + 10)
        b = arm.pose.bones["jaw"].rotation_euler[0]
        emit(points=len(pts.data.vertices), keys=len(pts.data.shape_keys.key_blocks), jaw=[a, b],
             camera=scene.camera is not None, modifiers=[m.type for m in pts.modifiers],
             key_animated=pts.data.shape_keys.animation_data is not None)
        """,
        enable_addon=False, blend=str(out),
    )
    assert result["points"] == avatar_bundles["count"] and result["keys"] > 1
    assert result["jaw"][0] != result["jaw"][1]  # the clip plays without the add-on installed
    assert result["camera"] and result["modifiers"] == ["ARMATURE", "NODES"] and result["key_animated"]
