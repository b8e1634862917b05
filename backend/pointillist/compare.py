"""`pointillist compare`: the aligned input beside renders of the avatar, to judge a result by eye.

Tiles: the portrait crop, the avatar under the fitted camera and expression (should match it), then the
canonical avatar from the front and at three-quarter views to both sides.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .avatar.animate import AvatarAnimator
from .avatar.controls import FaceControls
from .avatar.gaussians import Avatar
from .head.model import HeadModel
from .preview import ViewSpec, render_frame
from .render.rasterize import rasterize
from .render.sh import SH_C0


def render_portrait_camera(avatar: Avatar, head: HeadModel, size: int = 256, animator: AvatarAnimator | None = None,
                           background: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The avatar posed with its fitted expression and rendered with its fitted camera: (rgb (size, size, 3)
    float in [0, 1] over `background`, alpha (size, size) float). What the photo should look like."""
    src = avatar.source
    if src is None or src.camera is None:
        raise ValueError("the avatar has no source camera (it was not made from a portrait)")
    animator = animator or AvatarAnimator(avatar, head)
    with torch.no_grad():
        posed = animator(torch.as_tensor(src.expression) if src.expression is not None else None,
                         torch.as_tensor(src.pose) if src.pose is not None else None)
        K = torch.as_tensor(src.camera["K"], dtype=torch.float32).clone()
        K[:2] *= size / float(src.camera["width"])
        g = avatar.gaussians
        out = rasterize(posed.means[0], posed.quats[0], posed.log_scales[0].exp(),
                        torch.sigmoid(torch.as_tensor(g.opacity_logits)),
                        viewmat=torch.as_tensor(src.camera["viewmat"], dtype=torch.float32), K=K, width=size, height=size,
                        colors=(0.5 + SH_C0 * torch.as_tensor(g.sh_dc)).clamp_min(0),
                        background=torch.full((3,), float(background)))
    return out.rgb.clamp(0, 1).numpy(), out.alpha.numpy()


def portrait_view(avatar: Avatar, head: HeadModel, size: int = 256, animator: AvatarAnimator | None = None) -> np.ndarray:
    """`render_portrait_camera` on white, (size, size, 3) uint8."""
    rgb, _ = render_portrait_camera(avatar, head, size, animator)
    return (rgb * 255 + 0.5).astype(np.uint8)


def comparison_sheet(avatar: Avatar, head: HeadModel, tile: int = 256) -> np.ndarray:
    animator = AvatarAnimator(avatar, head)
    tiles: list[tuple[str, np.ndarray]] = []
    src = avatar.source
    if src is not None and src.image is not None:
        tiles.append(("input (aligned)", np.asarray(Image.fromarray(src.image).resize((tile, tile), Image.LANCZOS))))
        if src.camera is not None:
            tiles.append(("avatar, portrait camera", portrait_view(avatar, head, tile, animator)))
    for label, yaw in (("front", 0.0), ("three-quarter left", 40.0), ("three-quarter right", -40.0)):
        tiles.append((label, render_frame(animator, FaceControls(), ViewSpec(yaw_deg=yaw, width=tile, height=tile))))
    pad = 22
    sheet = Image.new("RGB", (tile * len(tiles), tile + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (label, img) in enumerate(tiles):
        sheet.paste(Image.fromarray(img), (i * tile, pad))
        draw.text((i * tile + 6, 5), label, fill=(0, 0, 0))
    return np.asarray(sheet)
