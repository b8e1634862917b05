"""The chain: decode → landmarks → aligned crop → landmarks again on the crop → matte."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from .align import CropTransform, crop_transform, warp
from .decode import decode_image
from .landmarks import detect_landmarks
from .matte import foreground_matte


@dataclass
class PortraitInputs:
    crop: np.ndarray  # (S, S, 3) uint8
    matte: np.ndarray  # (S, S) uint8
    landmarks: np.ndarray  # (478, 3) float32 in crop pixels (z scaled like x)
    transform: CropTransform  # original-image pixels -> crop pixels
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def understand_portrait(source: str | os.PathLike | bytes, *, size: int = 512) -> PortraitInputs:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    image = decode_image(source)
    timings["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    found = detect_landmarks(image.rgb)
    timings["landmarks"] = time.perf_counter() - t
    t = time.perf_counter()
    to_crop = crop_transform(found.points, size)
    crop = warp(image.rgb, to_crop)
    alpha = None if image.alpha is None else warp(image.alpha, to_crop, fill=0)
    timings["align"] = time.perf_counter() - t
    t = time.perf_counter()
    refined = detect_landmarks(crop)  # at the crop's scale MediaPipe is most precise
    timings["landmarks"] += time.perf_counter() - t
    t = time.perf_counter()
    matte = foreground_matte(crop, alpha)
    timings["matte"] = time.perf_counter() - t
    scale_to_decoded = np.array([[image.scale, 0.0, 0.0], [0.0, image.scale, 0.0]])
    return PortraitInputs(
        crop=crop, matte=matte, landmarks=refined.points.astype(np.float32),
        transform=to_crop.compose(scale_to_decoded),
        warnings=image.warnings + found.warnings, timings=timings,
    )
