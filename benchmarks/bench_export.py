"""Seconds per exported format for a 20k-Gaussian avatar, end to end from a loaded bundle to files on disk.

    .venv/bin/python benchmarks/bench_export.py [--quick]

The avatar is a procedural one (bound to the bundled head) cut to exactly 20,000 Gaussians, exported with
SH degree 0 (as the generator makes them) and with random SH bands 1-3 (as a refined or imported avatar
may carry; posed exports then rotate 45 coefficients per Gaussian). Rig set-up (`AvatarAnimator`) is part of
every posed figure, because each export builds it once. GaussianAvatars export needs a FLAME head model,
which the repository does not ship, so it is not timed here. Each figure is the median of a few runs.
FBX and USD (when this Python has bpy) are timed end to end through `export_with_blender` from a bundle on
disk: Blender's start, the add-on's import, keying blink-and-talk for a clip, and the exporter; the exporter's
own share is given in brackets.

Prints a Markdown table, then one JSON line: {"bench": "export", "results": [...]}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pointillist.avatar.bundle import write_bundle  # noqa: E402
from pointillist.avatar.controls import FaceControls  # noqa: E402
from pointillist.avatar.gaussians import Avatar, Binding  # noqa: E402
from pointillist.export.blender_export import export_with_blender, unavailable_reason  # noqa: E402
from pointillist.export.formats import ExportRequest, export_avatar  # noqa: E402
from pointillist.export.motion import FrameRange, load_motion  # noqa: E402
from pointillist.export.posing import FramePose  # noqa: E402
from pointillist.head.model import HeadModel  # noqa: E402
from pointillist.synth.procedural import make_procedural_avatar  # noqa: E402

NUM_GAUSSIANS = 20_000
#: Blender exports: (format, what, frames keyed with blink-and-talk or None, output name).
BLENDER_CASES = [("fbx", "rig at rest", None, "out.fbx"), ("fbx", "+ 72-frame blink-and-talk", (1, 72), "out.fbx"),
                 ("usd", "rig + attributes at rest", None, "out.usdc"), ("usd", "+ 72-frame blink-and-talk", (1, 72), "out.usdc")]


def avatar_of_size(head: HeadModel, n: int, sh_degree: int) -> Avatar:
    """A procedural avatar with exactly n Gaussians (dense enough, then a fixed random subset)."""
    full = make_procedural_avatar(1, head, hair_style="long", beard=True, density=2.0)
    if full.gaussians.num < n:
        raise SystemExit(f"procedural avatar has only {full.gaussians.num} Gaussians; raise the density")
    keep = np.sort(np.random.default_rng(0).choice(full.gaussians.num, n, replace=False))
    g = full.gaussians.subset(keep)
    if sh_degree:
        k = (sh_degree + 1) ** 2 - 1
        g = replace(g, sh_rest=(np.random.default_rng(1).normal(size=(n, k, 3)) * 0.1).astype(np.float32))
    b = full.binding
    return replace(full, gaussians=g, binding=Binding(b.triangles[keep], b.barycentrics[keep]))


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run per figure, shorter sequences")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    seq_frames = 10 if args.quick else 25
    head = HeadModel.load()
    talk = load_motion("talk", head.expr_names, head_is_flame=False, fps=25.0)
    pose = FramePose.from_controls(FaceControls(expressions={"mouthSmileLeft": 0.7}, jaw_deg=12.0, neck_yaw_deg=15.0), head.expr_names)
    cases = [
        ("ply", "rest", {}, "out.ply"),
        ("ply", "posed", {"frame": pose}, "out.ply"),
        ("ply-seq", f"{seq_frames} frames of talk", {"motion": talk, "frames": FrameRange(1, seq_frames)}, "seq"),
        ("glb", "rest splats + rig", {}, "out.glb"),
        ("glb", "+ 100-frame clip", {"motion": talk, "frames": FrameRange(1, 100)}, "out.glb"),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sh_degree in (0, 3):
            avatar = avatar_of_size(head, NUM_GAUSSIANS, sh_degree)
            export_avatar(avatar, head, ExportRequest("ply", Path(tmp) / "warm.ply"))  # warm-up (imports, caches)
            for fmt, what, kwargs, name in cases:
                request = ExportRequest(fmt, Path(tmp) / f"{sh_degree}_{name}", **kwargs)
                seconds = timed(lambda a=avatar, r=request: export_avatar(a, head, r), repeats)
                paths = export_avatar(avatar, head, request)
                size = sum(p.stat().st_size for p in paths)
                row = {"format": fmt, "what": what, "sh_degree": sh_degree, "seconds": round(seconds, 3),
                       "files": len(paths), "megabytes": round(size / 1e6, 2)}
                if fmt == "ply-seq":
                    row["seconds_per_frame"] = round(seconds / len(paths), 4)
                rows.append(row)
            if unavailable_reason() is None:
                bundle = Path(tmp) / f"{sh_degree}_bundle"
                write_bundle(avatar, bundle)
                for fmt, what, frames, name in BLENDER_CASES:
                    out = Path(tmp) / f"{sh_degree}_{name}"
                    walls, inner = [], []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        summary = export_with_blender(bundle, fmt, out, frames=frames)
                        walls.append(time.perf_counter() - start)
                        inner.append(summary["export_seconds"])
                    rows.append({"format": fmt, "what": what, "sh_degree": sh_degree, "seconds": round(statistics.median(walls), 3),
                                 "exporter_seconds": round(statistics.median(inner), 3), "files": 1,
                                 "megabytes": round(out.stat().st_size / 1e6, 2), "blender": summary["blender"]})
    print(f"| format | export | SH degree | seconds | files | MB |  ({NUM_GAUSSIANS:,} Gaussians, {torch.get_num_threads()} threads)")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        per_frame = f" ({r['seconds_per_frame']} s/frame)" if "seconds_per_frame" in r else ""
        per_frame += f" (exporter {r['exporter_seconds']})" if "exporter_seconds" in r else ""
        print(f"| {r['format']} | {r['what']} | {r['sh_degree']} | {r['seconds']}{per_frame} | {r['files']} | {r['megabytes']} |")
    print(json.dumps({"bench": "export", "device": "cpu", "gaussians": NUM_GAUSSIANS, "threads": torch.get_num_threads(),
                      "results": rows}))


if __name__ == "__main__":
    main()
