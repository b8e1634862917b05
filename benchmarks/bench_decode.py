"""Benchmark: AR decode speed (tokens/s) and the weight bandwidth it achieves, gpt-fast style.

Decoding one token reads every AR weight once, so tokens/s x weight bytes is the bandwidth the decoder
achieves; against this machine's measured memory bandwidth (a large numpy copy) it says how far the
decode loop is from memory-bound. Prints the model, a table and one JSON line. Run:
`.venv/bin/python benchmarks/bench_decode.py [--checkpoint F | --preset cpu|base] [--points N] [--device cpu|cuda]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pointillist.model.checkpoint import load_generator  # noqa: E402
from pointillist.model.config import MODEL_PRESETS, GeneratorConfig  # noqa: E402
from pointillist.model.generator import Generator  # noqa: E402
from pointillist.model.sampling import SamplingOptions, generate  # noqa: E402


def memory_bandwidth_gbs(mb: int = 512) -> float:
    """Read + write bandwidth of a large copy (GB/s), best of three."""
    a = np.ones(mb * 1024 * 1024 // 8)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint")
    parser.add_argument("--preset", default="cpu", choices=sorted(MODEL_PRESETS))
    parser.add_argument("--points", type=int, default=400)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.checkpoint:
        model, _ = load_generator(args.checkpoint, device)
    else:
        base = GeneratorConfig().to_json()
        for part, values in MODEL_PRESETS[args.preset].items():
            base[part].update(values)
        model = Generator(GeneratorConfig.from_json(base)).to(device).eval()
    counts = model.parameter_counts()
    print(model.ar)
    print(json.dumps(counts))
    S = model.config.image.image_size
    with torch.no_grad():
        cond = model.condition(torch.rand(1, 3, S, S, device=device), torch.randn(1, model.config.points.num_points, 6, device=device))
        generate(model.ar, model.tokenizer, cond, SamplingOptions(max_points=8, min_points=8))  # warm-up
        gen = generate(model.ar, model.tokenizer, cond, SamplingOptions(temperature=1.0, max_points=args.points, min_points=args.points))
    tokens = 4 * len(gen.binding)
    tok_s = tokens / gen.seconds
    weight_bytes = counts["ar"] * 4
    achieved = tok_s * weight_bytes / 1e9
    bandwidth = memory_bandwidth_gbs() if device.type == "cpu" else float("nan")
    print("| tokens | seconds | tokens/s | points/s | AR weights (MB) | achieved GB/s | machine GB/s | fraction |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {tokens} | {gen.seconds:.2f} | {tok_s:.0f} | {tok_s / 4:.1f} | {weight_bytes / 1e6:.1f} | {achieved:.2f} | "
          f"{bandwidth:.1f} | {achieved / bandwidth:.3f} |")
    print(json.dumps({"bench": "decode", "tokens": tokens, "seconds": round(gen.seconds, 3), "tokens_per_s": round(tok_s, 1),
                      "points_per_s": round(tok_s / 4, 2), "ar_weight_mb": round(weight_bytes / 1e6, 2),
                      "achieved_gbs": round(achieved, 3), "machine_gbs": round(bandwidth, 2), "device": str(device),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
