"""Pictures of an avatar: single posed renders, turntables and talking previews (PNG / GIF).

Chains animation (`avatar.animate`) and the rasterizer (`render.rasterize`); every file is written to
a temporary sibling first and moved into place, so a failed or interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_write
from .avatar.animate import AvatarAnimator
from .avatar.controls import FaceControls, talk_controls
from .render.camera import fov_to_K, orbit_viewmat
from .render.rasterize import rasterize

SH_C0 = 0.28209479177387814


@dataclass
class ViewSpec:
    """An orbit camera around the head: yaw toward the subject's left, pitch up, degrees."""

    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    radius: float = 0.62
    fov_deg: float = 30.0
    width: int = 512
    height: int = 512
    target: tuple[float, float, float] = (0.0, -0.02, 0.0)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)


def render_frame(animator: AvatarAnimator, controls: FaceControls, view: ViewSpec, strict: bool = True) -> np.ndarray:
    """Pose the avatar and rasterize one (H, W, 3) uint8 frame.

    strict=False skips expression names the head model lacks (procedural motion on a FLAME head).
    """
    expr, pose = controls.to_model(animator.expr_names, strict=strict)
    with torch.no_grad():
        posed = animator(expr, pose)
        g = animator.avatar.gaussians
        dc = torch.as_tensor(g.sh_dc, dtype=torch.float32)
        rest = torch.as_tensor(g.sh_rest, dtype=torch.float32) if g.sh_rest is not None and g.sh_rest.size else None
        kwargs = {}
        if rest is not None:
            kwargs = {"sh": torch.cat([dc[:, None], rest], dim=1), "sh_frames": posed.rotations[0]}
        else:
            kwargs = {"colors": (0.5 + SH_C0 * dc).clamp_min(0.0)}
        out = rasterize(
            posed.means[0], posed.quats[0], posed.log_scales[0].exp(),
            torch.sigmoid(torch.as_tensor(g.opacity_logits, dtype=torch.float32)),
            viewmat=torch.as_tensor(orbit_viewmat(view.yaw_deg, view.pitch_deg, view.radius, view.target), dtype=torch.float32),
            K=torch.as_tensor(fov_to_K(view.fov_deg, view.width, view.height), dtype=torch.float32),
            width=view.width, height=view.height,
            background=torch.as_tensor(view.background, dtype=torch.float32), **kwargs,
        )
    return (out.rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    atomic_write(path, lambda fh: Image.fromarray(image).save(fh, format="PNG"))


def save_gif(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float) -> None:
    images = [Image.fromarray(f) for f in frames]
    if not images:
        raise ValueError("no frames to write")
    atomic_write(path, lambda fh: images[0].save(fh, format="GIF", save_all=True, append_images=images[1:],
                                                 duration=int(round(1000 / fps)), loop=0, optimize=False))


def turntable_frames(animator: AvatarAnimator, view: ViewSpec, frames: int = 36,
                     controls: FaceControls | None = None, progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    out = []
    for i in range(frames):
        v = ViewSpec(**{**view.__dict__, "yaw_deg": view.yaw_deg + 360.0 * i / frames})
        out.append(render_frame(animator, controls or FaceControls(), v, strict=False))
        if progress:
            progress(i + 1, frames)
    return out


def talk_frames(animator: AvatarAnimator, view: ViewSpec, seconds: float = 3.0, fps: float = 15.0,
                progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    n = max(1, int(round(seconds * fps)))
    out = []
    for i in range(n):
        out.append(render_frame(animator, talk_controls(i / fps), view, strict=False))
        if progress:
            progress(i + 1, n)
    return out
