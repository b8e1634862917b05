"""Benchmark: importing an avatar into Blender, evaluating the rigged avatar per frame, and the Geometry Nodes
splat display, at 20k and 50k Gaussians.

Prints a Markdown table and one JSON line. Run: `.venv/bin/python benchmarks/bench_blender_import.py [--quick]`.
Bundles are built here (torch); Blender runs in a subprocess of the same interpreter (bpy and torch never share
a process). Import time is `import_avatar` end to end (read + check the bundle, blend the rig, build mesh,
attributes, vertex groups, shape keys, armature, display); per-frame time is `frame_set` on a keyed clip plus
reading the evaluated positions; the display's cost is the same with the Geometry Nodes modifier on minus off.
Goal: import <= 1 s at 20k.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))
sys.path.insert(0, str(ROOT / "benchmarks"))

BLENDER_SCRIPT = textwrap.dedent(
    """
    import json, statistics, sys, time
    from pathlib import Path
    import bpy, addon_utils
    import numpy as np
    from pointillist.blender_scene import enable_source_addon, extension_repo, ADDON_MODULE
    args = json.loads(sys.argv[-1])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    repo = extension_repo(Path(args["addon"]), Path(args["head"]))
    addon = enable_source_addon(repo)
    from importlib import import_module
    source = import_module(ADDON_MODULE + ".avatar_source")
    rows = []
    for n, bundle in args["bundles"]:
        imports, reads = [], []
        for r in range(args["repeats"]):
            for ob in list(bpy.data.objects):
                bpy.data.objects.remove(ob)
            for coll in (bpy.data.meshes, bpy.data.armatures, bpy.data.actions):
                for block in list(coll):
                    coll.remove(block)
            t = time.perf_counter(); source.load_avatar(bundle); reads.append(time.perf_counter() - t)
            t = time.perf_counter(); arm = addon.importer.import_avatar(bpy.context, bundle); imports.append(time.perf_counter() - t)
        _, pts = addon.importer.avatar_parts(arm)
        scene = bpy.context.scene
        scene.frame_start, scene.frame_end = 1, 72
        bpy.ops.avatar.blink_and_talk(seconds=3.0)
        co = np.empty(n * 3, np.float32)
        gn = pts.modifiers["Splats"]

        def per_frame(frames):
            samples = []
            for f in frames:
                t = time.perf_counter()
                scene.frame_set(f)
                ev = pts.evaluated_get(bpy.context.evaluated_depsgraph_get())
                ev.data.vertices.foreach_get("co", co)
                samples.append(time.perf_counter() - t)
            return statistics.median(samples) * 1000

        frames = list(range(2, 2 + args["frames"]))
        gn.show_viewport = False
        per_frame(frames[:2]); off = per_frame(frames)
        gn.show_viewport = True
        per_frame(frames[:2]); on = per_frame(frames)
        rows.append({"gaussians": n, "import_s": round(statistics.median(imports), 3),
                     "read_and_rig_s": round(statistics.median(reads), 3), "frame_ms": round(off, 1),
                     "frame_with_display_ms": round(on, 1), "display_ms": round(on - off, 1)})
    print("RESULT " + json.dumps({"rows": rows, "blender": ".".join(map(str, bpy.app.version))}))
    """
)


def make_bundles(sizes: list[int], folder: Path) -> list[tuple[int, str]]:
    from bench_animate import (
        random_avatar,  # a bound avatar of exactly n Gaussians on the template
    )
    from pointillist.avatar.bundle import write_bundle
    from pointillist.head.model import HeadModel

    head = HeadModel.load()
    out = []
    for n in sizes:
        path = folder / f"bench_{n}.zip"
        write_bundle(random_avatar(head, n), path)
        out.append((n, str(path)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--python", default=sys.executable, help="an interpreter with bpy (default: this one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-blender-") as tmp:
        bundles = make_bundles([20_000, 50_000], Path(tmp))
        spec = {"addon": str(ROOT / "addon"), "head": str(ROOT / "blender_assets" / "head_template.npz"),
                "bundles": bundles, "repeats": 1 if args.quick else 3, "frames": 5 if args.quick else 20}
        script = Path(tmp) / "bench.py"
        script.write_text(BLENDER_SCRIPT)
        env = {**os.environ, "BLENDER_USER_RESOURCES": str(Path(tmp) / "user"),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "backend"), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([args.python, str(script), json.dumps(spec)], capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            sys.exit(f"Blender benchmark failed:\n{proc.stderr[-3000:]}")
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    rows = result["rows"]
    print(f"Blender {result['blender']}, CPU")
    print("| Gaussians | import (s) | of which read + rig (s) | frame: set + evaluate + read (ms) | same with splat display (ms) | display (ms) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['gaussians']:,} | {r['import_s']} | {r['read_and_rig_s']} | {r['frame_ms']} | {r['frame_with_display_ms']} | {r['display_ms']} |")
    print(json.dumps({"bench": "blender_import", "device": "cpu", "blender": result["blender"], "results": rows}))


if __name__ == "__main__":
    main()
