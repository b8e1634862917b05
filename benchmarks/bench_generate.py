"""Benchmark: `pointillist create` on the astronaut portrait, seconds per stage, AR points/s, peak memory.

Prints a Markdown table and one JSON line. Run:
`.venv/bin/python benchmarks/bench_generate.py [--checkpoint F] [--quality draft|standard|high] [--refine-steps N]`.
One warm-up run (MediaPipe graph, first torch calls) is excluded; the figures are from the second run.
Peak memory is the process's maximum resident set size (Linux `ru_maxrss`).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pointillist.head.model import HeadModel  # noqa: E402
from pointillist.completeness import CompletenessCheck  # noqa: E402
from pointillist.pipeline import CreateOptions, create_avatar  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint")
    parser.add_argument("--quality", default="standard", choices=["draft", "standard", "high"])
    parser.add_argument("--refine-steps", type=int)
    parser.add_argument("--max-points", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--carve", action=argparse.BooleanOptionalAction, default=True, help="silhouette carving (create's default)")
    parser.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=True, help="anchoring to the photo (create's default)")
    args = parser.parse_args()
    head = HeadModel.load()
    with tempfile.TemporaryDirectory() as tmp:
        portrait = Path(tmp) / "astronaut.png"
        Image.fromarray(skimage.data.astronaut()).save(portrait)
        options = CreateOptions(quality=args.quality, checkpoint=args.checkpoint, refine_steps=args.refine_steps,
                                max_points=args.max_points, device=args.device, carve=args.carve, anchor=args.anchor)
        warm_up = CreateOptions(**{**options.__dict__, "max_points": CompletenessCheck.min_points, "refine_steps": 0})
        create_avatar(portrait, warm_up, head=head, check=CompletenessCheck(face=0.0, head=0.0, min_points=1))
        result = create_avatar(portrait, options, head=head)
    s = result.summary()
    carved = int(result.avatar.meta.get("carved_points", 0))
    written = result.points + carved  # the transformer wrote the carved points too: they count for its speed
    points_per_s = written / max(result.seconds["generate"], 1e-9)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| stage | seconds |\n|---|---:|")
    for k, v in s["seconds"].items():
        print(f"| {k} | {v:.3f} |")
    print(f"| **total** | **{s['total_seconds']:.3f}** |\n")
    print(f"points {result.points} (+ {carved} carved), Gaussians {result.gaussians}, AR {points_per_s:.1f} points/s "
          f"({4 * points_per_s:.0f} tokens/s), peak RSS {peak_mb:.0f} MB, torch threads {torch.get_num_threads()}")
    print(json.dumps({"bench": "generate", "quality": args.quality, "refine_steps": options.steps, **s, "carved_points": carved,
                      "ar_points_per_s": round(points_per_s, 2), "peak_rss_mb": round(peak_mb),
                      "device": str(torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"))}))


if __name__ == "__main__":
    main()
