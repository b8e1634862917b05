"""Pre-training the image encoder on renders with proxy targets (`pointillist train encoder`).

Why: trained jointly with the AR transformer from scratch, the ViT learned nothing the generator used
(held-out AR loss 3.0641 with the image, 3.0642 with it zeroed). Four tokens per point of cross-entropy
reach the encoder late and weakly. No pretrained DINOv2 exists on these machines, so the encoder is
pre-trained first on what a portrait must tell the generator, all known exactly for synthetic subjects,
then frozen for the AR stage, as the paper freezes DINOv2:

* hair style (one of `SYNTH_STYLES`) and beard;
* the number of AR points (log): the adaptive point count;
* coarse occupancy of the avatar's canonical points (a G³ grid over the tokenizer's box): where hair is;
* coarse colour (a C³ grid of the mean colour of visible Gaussians in each cell): skin, hair, clothing;
* the camera's yaw and pitch as the face sees it (the orbit undone by the head's own root and neck turn in a
  posed portrait), so the features separate the view from the person.

Every view of every training subject is an example. Views are mirrored at random with their targets
(grids flip in x, yaw changes sign) and jittered in scale and position as much as the portrait crop is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.config import TokenizerConfig
from ..render.sh import SH_C0
from ..synth.procedural import SYNTH_STYLES

#: The style target of subjects whose hair style is not a synthetic one (imported real captures): no style loss.
IGNORE_STYLE = -100

OCCUPANCY_GRID = 8
COLOUR_GRID = 4
POSE_SCALE_DEG = 30.0


@dataclass
class ProxyTargets:
    """Targets of a batch of views; every tensor's first dimension is the batch."""

    style: Tensor  # (B,) long
    beard: Tensor  # (B,) float 0/1
    log_count: Tensor  # (B,) float, standardised
    occupancy: Tensor  # (B, G, G, G) float 0/1, indexed (x, y, z)
    colour: Tensor  # (B, C, C, C, 3) float in [0, 1]
    colour_mask: Tensor  # (B, C, C, C) float: the cell holds visible Gaussians
    pose: Tensor  # (B, 2) yaw, pitch / POSE_SCALE_DEG

    def index(self, idx: Tensor) -> ProxyTargets:
        return ProxyTargets(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    def mirrored(self, flip: Tensor) -> ProxyTargets:
        """Targets of the horizontally mirrored views where `flip` (B,) is true."""
        f = flip.view(-1, 1, 1, 1)
        sign = torch.where(flip, -1.0, 1.0)
        return ProxyTargets(self.style, self.beard, self.log_count,
                            torch.where(f, self.occupancy.flip(1), self.occupancy),
                            torch.where(f[..., None], self.colour.flip(1), self.colour),
                            torch.where(f, self.colour_mask.flip(1), self.colour_mask),
                            self.pose * torch.stack([sign, torch.ones_like(sign)], dim=1))


def _cells(points: np.ndarray, box: TokenizerConfig, n: int) -> np.ndarray:
    lo, hi = np.asarray(box.box_min, np.float32), np.asarray(box.box_max, np.float32)
    ijk = np.floor((points - lo) / (hi - lo) * n).astype(np.int64)
    return np.clip(ijk, 0, n - 1)


def subject_targets(record, box: TokenizerConfig) -> dict[str, np.ndarray]:
    """View-independent targets of one subject (`SubjectRecord`)."""
    occ = np.zeros((OCCUPANCY_GRID,) * 3, np.float32)
    i, j, k = _cells(record.ar_points, box, OCCUPANCY_GRID).T
    occ[i, j, k] = 1.0
    visible = record.opacity_logits > 0.0
    rgb = np.clip(0.5 + SH_C0 * record.sh_dc[visible], 0.0, 1.0)
    flat = np.ravel_multi_index(_cells(record.means[visible], box, COLOUR_GRID).T, (COLOUR_GRID,) * 3)
    counts = np.bincount(flat, minlength=COLOUR_GRID ** 3).astype(np.float32)
    sums = np.stack([np.bincount(flat, rgb[:, c], minlength=COLOUR_GRID ** 3) for c in range(3)], axis=1)
    colour = (sums / np.maximum(counts, 1)[:, None]).reshape((COLOUR_GRID,) * 3 + (3,)).astype(np.float32)
    style = SYNTH_STYLES.index(record.style) if record.style in SYNTH_STYLES else IGNORE_STYLE  # real captures
    return {"style": np.int64(style), "beard": np.float32(record.beard),
            "count": np.float32(record.num_ar_points), "occupancy": occ, "colour": colour,
            "colour_mask": (counts >= 8).reshape((COLOUR_GRID,) * 3).astype(np.float32)}


def face_yaw_pitch(orbit_yaw_pitch: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """(V, 2) degrees: the camera's orbit direction (`render.camera.orbit_viewmat`'s yaw and pitch) expressed
    in the frame of the head after its root and neck rotations (`poses` (V, 5, 3) axis-angle). A face turned
    10° toward +x in front of a camera at yaw 0 looks like one seen from yaw -10°: that is what the image
    shows, so that is the target."""
    from scipy.spatial.transform import Rotation

    yaw, pitch = np.radians(np.asarray(orbit_yaw_pitch, np.float64)).T
    outward = np.stack([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], axis=1)
    poses = np.asarray(poses, np.float64)
    head = Rotation.from_rotvec(poses[:, 0]) * Rotation.from_rotvec(poses[:, 1])  # root, then neck
    seen = head.inv().apply(outward)
    return np.degrees(np.stack([np.arctan2(seen[:, 0], seen[:, 2]), np.arcsin(np.clip(seen[:, 1], -1, 1))], axis=1))


class ViewBank:
    """Every view of a split's subjects resized to the encoder's input, with their targets, in memory.

    720 subjects x 4 views at 168² is 240 MB of uint8: small enough to hold, and random batches then
    cost nothing to gather.
    """

    def __init__(self, dataset, image_size: int, box: TokenizerConfig, views: str = "all",
                 count_stats: tuple[float, float] | None = None, log=print):
        images, per_view, per_subject = [], [], []
        for n, record in enumerate(dataset):
            chosen = range(record.num_views) if views == "all" else [0]
            img = torch.as_tensor(record.images[list(chosen)]).permute(0, 3, 1, 2).float()
            if img.shape[-1] != image_size:
                img = F.interpolate(img, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
            images.append(img.round().clamp(0, 255).to(torch.uint8))
            t = subject_targets(record, box)
            per_subject.extend([t] * len(chosen))
            per_view.extend(face_yaw_pitch(record.view_yaw_pitch[list(chosen)], record.poses[list(chosen)]))
            if (n + 1) % 100 == 0:
                log(f"encoder data: {n + 1}/{len(dataset)} subjects")
        self.images = torch.cat(images)
        stack = lambda key: torch.as_tensor(np.stack([t[key] for t in per_subject]))
        log_count = torch.log(stack("count"))
        self.count_stats = count_stats or (float(log_count.mean()), float(log_count.std().clamp_min(1e-3)))
        mean, std = self.count_stats
        self.targets = ProxyTargets(stack("style"), stack("beard"), (log_count - mean) / std, stack("occupancy"),
                                    stack("colour"), stack("colour_mask"),
                                    torch.as_tensor(np.stack(per_view), dtype=torch.float32) / POSE_SCALE_DEG)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: Tensor, rng: torch.Generator | None = None, augment: bool = True) -> tuple[Tensor, ProxyTargets]:
        images = self.images[idx].float() / 255
        targets = self.targets.index(idx)
        if augment:
            images, targets = augment_views(images, targets, rng)
        return images, targets


def augment_views(images: Tensor, targets: ProxyTargets, rng: torch.Generator | None = None,
                  max_scale: float = 0.08, max_shift: float = 0.05) -> tuple[Tensor, ProxyTargets]:
    """Random mirror, scale and shift (the portrait crop's own uncertainty); edges repeat the border."""
    B = images.shape[0]
    u = torch.rand(B, 4, generator=rng)
    flip = u[:, 0] < 0.5
    scale = 1 + max_scale * (2 * u[:, 1] - 1)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = scale * torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = scale
    theta[:, :, 2] = max_shift * 2 * (2 * u[:, 2:] - 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out, targets.mirrored(flip)


class ProxyHeads(nn.Module):
    """Small MLP heads on [CLS ; mean patch token]; discarded after pre-training."""

    def __init__(self, dim: int, hidden: int = 384):
        super().__init__()
        self.sizes = {"style": len(SYNTH_STYLES), "beard": 1, "log_count": 1, "occupancy": OCCUPANCY_GRID ** 3,
                      "colour": 3 * COLOUR_GRID ** 3, "pose": 2}
        self.trunk = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, hidden), nn.GELU())
        self.out = nn.Linear(hidden, sum(self.sizes.values()))

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        pooled = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)
        parts = self.out(self.trunk(pooled)).split(list(self.sizes.values()), dim=-1)
        return dict(zip(self.sizes, parts))


