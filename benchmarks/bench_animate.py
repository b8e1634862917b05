"""Benchmark: posing an avatar (per-frame expression + LBS + rotation blending) on this machine.

Prints a Markdown table and one JSON line. Run: `.venv/bin/python benchmarks/bench_animate.py [--quick]`.
Rig blending (`point_rig`) happens once per avatar and is reported separately from per-frame posing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pointillist.avatar.animate import AvatarAnimator  # noqa: E402
from pointillist.avatar.binding import closest_point_barycentrics  # noqa: E402
from pointillist.avatar.gaussians import Avatar, Binding, Gaussians, HeadIdentity  # noqa: E402
from pointillist.head.model import HeadModel  # noqa: E402


def random_avatar(head: HeadModel, n: int, seed: int = 0) -> Avatar:
    """n Gaussians on random triangles of the template, slightly off the surface."""
    rng = np.random.default_rng(seed)
    faces = head.data.faces
    tri = rng.integers(0, len(faces), n)
    bary = rng.dirichlet(np.ones(3), n).astype(np.float32)
    corners = head.data.vertices[faces[tri]]
    means = (corners * bary[..., None]).sum(1) + rng.normal(0, 0.001, (n, 3))
    bary = closest_point_barycentrics(means, corners).astype(np.float32)
    q = rng.normal(size=(n, 4)).astype(np.float32)
    g = Gaussians(
        means=means.astype(np.float32), log_scales=np.full((n, 3), np.log(0.002), np.float32),
        quats=q / np.linalg.norm(q, axis=1, keepdims=True), opacity_logits=np.zeros(n, np.float32),
        sh_dc=np.zeros((n, 3), np.float32), sh_rest=np.zeros((n, 0, 3), np.float32),
    )
    return Avatar(gaussians=g, binding=Binding(triangles=tri.astype(np.int64), barycentrics=bary),
                  identity=HeadIdentity(model_id=head.model_id, shape=np.zeros(head.num_shape, np.float32), vertex_offsets=None),
                  source=None, meta={})


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats = 3 if args.quick else 10
    head = HeadModel.load()
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (5_000, 20_000, 50_000):
        avatar = random_avatar(head, n)
        rig_ms = timed(lambda: AvatarAnimator(avatar, head), max(1, repeats // 3))
        animator = AvatarAnimator(avatar, head)
        expr = torch.randn(head.num_expr, generator=g) * 0.5
        pose = torch.randn(5, 3, generator=g) * 0.2
        with torch.no_grad():
            frame_ms = timed(lambda: animator(expr, pose), repeats)
            batch = 8
            batch_ms = timed(lambda: animator(expr.expand(batch, -1), pose.expand(batch, -1, -1)), max(1, repeats // 2)) / batch
        rows.append({"gaussians": n, "rig_setup_ms": round(rig_ms, 1), "frame_ms": round(frame_ms, 2),
                     "frame_ms_batched8": round(batch_ms, 2), "threads": torch.get_num_threads()})
    print("| Gaussians | rig set-up (ms) | pose one frame (ms) | per frame, batch of 8 (ms) |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['gaussians']:,} | {r['rig_setup_ms']} | {r['frame_ms']} | {r['frame_ms_batched8']} |")
    print(json.dumps({"bench": "animate", "device": "cpu", "results": rows}))


if __name__ == "__main__":
    main()
