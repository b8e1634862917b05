"""FBX and USD of a bundle through Blender's own exporters, run in a `bpy` subprocess (issue 7, item 3).

The backend package never imports bpy: `export_with_blender` starts `python -m pointillist.export.blender_export`
with this same interpreter (bpy and torch never share a process), the way the demo opens its .blend
(`pointillist.blender_scene`). That child loads the add-on from its source folder as Blender loads an
installed extension, imports the bundle with it (rig, shape keys, Gaussian attributes), optionally keys the
add-on's blink-and-talk clip over a frame range, and calls the add-on's `export_rig`, so the CLI and File >
Export write the same file with the same exporter options. It prints one JSON line.

Stdlib only at import time: the CLI's parser reads `BLENDER_FORMATS` for `--help`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..blender_scene import ROOT, enable_source_addon, extension_repo
from .errors import ExportError

#: Formats written by Blender's exporters, and what each keeps (for the CLI's --help).
BLENDER_FORMATS: dict[str, str] = {
    "fbx": "FBX through Blender: armature, skin, shape keys, animation with --frames (no Gaussian attributes)",
    "usd": "USD through Blender (.usdc/.usda/.usdz): rig, skin, shape keys, animation and the Gaussian attributes",
}
#: File endings Blender's exporters accept per format.
EXTENSIONS: dict[str, tuple[str, ...]] = {"fbx": (".fbx",), "usd": (".usdc", ".usd", ".usda", ".usdz")}
ADDON_REPO = "pointillist_export"
#: Exit status of the child for a problem the user can fix (bad bundle, wrong file name): its message is shown.
EXIT_USER_ERROR = 3


def parse_frames(text: str) -> tuple[int, int]:
    """'FIRST:LAST' (1-based, inclusive) -> (first, last)."""
    first, sep, last = text.partition(":")
    try:
        a, b = int(first), int(last if sep else first)
    except ValueError:
        raise ExportError(f"frame range {text!r}: expected FIRST:LAST, e.g. 1:72") from None
    if a < 1 or b < a:
        raise ExportError(f"frame range {text!r}: frames start at 1 and LAST >= FIRST")
    return a, b


def unavailable_reason(addon_dir: Path = ROOT / "addon") -> str | None:
    """Why FBX/USD cannot be written here (no bpy, no add-on source), or None when they can."""
    if importlib.util.find_spec("bpy") is None:
        return ("FBX and USD exports run Blender's exporters, and this Python has no `bpy`: install the blender "
                "extra (pip install 'pointillist[blender]', bpy 5.0.1 on Python 3.11) or export from Blender with "
                "File > Export > Pointillist Avatar")
    if not (addon_dir / "__init__.py").is_file():
        return (f"FBX and USD exports use the Blender add-on's importer and exporter, and its source is not at "
                f"{addon_dir} (they work from a source checkout; in Blender use File > Export > Pointillist Avatar)")
    return None


def export_with_blender(bundle: os.PathLike, fmt: str, output: os.PathLike, *, frames: tuple[int, int] | None = None,
                        fps: float = 24.0, head_model: os.PathLike | None = None, timeout: float = 600.0) -> dict:
    """Write `output` as `fmt` ('fbx' or 'usd') from a bundle; returns the child's summary.

    `frames` keys the add-on's blink-and-talk clip over that range (at `fps`) and exports it as animation;
    without it the rig is exported at rest. Raises ExportError for problems a user can fix.
    """
    if fmt not in BLENDER_FORMATS:
        raise ExportError(f"{fmt!r} is not a Blender export; choose one of {', '.join(BLENDER_FORMATS)}")
    out = Path(output)
    if out.suffix.lower() not in EXTENSIONS[fmt]:
        raise ExportError(f"{out.name}: {fmt} files end in {' or '.join(EXTENSIONS[fmt])}")
    if not Path(bundle).exists():
        raise ExportError(f"{bundle}: no such bundle")
    if frames is not None and (frames[1] - frames[0] + 1) / fps < 1.0:
        raise ExportError(f"frames {frames[0]}:{frames[1]} at {fps:g} fps: the blink-and-talk clip needs at least 1 s")
    if (reason := unavailable_reason()) is not None:
        raise ExportError(reason)
    command = [sys.executable, "-m", "pointillist.export.blender_export", str(bundle), str(out), "--format", fmt,
               "--fps", str(fps)]
    if frames is not None:
        command += ["--frames", f"{frames[0]}:{frames[1]}"]
    if head_model is not None:
        command += ["--head", str(Path(head_model).resolve())]
    user_dir = tempfile.mkdtemp(prefix="pointillist-blender-")  # bpy must not write to ~/.config/blender
    backend = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "BLENDER_USER_RESOURCES": user_dir,
           "PYTHONPATH": os.pathsep.join(p for p in (backend, os.environ.get("PYTHONPATH")) if p)}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ExportError(f"Blender's {fmt.upper()} export took longer than {timeout:g} s") from None
    finally:
        shutil.rmtree(user_dir, ignore_errors=True)
    if proc.returncode == EXIT_USER_ERROR:
        raise ExportError(proc.stderr.strip().splitlines()[-1].removeprefix("error: "))
    if proc.returncode != 0:
        raise RuntimeError(f"the Blender export process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ inside the bpy process
def _export_in_blender(bundle: Path, out: Path, fmt: str, frames: tuple[int, int] | None, fps: float,
                       head: Path | None, addon_dir: Path, head_asset: Path) -> dict:

    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    repo = extension_repo(addon_dir, head_asset)
    try:
        addon = enable_source_addon(repo, ADDON_REPO)
        if head is not None:
            addon.preferences.get_prefs(bpy.context).head_model = str(head)
        scene = bpy.context.scene
        scene.render.fps, scene.render.fps_base = round(fps), round(fps) / fps
        start = time.perf_counter()
        arm = addon.importer.import_avatar(bpy.context, str(bundle))
        import_seconds = time.perf_counter() - start
        if frames is not None:
            scene.frame_start, scene.frame_end = frames
            bpy.ops.avatar.blink_and_talk(seconds=(frames[1] - frames[0] + 1) / fps)
            scene.frame_end = frames[1]
            scene.frame_set(frames[0])
        start = time.perf_counter()
        path = addon.export_rig.export_rig(bpy.context, arm, fmt, str(out), animation=frames is not None)
        export_seconds = time.perf_counter() - start
        _, points = addon.importer.avatar_parts(arm)
        return {"format": fmt, "output": str(path), "bytes": path.stat().st_size, "points": len(points.data.vertices),
                "shape_keys": len(points.data.shape_keys.key_blocks) - 1, "bones": len(arm.data.bones),
                "frames": list(frames) if frames else None, "blender": ".".join(map(str, bpy.app.version)),
                "import_seconds": round(import_seconds, 3), "export_seconds": round(export_seconds, 3)}
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--format", required=True, choices=list(BLENDER_FORMATS))
    parser.add_argument("--frames", help="FIRST:LAST: key blink-and-talk over these frames and export the animation")
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--head", type=Path, help="head model .npz for bundles made on another model (FLAME)")
    parser.add_argument("--addon", type=Path, default=ROOT / "addon")
    parser.add_argument("--head-asset", type=Path, default=ROOT / "blender_assets" / "head_template.npz")
    args = parser.parse_args(argv)
    try:
        frames = parse_frames(args.frames) if args.frames else None
        summary = _export_in_blender(args.bundle, args.out, args.format, frames, args.fps, args.head, args.addon,
                                     args.head_asset)
    except (RuntimeError, ExportError) as exc:  # the add-on's readable failures (bad bundle, exporter error)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_USER_ERROR)
    print(json.dumps(summary), flush=True)
    os._exit(0)  # skip interpreter teardown: bpy 4.2 can crash there after an export, with the file already written


if __name__ == "__main__":
    main()
