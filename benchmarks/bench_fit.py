"""Benchmark: portrait understanding and head fit, seconds per stage, on the astronaut portrait.

Prints a Markdown table and one JSON line. Run: `.venv/bin/python benchmarks/bench_fit.py [--quick]`.
Stages: decode, landmarks, align, matte (from `understand_portrait`), fit, overlay. Median of several runs
after one warm-up run (MediaPipe graph creation and numba/torch warm-up excluded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

from pointillist.head.model import HeadModel  # noqa: E402
from pointillist.portrait_fit import fit_portrait  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 2 if args.quick else 5
    head = HeadModel.load()
    with tempfile.TemporaryDirectory() as tmp:
        portrait = Path(tmp) / "astronaut.jpg"
        Image.fromarray(skimage.data.astronaut()).save(portrait, quality=95)
        fit_portrait(portrait, Path(tmp) / "warmup", head=head)
        samples: dict[str, list[float]] = {}
        errors = []
        for i in range(runs):
            summary = fit_portrait(portrait, Path(tmp) / f"run{i}", head=head)
            errors.append(summary["error_iod"])
            for stage, seconds in summary["seconds"].items():
                samples.setdefault(stage, []).append(seconds)
    rows = {stage: statistics.median(values) for stage, values in samples.items()}
    total = sum(rows.values())
    print("| stage | seconds |")
    print("|---|---:|")
    for stage, seconds in rows.items():
        print(f"| {stage} | {seconds:.3f} |")
    print(f"| **total** | **{total:.3f}** |")
    print(json.dumps({"bench": "fit", "portrait": "skimage.data.astronaut", "seconds": {k: round(v, 4) for k, v in rows.items()},
                      "total_seconds": round(total, 4), "landmark_error_iod": round(float(np.median(errors)), 4)}))


if __name__ == "__main__":
    main()