def proxy_loss(pred: dict[str, Tensor], t: ProxyTargets) -> tuple[Tensor, dict[str, float]]:
    B = t.style.shape[0]
    known = t.style != IGNORE_STYLE
    style = F.cross_entropy(pred["style"][known], t.style[known]) if known.any() else pred["style"].sum() * 0.0
    beard = F.binary_cross_entropy_with_logits(pred["beard"][:, 0], t.beard)
    count = F.mse_loss(pred["log_count"][:, 0], t.log_count)
    occ = F.binary_cross_entropy_with_logits(pred["occupancy"], t.occupancy.reshape(B, -1))
    colour_err = (torch.sigmoid(pred["colour"]).reshape(t.colour.shape) - t.colour).abs().mean(-1)
    colour = (colour_err * t.colour_mask).sum() / t.colour_mask.sum().clamp_min(1)
    pose = F.mse_loss(pred["pose"], t.pose)
    total = style + 0.5 * beard + count + 4 * occ + 4 * colour + pose
    stats = {"style": style, "beard": beard, "count": count, "occupancy": occ, "colour": colour, "pose": pose}
    return total, {k: float(v.detach()) for k, v in stats.items()}


@torch.no_grad()
def proxy_metrics(encoder: nn.Module, heads: ProxyHeads, bank: ViewBank, batch_size: int = 64) -> dict[str, float]:
    """Held-out readings of what the encoder sees: style/beard accuracy, point-count error, occupancy IoU,
    colour error, pose error in degrees."""
    was = encoder.training, heads.training
    encoder.eval(), heads.eval()
    preds: dict[str, list[Tensor]] = {k: [] for k in heads.sizes}
    for start in range(0, len(bank), batch_size):
        images, _ = bank.batch(torch.arange(start, min(len(bank), start + batch_size)), augment=False)
        for k, v in heads(encoder(images)).items():
            preds[k].append(v)
    p = {k: torch.cat(v) for k, v in preds.items()}
    t = bank.targets
    B = len(bank)
    std = bank.count_stats[1]
    occ_pred = p["occupancy"] > 0
    occ_true = t.occupancy.reshape(B, -1) > 0.5
    inter = (occ_pred & occ_true).sum(1).float()
    union = (occ_pred | occ_true).sum(1).float().clamp_min(1)
    colour_err = (torch.sigmoid(p["colour"]).reshape(t.colour.shape) - t.colour).abs().mean(-1)
    encoder.train(was[0]), heads.train(was[1])
    return {
        "style_accuracy": float((p["style"].argmax(1) == t.style)[t.style != IGNORE_STYLE].float().mean()),
        "beard_accuracy": float(((p["beard"][:, 0] > 0).float() == t.beard).float().mean()),
        "count_error_pct": float(100 * ((p["log_count"][:, 0] - t.log_count) * std).exp().sub(1).abs().mean()),
        "occupancy_iou": float((inter / union).mean()),
        "colour_error": float((colour_err * t.colour_mask).sum() / t.colour_mask.sum().clamp_min(1)),
        "pose_error_deg": float((p["pose"] - t.pose).abs().mean() * POSE_SCALE_DEG),
    }
