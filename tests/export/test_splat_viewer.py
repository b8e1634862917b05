"""An exported PLY drawn by an independent splat renderer: three.js + Spark in Debian's headless Chromium.

The screenshot is kept under out/export/ for a person to look at; the test checks that the avatar covers a
real part of the frame in colours unlike the page background, and that Spark read every Gaussian.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pointillist.avatar.animate import AvatarAnimator
from pointillist.avatar.controls import FaceControls
from pointillist.export.inria_ply import export_ply
from pointillist.export.posing import FramePose

from .web_readers import view_splats

OUT = Path(__file__).resolve().parents[2] / "out" / "export"


def _coverage(png: Path, background_hex: str) -> tuple[float, float]:
    """(fraction of pixels away from the background colour, std of those pixels' luminance)."""
    image = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    background = np.array([int(background_hex[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    away = np.abs(image - background).max(axis=2) > 24
    return float(away.mean()), float(image[away].mean(axis=1).std()) if away.any() else 0.0


def test_spark_draws_rest_and_posed_exports(procedural_avatar, head, node, chromium, tmp_path):
    OUT.mkdir(parents=True, exist_ok=True)
    rest_ply = export_ply(procedural_avatar, tmp_path / "rest.ply")
    frame = FramePose.from_controls(FaceControls(jaw_deg=25.0, neck_yaw_deg=35.0), head.expr_names)
    posed_ply = export_ply(procedural_avatar, tmp_path / "posed.ply", AvatarAnimator(procedural_avatar, head), frame)
    shots = {}
    for name, ply in (("rest", rest_ply), ("posed", posed_ply)):
        png = OUT / f"spark_{name}.png"
        result = view_splats(ply, png)
        assert result["status"] == "ready", result
        assert result["numSplats"] == procedural_avatar.gaussians.num
        covered, spread = _coverage(png, result["background"])
        assert 0.10 < covered < 0.95, (name, covered)  # a head in frame, not an empty page nor a solid wash
        assert spread > 8.0, (name, spread)  # shaded detail, not one flat colour
        shots[name] = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    # The turned head with an open jaw is a different picture.
    assert np.abs(shots["rest"] - shots["posed"]).mean() > 2.0
