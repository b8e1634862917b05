"""The Gaussian decoder: generated points + the AR model's latents -> renderable Gaussians.

Per point it concatenates an MLP of the Fourier-encoded de-quantised position with an MLP of the AR
model's last hidden states of that point's four tokens (the paper found both necessary), runs a
transformer over all points, and emits k Gaussians per point: a bounded offset from the point, log-scales
around a base size, a unit quaternion, an opacity logit and the SH DC colour. k = 1 is the paper; k > 1
lets a CPU-sized point budget still give a dense avatar.

With `probe` on (our addition, see `portrait_probe`), a third MLP reads what the portrait shows under each
point, so colour comes from the photo rather than only through the AR latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import DecoderConfig, TokenizerConfig
from .layers import SetBlock, fourier_dim, fourier_features, mlp
from .portrait_probe import PROBE_FEATURES
from .tokenizer import TOKENS_PER_POINT

OUT_PER_GAUSSIAN = 3 + 3 + 4 + 1 + 3  # offset, log-scale, quaternion, opacity logit, SH DC


@dataclass
class DecodedGaussians:
    """Raw parameters (B, P*k, ...), in the bundle's conventions (see avatar/gaussians.py)."""

    means: Tensor
    log_scales: Tensor
    quats: Tensor
    opacity_logits: Tensor
    sh_dc: Tensor
    parent: Tensor  # (P*k,) index of the generated point each Gaussian came from


class GaussianDecoder(nn.Module):
    def __init__(self, config: DecoderConfig, tokenizer: TokenizerConfig, ar_dim: int):
        super().__init__()
        self.config = config
        lo, hi = torch.tensor(tokenizer.box_min), torch.tensor(tokenizer.box_max)
        self.register_buffer("centre", (lo + hi) / 2, persistent=False)
        self.register_buffer("half_extent", (hi - lo) / 2, persistent=False)
        d = config.dim
        self.pos_mlp = mlp(fourier_dim(3, config.frequencies), d, d)
        self.latent_mlp = mlp(TOKENS_PER_POINT * ar_dim, d, d)
        self.probe_mlp = mlp(PROBE_FEATURES, d, d) if config.probe else None
        self.fuse = nn.Linear((3 if config.probe else 2) * d, d)
        self.blocks = nn.ModuleList(SetBlock(d, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, config.gaussians_per_point * OUT_PER_GAUSSIAN)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():  # start as k small, spread, grey, half-opaque Gaussians around each point
            bias = torch.zeros(config.gaussians_per_point, OUT_PER_GAUSSIAN)
            k = config.gaussians_per_point
            if k > 1:
                g = torch.randn(k, 3, generator=torch.Generator().manual_seed(0))
                bias[:, :3] = torch.atanh((0.5 * g / g.norm(dim=1, keepdim=True)).clamp(-0.9, 0.9))
            bias[:, 6] = 1.0  # quaternion w
            self.out.bias.copy_(bias.reshape(-1))

    def forward(self, points: Tensor, hidden: Tensor, padding: Tensor | None = None,
                probe: Tensor | None = None) -> DecodedGaussians:
        """points (B, P, 3) metres, hidden (B, P, 4, ar_dim), padding (B, P) True where absent,
        probe (B, P, PROBE_FEATURES) when the config has `probe` (ignored otherwise)."""
        B, P, _ = points.shape
        c = self.config
        parts = [self.pos_mlp(fourier_features((points - self.centre) / self.half_extent, c.frequencies)),
                 self.latent_mlp(hidden.reshape(B, P, -1))]
        if self.probe_mlp is not None:
            if probe is None:
                raise ValueError("this decoder reads the portrait (config.probe): pass the probe features")
            parts.append(self.probe_mlp(probe))
        x = self.fuse(torch.cat(parts, dim=-1))
        for block in self.blocks:
            x = block(x, padding)
        raw = self.out(self.norm(x)).view(B, P, c.gaussians_per_point, OUT_PER_GAUSSIAN)
        offset = torch.tanh(raw[..., 0:3]) * c.child_radius
        means = points[:, :, None] + offset
        log_scales = raw[..., 3:6] + math.log(c.base_scale)
        quats = raw[..., 6:10]
        quats = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        flat = lambda t: t.reshape(B, P * c.gaussians_per_point, *t.shape[3:])
        parent = torch.arange(P, device=points.device).repeat_interleave(c.gaussians_per_point)
        return DecodedGaussians(flat(means), flat(log_scales), flat(quats), flat(raw[..., 10]), flat(raw[..., 11:14]), parent)
