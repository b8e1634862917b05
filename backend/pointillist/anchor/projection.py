"""Photo colours for the Gaussians the portrait camera sees: projection with a depth test.

A Gaussian is seen when nothing opaque stands in front of it at its pixel: its camera depth is within
`DEPTH_TOLERANCE_M` of the depth the render of the whole avatar reaches there (the alpha-weighted depth of
the first surface). Seen, it takes the photo's colour at its projected centre; a Gaussian deeper than the
surface (inside the head, behind the nose, the far side) is not seen and keeps what it had. Pixels that are
not the person (background, fill past the photo's edge, hands) colour nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ..model.portrait_probe import sample_pixels
from ..render.camera import project_points
from ..render.rasterize import rasterize

#: a Gaussian this far behind the rendered surface is still on it (a fringe's haze moves the surface forward)
DEPTH_TOLERANCE_M = 0.006
#: a Gaussian over a pixel the avatar covers less than this is at its outline and not trusted
MIN_ALPHA = 0.5


@dataclass
class PhotoColours:
    colours: np.ndarray  # (N, 3) float in [0, 1]: the photo at each Gaussian's projected centre
    seen: np.ndarray  # (N,) float in [0, 1]: 1 on the visible surface over a valid photo pixel, 0 hidden


def photo_colours(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor, *,
                  viewmat: torch.Tensor, K: torch.Tensor, image: np.ndarray, valid: np.ndarray | None = None,
                  depth_size: int = 256) -> PhotoColours:
    """Colour each posed Gaussian (means (N, 3) in the camera's world; `K` in `image`'s pixels) from `image`
    ((H, W, 3) uint8 or float in [0, 1]). `valid` ((H, W) weights in [0, 1]) says which pixels may colour a
    Gaussian; the visible surface is rendered at `depth_size` pixels on the long side."""
    height, width = image.shape[:2]
    photo = torch.as_tensor(np.array(image), dtype=torch.float32)
    if photo.max() > 1.0:
        photo = photo / 255
    weight = torch.ones(height, width) if valid is None else torch.as_tensor(np.asarray(valid), dtype=torch.float32)
    s = depth_size / max(height, width)
    Kd = K.clone().float()
    Kd[:2] *= s
    dh, dw = max(1, round(height * s)), max(1, round(width * s))
    with torch.no_grad():
        out = rasterize(means, quats, scales, opacities, viewmat=viewmat, K=Kd, width=dw, height=dh,
                        colors=torch.zeros(len(means), 3), background=torch.zeros(3))
        uv_np, z_np = project_points(means.numpy(), viewmat.numpy(), K.numpy())  # pixels of `image`
        uv = torch.as_tensor(np.nan_to_num(uv_np, nan=-1.0, posinf=-1.0, neginf=-1.0), dtype=torch.float32)
        z = torch.as_tensor(z_np, dtype=torch.float32)
        u, v = uv.unbind(-1)
        surface = sample_pixels(out.depth[None], u * s, v * s)[:, 0]
        cover = sample_pixels(out.alpha[None], u * s, v * s)[:, 0]
        colours = sample_pixels(photo.permute(2, 0, 1), u, v)
        ok = sample_pixels(weight[None], u, v)[:, 0]
        inside = (u >= 0) & (u <= width) & (v >= 0) & (v <= height) & (z > 0)
        front = ((surface + 2 * DEPTH_TOLERANCE_M - z) / DEPTH_TOLERANCE_M).clamp(0, 1)  # 1 up to 1 tol behind, 0 by 2
        seen = front * ok * (cover >= MIN_ALPHA) * inside
    return PhotoColours(colours=colours.clamp(0, 1).numpy(), seen=seen.numpy())

