"""Portrait → aligned crop, matte and fitted head (`pointillist fit`), written as one folder.

The folder holds `crop.png` (aligned 512² crop), `matte.png`, `fit.json` (fitted identity, expression,
jaw/gaze pose, camera, crop transform, warnings, timings) and `overlay.png` (fitted wireframe and landmarks
on the crop). All four are staged and fsynced before any is renamed into place.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_write_files
from .head.fit import FitResult, fit_head
from .head.fit_overlay import overlay_image
from .head.model import HeadModel

FIT_FILES = ("crop.png", "matte.png", "fit.json", "overlay.png")


def _png_writer(image: np.ndarray):
    def write(fh) -> None:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(fh, format="PNG")

    return write


def fit_portrait(portrait: str | os.PathLike, out_dir: str | os.PathLike, head: HeadModel | None = None,
                 overwrite: bool = False) -> dict:
    """Run portrait understanding and the head fit; returns the summary that `fit.json` also holds."""
    from .preprocess.portrait import understand_portrait

    out = Path(out_dir)
    existing = [name for name in FIT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)} (use --overwrite to replace them)")
    head = head or HeadModel.load()
    inputs = understand_portrait(portrait)
    size = inputs.crop.shape[0]
    start = time.perf_counter()
    fit: FitResult = fit_head(inputs.landmarks, head, size, size)
    timings = {**inputs.timings, "fit": time.perf_counter() - start}
    start = time.perf_counter()
    overlay = overlay_image(inputs.crop, head, fit, inputs.landmarks)
    timings["overlay"] = time.perf_counter() - start
    summary = {
        "portrait": str(portrait),
        "head_model": head.model_id,
        "fit": fit.to_json(),
        "crop_transform": inputs.transform.to_json(),
        "detected_landmarks": np.asarray(inputs.landmarks).round(3).tolist(),
        "warnings": list(inputs.warnings),
        "seconds": {k: round(v, 4) for k, v in timings.items()},
    }
    payload = json.dumps(summary, indent=1).encode()
    atomic_write_files({
        out / "crop.png": _png_writer(inputs.crop),
        out / "matte.png": _png_writer(inputs.matte),
        out / "fit.json": lambda fh: fh.write(payload),
        out / "overlay.png": _png_writer(overlay),
    })
    return {"fit_dir": str(out), "error_px": round(fit.error_px, 3), "error_iod": round(fit.error_iod, 4),
            "head_angles_deg": [round(a, 2) for a in fit.head_angles_deg], "warnings": list(inputs.warnings),
            "seconds": summary["seconds"]}
