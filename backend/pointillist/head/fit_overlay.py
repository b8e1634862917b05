"""The picture a person judges a fit by: the fitted mesh as a wireframe over the crop, with landmarks.

Detected landmarks are green, the fitted model's landmarks red; front-facing skin triangles are drawn
as thin translucent lines so misalignment of the jaw line, nose or eyes is obvious at a glance.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .fit import FitResult
from .model import HeadModel


def fitted_vertices(head: HeadModel, fit: FitResult) -> np.ndarray:
    with torch.no_grad():
        out = head(shape=torch.as_tensor(fit.shape)[None], expression=torch.as_tensor(fit.expression)[None],
                   pose=torch.as_tensor(fit.pose)[None])
    return out.vertices[0].double().numpy()


def overlay_image(crop: np.ndarray, head: HeadModel, fit: FitResult, detected: np.ndarray | None = None, scale: int = 2) -> np.ndarray:
    """(H*scale, W*scale, 3) uint8: the crop upsampled, wireframe and landmarks drawn on it."""
    h, w = crop.shape[:2]
    base = Image.fromarray(crop).resize((w * scale, h * scale), Image.BICUBIC).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    verts = fitted_vertices(head, fit)
    cam = verts @ fit.viewmat[:3, :3].T + fit.viewmat[:3, 3]
    uv = (cam[:, :2] / cam[:, 2:3]) * np.array([fit.K[0, 0], fit.K[1, 1]]) + fit.K[:2, 2]
    faces = head.data.faces
    skin = np.zeros(len(faces), dtype=bool)
    for part in ("face", "head"):
        if head.data.face_parts is not None and part in head.data.part_names:
            skin |= head.data.part_mask(part)
    if not skin.any():
        skin[:] = True
    a, b, c = (uv[faces[:, i]] for i in range(3))
    facing = ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])) < 0  # counter-clockwise on screen (y down)
    for tri in faces[skin & facing]:
        pts = [tuple(uv[i] * scale) for i in tri] + [tuple(uv[tri[0]] * scale)]
        draw.line(pts, fill=(80, 200, 255, 90), width=1)
    if detected is not None:
        for x, y in np.asarray(detected)[:, :2] * scale:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(60, 230, 80, 230))
    for x, y in fit.landmarks_2d[:, :2] * scale:
        draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(255, 60, 60, 230))
    text = f"mean landmark error {fit.error_px:.2f} px ({100 * fit.error_iod:.1f}% IOD)   yaw {fit.head_angles_deg[0]:.1f}°  pitch {fit.head_angles_deg[1]:.1f}°  roll {fit.head_angles_deg[2]:.1f}°"
    draw.rectangle([0, 0, base.size[0], 18], fill=(0, 0, 0, 150))
    draw.text((6, 3), text, fill=(255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(base, layer).convert("RGB"))
