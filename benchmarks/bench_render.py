"""Rasterizer throughput on a synthetic head-sized scene.

Builds Gaussians on an ellipsoidal "head" shell (radii 0.12 x 0.15 x 0.13 m) plus some volume
noise, renders them at 512x512 from 0.6 m with a 30 degree vertical FOV, and reports the median
milliseconds per frame for each back end:

    .venv/bin/python benchmarks/bench_render.py [--quick] [--png out.png]

Prints a Markdown table, then one line of JSON: {"bench": "render", "results": [...]}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import torch  # noqa: E402

from pointillist.render import fast_cpu  # noqa: E402
from pointillist.render.camera import fov_to_K, orbit_viewmat  # noqa: E402
from pointillist.render.rasterize import rasterize  # noqa: E402

WIDTH = HEIGHT = 512
FOV_Y_DEG = 30.0
CAMERA_DISTANCE = 0.6
HEAD_RADII = (0.12, 0.15, 0.13)


def head_scene(n: int, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Synthetic head: 85% of Gaussians near an ellipsoid surface, 15% inside it."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    n_shell = int(0.85 * n)
    radial = torch.empty(n)
    radial[:n_shell] = 1.0 + 0.02 * torch.randn(n_shell, generator=g)
    radial[n_shell:] = torch.rand(n - n_shell, generator=g) ** (1 / 3)
    means = dirs * radial[:, None] * torch.tensor(HEAD_RADII)
    scene = {
        "means": means,
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        "scales": 0.001 + 0.003 * torch.rand(n, 3, generator=g),
        "opacities": 0.3 + 0.65 * torch.rand(n, generator=g),
        "colors": torch.rand(n, 3, generator=g),
    }
    return {k: v.to(device) for k, v in scene.items()}


def camera() -> dict:
    return {"viewmat": orbit_viewmat(20.0, 10.0, CAMERA_DISTANCE),
            "K": fov_to_K(FOV_Y_DEG, WIDTH, HEIGHT), "width": WIDTH, "height": HEIGHT}


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(1000.0 * (time.perf_counter() - t0))
    return statistics.median(times)


def forward(scene: dict, backend: str) -> Callable[[], object]:
    cam = camera()

    def run() -> object:
        with torch.no_grad():
            return rasterize(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                             scene["colors"], **cam, background=torch.ones(3), backend=backend)
    return run


def forward_backward(scene: dict) -> Callable[[], object]:
    cam = camera()
    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}

    def run() -> object:
        out = rasterize(params["means"], params["quats"], params["scales"], params["opacities"],
                        params["colors"], **cam, backend="torch")
        (out.rgb.sum() + out.alpha.sum()).backward()
        return out
    return run


def save_png(path: str, n: int = 20000) -> None:
    import numpy as np
    from PIL import Image

    out = forward(head_scene(n), "torch")()
    rgb = (out.rgb.clamp(0, 1).numpy() * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--png", help="also save a 20k-Gaussian torch render to this PNG")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7

    results = []
    for n in (5000, 20000, 50000):
        scene = head_scene(n)
        cases = {}
        if fast_cpu.AVAILABLE:
            cases["fast forward"] = (forward(scene, "fast"), repeats)
        cases["torch forward"] = (forward(scene, "torch"), max(3, repeats // 2))
        if n <= 20000:
            cases["torch forward+backward"] = (forward_backward(scene), 3)
        if torch.cuda.is_available():
            gpu_scene = head_scene(n, device="cuda")
            cases["gsplat forward"] = (forward(gpu_scene, "gsplat"), repeats)
        for name, (fn, reps) in cases.items():
            ms = time_ms(fn, max(reps, 5) if not args.quick else reps)
            results.append({"n": n, "path": name, "ms": round(ms, 1),
                            "width": WIDTH, "height": HEIGHT})
            print(f"  {name:24s} N={n:6d}: {ms:8.1f} ms", file=sys.stderr, flush=True)

    # Real avatars end to end: pose (expression + LBS) and render one talking frame, as previews do.
    from pointillist.avatar.animate import AvatarAnimator
    from pointillist.avatar.controls import talk_controls
    from pointillist.head.model import HeadModel
    from pointillist.preview import ViewSpec, render_frame
    from pointillist.synth.procedural import make_procedural_avatar

    head = HeadModel.load()
    for style, seed in (("bald", 3), ("long", 1)):
        avatar = make_procedural_avatar(seed, head, hair_style=style, beard=False)
        animator = AvatarAnimator(avatar, head)
        view = ViewSpec(width=WIDTH, height=HEIGHT)
        ms = time_ms(lambda: render_frame(animator, talk_controls(0.3), view, strict=False), repeats)
        n = len(avatar.gaussians.means)
        results.append({"n": n, "path": f"{style} avatar: pose + render", "ms": round(ms, 1), "width": WIDTH, "height": HEIGHT})
        print(f"  {style} avatar pose + render N={n:6d}: {ms:8.1f} ms", file=sys.stderr, flush=True)

    print(f"| N | path | ms/frame ({WIDTH}x{HEIGHT}) |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['n']} | {r['path']} | {r['ms']:.1f} |")
    print(json.dumps({"bench": "render", "threads": torch.get_num_threads(),
                      "device": "cuda" if torch.cuda.is_available() else "cpu",
                      "results": results}))
    if args.png:
        save_png(args.png)


if __name__ == "__main__":
    main()
