"""A short photometric refinement of a generated avatar against its own portrait.

While the generator is young its colours are only roughly right; a few dozen steps of gradient descent
on colours, opacities and small canonical offsets, rendered under the fitted camera and expression,
make the front view match the person. Posing is linear in a small canonical offset (each Gaussian's
skinning rotation carries it), so the avatar is posed once and the offsets are rotated per step.
A left/right symmetry prior pulls each Gaussian's colour toward its mirror partner's, which fills in
the side the portrait does not show, weighted by how little that Gaussian is seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from .anchor.mirror import mirror_partners
from .avatar.binding import closest_point_barycentrics
from .avatar.gaussians import Avatar, Binding, Gaussians
from .head.model import HeadModel
from .render.rasterize import rasterize
from .render.sh import SH_C0
from .train.losses import ssim

REFINE_SIZE = 128  # pixels: enough for colour, cheap enough for a CPU
MAX_OFFSET = 0.004  # metres


def refine_avatar(avatar: Avatar, head: HeadModel, steps: int, *, lr: float = 0.03, symmetry: float = 0.05,
                  progress: Callable[[float], None] | None = None, cancelled: Callable[[], bool] | None = None) -> Avatar:
    from .avatar.animate import AvatarAnimator

    src = avatar.source
    if src is None or src.image is None or src.camera is None:
        raise ValueError("refinement needs the avatar's source portrait and fitted camera")
    animator = AvatarAnimator(avatar, head)
    with torch.no_grad():
        posed = animator(torch.as_tensor(src.expression) if src.expression is not None else None,
                         torch.as_tensor(src.pose) if src.pose is not None else None)
    base_means, rot = posed.means[0], posed.rotations[0]
    quats, scales = posed.quats[0], posed.log_scales[0].exp()
    size = int(src.camera["width"])
    K = torch.as_tensor(src.camera["K"], dtype=torch.float32).clone()
    K[:2] *= REFINE_SIZE / size
    viewmat = torch.as_tensor(src.camera["viewmat"], dtype=torch.float32)
    image = torch.from_numpy(np.array(src.image)).permute(2, 0, 1)[None].float() / 255  # a copy: bundles load read-only
    matte = torch.as_tensor(src.matte if src.matte is not None else np.full(src.image.shape[:2], 255)).float()[None, None] / 255
    image = F.interpolate(image, size=(REFINE_SIZE,) * 2, mode="bilinear", antialias=True, align_corners=False)[0]
    matte = F.interpolate(matte, size=(REFINE_SIZE,) * 2, mode="bilinear", antialias=True, align_corners=False)[0, 0]
    bg = torch.tensor([0.5, 0.5, 0.5])
    target = image * matte + bg[:, None, None] * (1 - matte)

    g = avatar.gaussians
    dc = torch.as_tensor(g.sh_dc).clone().requires_grad_()
    opacity = torch.as_tensor(g.opacity_logits).clone().requires_grad_()
    offset = torch.zeros_like(base_means, requires_grad=True)
    mirror = torch.as_tensor(mirror_partners(g.means))
    optimizer = torch.optim.Adam([{"params": [dc, opacity], "lr": lr}, {"params": [offset], "lr": lr * 0.02}])
    seen = torch.zeros(len(dc))
    for step in range(steps):
        if cancelled is not None and cancelled():
            break
        optimizer.zero_grad(set_to_none=True)
        bounded = torch.tanh(offset / MAX_OFFSET) * MAX_OFFSET
        means = base_means + torch.einsum("nij,nj->ni", rot, bounded)
        colours = (0.5 + SH_C0 * dc).clamp_min(0)
        out = rasterize(means, quats, scales, torch.sigmoid(opacity), viewmat=viewmat, K=K, width=REFINE_SIZE,
                        height=REFINE_SIZE, colors=colours, background=bg, backend="torch")
        pred = out.rgb.permute(2, 0, 1)
        loss = (((pred - target).abs().mean(0) * (0.25 + matte)).mean() + 0.2 * (1 - ssim(pred[None], target[None]))
                + 0.1 * (out.alpha - matte).abs().mean())
        if step == 0:
            dc.grad = None
        loss_sym = symmetry * ((colours - colours[mirror].detach()).abs().sum(1) * (1 - seen)).mean()
        (loss + loss_sym).backward()
        if step == 0:  # which Gaussians the portrait constrains at all
            seen = (dc.grad.abs().sum(1) > 0).float()
        optimizer.step()
        if progress is not None:
            progress((step + 1) / steps)
    with torch.no_grad():
        canon = torch.as_tensor(g.means) + torch.tanh(offset / MAX_OFFSET) * MAX_OFFSET
    new = Gaussians(means=canon.numpy().astype(np.float32), log_scales=g.log_scales, quats=g.quats,
                    opacity_logits=opacity.detach().numpy().astype(np.float32), sh_dc=dc.detach().numpy().astype(np.float32),
                    sh_rest=g.sh_rest)
    verts = head.identity_vertices(torch.as_tensor(avatar.identity.shape)[None])[0].numpy().astype(np.float64)
    tri = avatar.binding.triangles
    bary = closest_point_barycentrics(new.means, verts[head.data.faces[tri]]).astype(np.float32)
    meta = {**avatar.meta, "refine_steps": steps}
    return replace(avatar, gaussians=new, binding=Binding(tri, bary), meta=meta)

