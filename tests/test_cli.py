"""The command line end to end, in real subprocesses: outputs, exit codes, no tracebacks, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "backend")}
    return subprocess.run([sys.executable, "-m", "pointillist.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "avatar"
    proc = run("synth", "--seed", "7", "--style", "short", "--density", "0.2", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["gaussians"] > 500
    return out


def test_synth_writes_a_bundle_with_preview(bundle):
    assert (bundle / "avatar.ply").is_file() and (bundle / "avatar.json").is_file()
    preview = np.asarray(Image.open(bundle / "preview.png"))
    assert preview.std() > 10  # not a blank image


def test_render_posed_png(bundle, tmp_path):
    out = tmp_path / "posed.png"
    proc = run("render", str(bundle), "-o", str(out), "--expr", "mouthSmileLeft=0.8", "--expr", "jawOpen=0.3",
               "--jaw", "5", "--neck-yaw", "10", "--gaze", "10", "5", "--yaw", "20", "--size", "160", "120")
    assert proc.returncode == 0, proc.stderr
    image = Image.open(out)
    assert image.size == (160, 120)
    rest = tmp_path / "rest.png"
    assert run("render", str(bundle), "-o", str(rest), "--yaw", "20", "--size", "160", "120").returncode == 0
    assert np.abs(np.asarray(image, float) - np.asarray(Image.open(rest), float)).mean() > 0.5  # the pose shows


def test_preview_gifs(bundle, tmp_path):
    for mode, extra in (("--turntable", ["--frames", "4"]), ("--talk", ["--seconds", "0.4", "--fps", "10"])):
        out = tmp_path / f"{mode[2:]}.gif"
        proc = run("preview", str(bundle), "-o", str(out), mode, "--size", "96", "96", *extra)
        assert proc.returncode == 0, proc.stderr
        gif = Image.open(out)
        assert gif.n_frames == 4


def test_contact_sheet(tmp_path):
    out = tmp_path / "sheet.png"
    proc = run("head", "contact-sheet", "-o", str(out), "--tile", "64")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size[0] == 8 * 64


def test_unknown_expression_is_a_clear_error(bundle, tmp_path):
    out = tmp_path / "x.png"
    assert_user_error(run("render", str(bundle), "-o", str(out), "--expr", "smiley=1"), "unknown expression 'smiley'")
    assert not out.exists()


def test_bad_bundles_exit_2_without_traceback(bundle, tmp_path):
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (bundle / "avatar.ply").read_bytes()
    (truncated / "avatar.ply").write_bytes(data[: len(data) // 2])
    (truncated / "avatar.json").write_text((bundle / "avatar.json").read_text())
    out = tmp_path / "out.png"
    assert_user_error(run("render", str(truncated), "-o", str(out)))
    assert_user_error(run("render", str(tmp_path / "missing"), "-o", str(out)))
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    assert_user_error(run("render", str(evil), "-o", str(out)))
    assert not (tmp_path.parent / "escape.txt").exists()
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_bad_flame_file_exits_2(tmp_path):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    out = tmp_path / "flame.npz"
    assert_user_error(run("head", "import-flame", str(junk), "-o", str(out)))
    assert not out.exists()


@pytest.mark.slow
def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    proc = run("demo", "-o", str(out), "--quick")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["avatars"]) >= 2
    for name in ("head_contact_sheet.png", "fit/overlay.png", "fit/fit.json", "renders/overview.png", "preview_turntable.gif", "preview_talk.gif",
                 "create/astronaut/avatar.ply", "create/compare.png", "create/turntable.gif"):
        assert (out / name).is_file(), name
    assert Image.open(out / "preview_talk.gif").n_frames > 5
    assert 64 <= summary["create"]["points"] <= 1024 and summary["create"]["gaussians"] >= summary["create"]["points"]
    import importlib.util

    if importlib.util.find_spec("bpy") is not None:  # bpy here: the .blend, the clip's frames and the exports
        assert summary["blender"], "bpy is installed, so the demo must open the avatar in Blender"
        assert (out / "blender" / "avatar.blend").is_file()
        frames = sorted((out / "blender" / "frames").glob("*.png"))
        assert len(frames) == len(summary["blender"]["renders"]) >= 2
        assert {p.name for p in (out / "blender" / "exports").iterdir()} >= {"avatar.fbx", "avatar.usdc", "avatar_rig.glb"}


def test_fit_writes_crop_matte_fit_and_overlay(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    portrait = tmp_path / "astronaut.jpg"
    Image.fromarray(skimage_data.astronaut()).save(portrait, quality=95)
    out = tmp_path / "fit"
    proc = run("fit", str(portrait), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in ("crop.png", "matte.png", "fit.json", "overlay.png"):
        assert (out / name).is_file(), name
    fit = json.loads((out / "fit.json").read_text())
    assert fit["fit"]["error_iod"] < 0.02
    assert len(fit["detected_landmarks"]) == 478 and fit["crop_transform"]["size"] == 512
    assert Image.open(out / "crop.png").size == (512, 512)
    assert_user_error(run("fit", str(portrait), "-o", str(out)), "already holds")


def test_fit_bad_portraits_exit_2_and_write_nothing(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a photo")
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    for name, message in (("notes.jpg", "not an image"), ("noise.png", "no human face found"), ("missing.png", "not found")):
        out = tmp_path / f"out-{name}"
        assert_user_error(run("fit", str(tmp_path / name), "-o", str(out)), message)
        assert not out.exists() or not any(out.iterdir())


def test_entry_points_let_openmp_threads_sleep_before_torch_loads():
    """`pointillist …` and `python -m pointillist.server` set OMP_WAIT_POLICY=PASSIVE before torch is imported
    (spinning OpenMP threads made the numba rasterizer ~5x slower), and an explicit setting wins."""
    import os
    import subprocess
    import sys

    probe = ("import os, sys\n"
             "from pointillist.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n")
    server = "import os, sys, pointillist.server.__main__\nprint(os.environ.get('OMP_WAIT_POLICY'))\n"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[-2:] == ["PASSIVE", "False"]
    out = subprocess.run([sys.executable, "-c", server], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[-1] == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", server], capture_output=True, text=True,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, check=True)
    assert out.stdout.split()[-1] == "ACTIVE"
