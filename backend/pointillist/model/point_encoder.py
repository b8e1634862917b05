"""The head-point encoder: a small transformer over points sampled on the fitted head mesh.

The samples are fixed surface locations (triangle + barycentrics chosen once per head model with a
seed), so the same token always describes the same place on the head and only its position varies
with the fitted identity and expression.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..head.data import HeadModelData
from .config import PointEncoderConfig
from .layers import SetBlock, fourier_dim, fourier_features
from .portrait_probe import RAY_DISTANCES, RAY_PROBE_FEATURES

EXCLUDED_PARTS = ("mouth_cavity", "teeth_upper", "teeth_lower")
HEAD_EXTENT = 0.25  # metres: coordinates are divided by this before the Fourier encoding


class SurfaceSampler:
    """`num` area-weighted samples on the skin of a head model, always the same for the same model."""

    def __init__(self, data: HeadModelData, num: int, seed: int = 0):
        faces = np.asarray(data.faces, dtype=np.int64)
        allowed = np.ones(len(faces), dtype=bool)
        for name in EXCLUDED_PARTS:
            if data.face_parts is not None and name in data.part_names:
                allowed &= ~data.part_mask(name)
        v = data.vertices.astype(np.float64)
        area = 0.5 * np.linalg.norm(np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]]), axis=1)
        p = np.where(allowed, area, 0.0)
        rng = np.random.default_rng(seed)
        self.face_index = rng.choice(len(faces), size=num, p=p / p.sum())
        r = rng.random((num, 2))
        flip = r.sum(1) > 1
        r[flip] = 1 - r[flip]
        self.barycentrics = np.stack([1 - r.sum(1), r[:, 0], r[:, 1]], 1).astype(np.float32)
        self.triangles = torch.as_tensor(faces[self.face_index])
        self._bary = torch.as_tensor(self.barycentrics)

    def __call__(self, vertices: Tensor) -> Tensor:
        """(B, V, 3) posed or identity vertices -> (B, num, 6): positions and unit normals."""
        tri = vertices[:, self.triangles]  # (B, M, 3, 3)
        pos = (tri * self._bary.to(vertices)[None, :, :, None]).sum(2)
        n = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
        return torch.cat([pos, n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)], dim=-1)


class PointEncoder(nn.Module):
    """(B, M, 6) positions + normals [+ (B, M, RAY_PROBE_FEATURES) portrait rays] -> (B, M, dim) tokens.

    The ray-probe features (config `probe`) enter through the last columns of the input embedding, so a
    trained encoder gains them with zero columns and starts out unchanged (`train_generator.with_head_probe`).
    """

    def __init__(self, config: PointEncoderConfig = PointEncoderConfig()):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(self.geometry_features(config) + (RAY_PROBE_FEATURES if config.probe else 0), config.dim)
        self.blocks = nn.ModuleList(SetBlock(config.dim, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        # with the probe: per token, the logit that the avatar has a point near each ray distance (trained by
        # `Trainer.ray_occupancy_loss`; a dense target that teaches the tokens what the rays say about hair)
        self.ray_occupancy = nn.Linear(config.dim, len(RAY_DISTANCES)) if config.probe else None

    @staticmethod
    def geometry_features(config: PointEncoderConfig) -> int:
        return fourier_dim(3, config.frequencies) + 3

    def forward(self, points: Tensor, probe: Tensor | None = None) -> Tensor:
        parts = [fourier_features(points[..., :3] / HEAD_EXTENT, self.config.frequencies), points[..., 3:]]
        if self.config.probe:
            if probe is None:
                raise ValueError("this head-point encoder reads the portrait (config.probe): pass the ray-probe features")
            parts.append(probe.to(points.dtype))
        x = self.embed(torch.cat(parts, -1))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
