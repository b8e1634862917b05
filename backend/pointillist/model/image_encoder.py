"""A Vision Transformer in DINOv2's layout, with parameter names equal to Meta's checkpoints.

The paper conditions on frozen DINOv2 features. No pretrained weights can be downloaded here, so the
project trains this encoder itself (jointly with the generator); when a user has Meta's published file
(`dinov2_vits14_pretrain.pth`, or the same tensors as `.safetensors`) `load_dinov2_weights` loads it with
`torch.load(weights_only=True)` (no pickle code runs) and the architecture is read from the tensors.
Only the MLP variants (ViT-S/B/L, with or without registers) exist in this layout; ViT-g's SwiGLU is refused.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ImageEncoderConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ValueError):
    """A weights file that is missing, unreadable or does not fit; the message names the file."""


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, ls_init: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim, ls_init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, ls_init)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ImageEncoder(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1 + registers + patches, dim) normalised tokens."""

    def __init__(self, config: ImageEncoderConfig = ImageEncoderConfig()):
        super().__init__()
        self.config = c = config
        if c.image_size % c.patch_size:
            raise ValueError(f"image_size {c.image_size} is not a multiple of patch_size {c.patch_size}")
        grid = c.image_size // c.patch_size
        self.patch_embed = PatchEmbed(c.patch_size, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, c.dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, c.num_registers, c.dim)) if c.num_registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, c.dim))  # unused here; kept so Meta's files load strictly
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio, c.layerscale_init) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def num_tokens(self) -> int:
        grid = self.config.image_size // self.config.patch_size
        return 1 + self.config.num_registers + grid * grid

    def _pos_embed(self, gh: int, gw: int) -> Tensor:
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        n = int(round(math.sqrt(patch_pos.shape[1])))
        if (gh, gw) != (n, n):  # weights trained at another resolution (Meta's are 518² = 37x37)
            grid = patch_pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
            patch_pos = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        B, _, H, W = images.shape
        p = self.config.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
        x = self.patch_embed((images - self.mean) / self.std)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self._pos_embed(H // p, W // p)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from `.safetensors` or a torch `.pth`/`.pt` loaded with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's fault
        raise CheckpointError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # training checkpoints wrap the weights
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dictionary of tensors")
    return state


def dinov2_config_from_weights(state: dict[str, Tensor], image_size: int, path: str = "weights") -> ImageEncoderConfig:
    """Read depth, width, heads, patch size and registers from Meta-layout tensors."""
    if "patch_embed.proj.weight" not in state:
        raise CheckpointError(f"{path}: not a DINOv2 checkpoint (no 'patch_embed.proj.weight')")
    if any(k.endswith("mlp.w12.weight") for k in state):
        raise CheckpointError(f"{path}: SwiGLU (ViT-g) DINOv2 variants are not supported; use ViT-S/B/L 14")
    dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    return ImageEncoderConfig(image_size=image_size, patch_size=int(patch), dim=int(dim), depth=depth,
                              heads=max(1, int(dim) // 64), mlp_ratio=hidden / dim, num_registers=int(registers))


def load_dinov2_weights(path: str | os.PathLike, image_size: int = 224) -> ImageEncoder:
    """An ImageEncoder holding Meta's DINOv2 weights (position embeddings resampled to `image_size`)."""
    state = read_weights(path)
    config = dinov2_config_from_weights(state, image_size, str(path))
    encoder = ImageEncoder(config)
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != encoder.pos_embed.shape:  # resample once to our grid
        grid = image_size // config.patch_size
        with torch.no_grad():
            holder = ImageEncoder.__new__(ImageEncoder)
            nn.Module.__init__(holder)
            holder.pos_embed = nn.Parameter(pos.float())
            state = {**state, "pos_embed": ImageEncoder._pos_embed(holder, grid, grid)}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("mask_token",)]
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not fit a DINOv2 ViT (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return encoder
