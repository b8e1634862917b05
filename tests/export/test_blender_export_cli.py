"""`pointillist export --format fbx|usd`: the CLI runs Blender's exporters in a bpy subprocess (issue 7, item 3).

The files are read back independently: FBX by Blender's FBX importer in another fresh bpy process (no add-on),
USD as text (.usda primvars). Argument and environment errors are one line, before any Blender starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pointillist.cli import EXIT_USAGE, main

from ..blender.test_export_rig import usda_primvars

needs_bpy = pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="no bpy in this environment")

READ_FBX = textwrap.dedent(
    """
    import json, sys
    import bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=sys.argv[1], anim_offset=0.0)
    scene = bpy.context.scene
    arm = next(o for o in scene.objects if o.type == "ARMATURE")
    obj = next(o for o in scene.objects if o.type == "MESH")
    def points(frame):
        scene.frame_set(frame)
        ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        return [list(ev.matrix_world @ v.co) for v in ev.to_mesh().vertices]
    rest, talking = points(1), points(int(sys.argv[2]))
    key_action = obj.data.shape_keys.animation_data.action if obj.data.shape_keys.animation_data else None
    print(json.dumps({"bones": sorted(arm.data.bones.keys()), "points": len(obj.data.vertices),
                      "shape_keys": [k.name for k in obj.data.shape_keys.key_blocks[1:]],
                      "bone_action": list(arm.animation_data.action.frame_range) if arm.animation_data and arm.animation_data.action else None,
                      "key_action": list(key_action.frame_range) if key_action else None,
                      "moved": max(sum((a - b) ** 2 for a, b in zip(p, q)) ** 0.5 for p, q in zip(rest, talking))}))
    import os; os._exit(0)
    """
)


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and lines else None), captured.err


def read_fbx(path: Path, frame: int, tmp_path: Path) -> dict:
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender-user")}
    proc = subprocess.run([sys.executable, "-c", READ_FBX, str(path), str(frame)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_bpy
def test_fbx_with_blink_and_talk_reads_back_in_blender(bundle, procedural_avatar, head, tmp_path, capsys):
    out = tmp_path / "avatar.fbx"
    code, summary, err = run_cli(capsys, "export", bundle, "--format", "fbx", "-o", out, "--frames", "1:36")
    assert code == 0, err
    assert summary["frames"] == [1, 36] and summary["bytes"] == out.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["avatar.fbx"]  # no temp files beside it
    read = read_fbx(out, 18, tmp_path)
    assert read["bones"] == ["jaw", "left_eye", "neck", "right_eye", "root"]
    assert read["points"] == procedural_avatar.gaussians.num
    assert read["shape_keys"] == list(head.expr_names)  # the procedural head has no pose correctives
    assert read["bone_action"] == [1.0, 36.0] and read["key_action"] == [1.0, 36.0]
    assert read["moved"] > 1e-3  # mid-clip the face has moved (jaw, lips, a head turn)


@needs_bpy
def test_usd_at_rest_carries_the_gaussian_attributes(bundle, procedural_avatar, tmp_path, capsys):
    from pointillist.avatar.bundle import read_bundle

    out = tmp_path / "avatar.usda"
    code, summary, err = run_cli(capsys, "export", bundle, "--format", "usd", "-o", out)
    assert code == 0, err
    assert summary["frames"] is None
    primvars = usda_primvars(out)
    g = read_bundle(bundle).gaussians
    n = procedural_avatar.gaussians.num
    np.testing.assert_allclose(primvars["opacity"][2], g.opacity_logits, rtol=1e-6, atol=1e-6)
    for c in range(3):
        np.testing.assert_allclose(primvars[f"f_dc_{c}"][2], g.sh_dc[:, c], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(primvars[f"scale_{c}"][2], g.log_scales[:, c], rtol=1e-6, atol=1e-6)
    assert all(primvars[f"rot_{c}"][2].shape == (n,) for c in range(4))  # rotations, in Blender axes
    text = out.read_text()
    assert "SkelRoot" in text and "BlendShape" in text and "timeSamples" not in text  # rig, shapes, no animation


def test_user_errors_are_one_line(bundle, tmp_path, capsys):
    cases = [
        (["--format", "fbx", "-o", tmp_path / "a.obj"], "fbx files end in .fbx"),
        (["--format", "usd", "-o", tmp_path / "a.usd", "--frame", "3"], "--frame, --motion and pose options"),
        (["--format", "usd", "-o", tmp_path / "a.usd", "--jaw", "10"], "--frame, --motion and pose options"),
        (["--format", "fbx", "-o", tmp_path / "a.fbx", "--frames", "5:2"], "LAST >= FIRST"),
        (["--format", "fbx", "-o", tmp_path / "a.fbx", "--frames", "1:10"], "needs at least 1 s"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(capsys, "export", bundle, *extra)
        assert code == EXIT_USAGE and message in err, (extra, err)
        assert "Traceback" not in err
    code, _, err = run_cli(capsys, "export", tmp_path / "missing", "--format", "fbx", "-o", tmp_path / "a.fbx")
    assert code == EXIT_USAGE and "no such bundle" in err
    assert list(tmp_path.iterdir()) == []


@needs_bpy
def test_a_broken_bundle_is_reported_from_the_blender_process(tmp_path, capsys):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip")
    code, _, err = run_cli(capsys, "export", broken, "--format", "fbx", "-o", tmp_path / "a.fbx")
    assert code == EXIT_USAGE, err
    assert err.startswith("error: ") and "broken.zip" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.zip"]


def test_without_bpy_or_the_add_on_source_the_reason_is_given(monkeypatch, tmp_path, bundle):
    from pointillist.export import blender_export
    from pointillist.export.errors import ExportError

    assert blender_export.unavailable_reason(tmp_path) is not None and "add-on" in blender_export.unavailable_reason(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bpy" else real(name, *a))
    with pytest.raises(ExportError, match="no `bpy`"):
        blender_export.export_with_blender(bundle, "usd", tmp_path / "a.usdc")
    assert list(tmp_path.iterdir()) == []
