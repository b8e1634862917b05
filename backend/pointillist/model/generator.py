"""The whole generator: conditioning encoders, the AR point transformer and the Gaussian decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .ar_transformer import ARTransformer
from .config import GeneratorConfig
from .gaussian_decoder import DecodedGaussians, GaussianDecoder
from .image_encoder import ImageEncoder
from .point_encoder import PointEncoder
from .portrait_probe import PortraitView, probe_features
from .tokenizer import PointTokenizer

if TYPE_CHECKING:
    from ..head.model import HeadModel


class Generator(nn.Module):
    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.config = config
        self.tokenizer = PointTokenizer(config.tokenizer)
        self.image_encoder = ImageEncoder(config.image)
        self.point_encoder = PointEncoder(config.points)
        d = config.ar.dim
        self.image_proj = nn.Linear(config.image.dim, d)
        self.point_proj = nn.Linear(config.points.dim, d)
        self.source_emb = nn.Parameter(torch.zeros(2, d))  # which conditioning a token came from
        nn.init.normal_(self.source_emb, std=0.02)
        t = config.tokenizer
        self.ar = ARTransformer(config.ar, self.tokenizer.vocab_size, t.levels, (t.box_min, t.box_max))
        self.decoder = GaussianDecoder(config.decoder, config.tokenizer, d)

    def condition(self, images: Tensor, head_points: Tensor, image_scale: float | Tensor = 1.0,
                  point_scale: float | Tensor = 1.0, head_probe: Tensor | None = None) -> Tensor:
        """images (B, 3, S, S) in [0, 1], head_points (B, M, 6) -> conditioning tokens (B, C, d).

        `head_probe` (B, M, RAY_PROBE_FEATURES): what the portrait shows along each head sample's ray, for
        a head-point encoder with `config.points.probe`. `image_scale=0` zeroes everything taken from the
        portrait (the image features and the ray probe: the conditioning ablation); `point_scale` zeroes the
        head-mesh tokens. Either may be a (B, 1, 1) tensor to zero them per sample (training dropout).
        """
        img = self.image_proj(self.image_encoder(images)) * image_scale + self.source_emb[0]
        probe = head_probe * image_scale if head_probe is not None else None
        pts = self.point_proj(self.point_encoder(head_points, probe)) * point_scale + self.source_emb[1]
        return torch.cat([img, pts], dim=1)

    def decode(self, points: Tensor, hidden: Tensor, binding, portrait: PortraitView | None = None,
               head: HeadModel | None = None) -> DecodedGaussians:
        """One subject's points (P, 3), their tokens' hidden states (P, 4, d) and triangles (P,) -> Gaussians
        (batch of 1). A decoder that reads the portrait (`config.decoder.probe`) needs `portrait` and the
        head model that poses the points into it; the paper's decoder ignores both."""
        probe = None
        if self.config.decoder.probe:
            if portrait is None or head is None:
                raise ValueError("this checkpoint's decoder reads the portrait: pass portrait= and head=")
            probe = probe_features(points, binding, portrait, head)[None]
        return self.decoder(points[None], hidden[None], probe=probe)

    def parameter_counts(self) -> dict[str, int]:
        parts = {"image_encoder": self.image_encoder, "point_encoder": self.point_encoder, "ar": self.ar, "decoder": self.decoder}
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts
