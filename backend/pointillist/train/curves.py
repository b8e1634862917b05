"""Loss curves from the training logs (`<checkpoint>.log.csv`), drawn with Pillow (no plotting library)."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def read_log(path: str | os.PathLike) -> tuple[str, np.ndarray, np.ndarray]:
    """(stage, steps, losses) of one training log."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: empty training log")
    return rows[0]["stage"], np.array([int(r["step"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def smooth(values: np.ndarray, window: int = 25) -> np.ndarray:
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window // 2, values[0]), values, np.full(window - 1 - window // 2, values[-1])])
    return np.convolve(padded, kernel, mode="valid")


def loss_curves(logs: list[str | os.PathLike], width: int = 520, height: int = 300, columns: int = 3) -> np.ndarray:
    """One panel per log, in rows of `columns` (in log order, left to right): raw loss (light) and a
    moving average (dark), per stage."""
    panels = []
    for i, path in enumerate(logs):
        stage, steps, losses = read_log(path)
        img = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        left, top, right, bottom = 56, 28, width - 12, height - 30
        lo, hi = float(losses.min()), float(np.percentile(losses, 99))
        hi = hi if hi > lo else lo + 1
        x = lambda s: left + (s - steps.min()) / max(1, steps.max() - steps.min()) * (right - left)  # noqa: E731
        y = lambda v: bottom - (min(v, hi) - lo) / (hi - lo) * (bottom - top)  # noqa: E731
        draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
        for k in range(5):
            v = lo + (hi - lo) * k / 4
            draw.text((4, y(v) - 6), f"{v:.3g}", fill=(0, 0, 0))
            draw.line([left, y(v), right, y(v)], fill=(230, 230, 230))
        colour = COLOURS[i % len(COLOURS)]
        light = tuple(int(c + (255 - c) * 0.7) for c in colour)
        draw.line([(x(s), y(v)) for s, v in zip(steps, losses)], fill=light, width=1)
        draw.line([(x(s), y(v)) for s, v in zip(steps, smooth(losses))], fill=colour, width=2)
        draw.text((left, 8), f"{stage}: loss over {int(steps.max())} steps (last 25-step mean {np.mean(losses[-25:]):.3f})", fill=(0, 0, 0))
        draw.text((left, bottom + 8), f"step {int(steps.min())}", fill=(0, 0, 0))
        draw.text((right - 70, bottom + 8), f"step {int(steps.max())}", fill=(0, 0, 0))
        if not math.isfinite(float(losses[-1])):
            draw.text((left + 10, top + 10), "non-finite loss", fill=(200, 0, 0))
        draw.text((right - 24, 8), f"#{i + 1}", fill=(0, 0, 0))
        panels.append(np.asarray(img))
    columns = max(1, min(columns, len(panels)))
    blank = np.full_like(panels[0], 255)
    panels += [blank] * (-len(panels) % columns)
    return np.concatenate([np.concatenate(panels[r:r + columns], axis=1) for r in range(0, len(panels), columns)], axis=0)
