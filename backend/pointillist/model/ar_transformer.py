"""The decoder-only point transformer: per block cross-attention to the conditioning tokens, causal
self-attention (rotary positions, a sliding window), feed-forward.

Training runs whole windows (`forward`). Generation runs `prefill` once (it also caches the cross-
attention keys and values of the conditioning) and then `decode_one` per token against a static KV cache
allocated once for `max_points` (`KVCache`), attending to the last `window` tokens as training did.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ARConfig
from .layers import FeedForward
from .tokenizer import TOKENS_PER_POINT

START_TYPE = TOKENS_PER_POINT  # slot types 0..3 are x, y, z, binding; 4 is START


def token_types(positions: Tensor) -> Tensor:
    return torch.where(positions == 0, torch.full_like(positions, START_TYPE), (positions - 1) % TOKENS_PER_POINT)


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of (B, H, T, D) by positions (T,) or (B, T)."""
    d = x.shape[-1] // 2
    inv = base ** (-torch.arange(d, device=x.device, dtype=torch.float32) / d)
    ang = positions.to(torch.float32)[..., None] * inv  # (..., T, d)
    if ang.dim() == 3:
        ang = ang[:, None]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


@dataclass
class KVCache:
    """Static per-layer caches: self-attention keys/values for every position, cross-attention once."""

    k: list[Tensor]  # (B, H, capacity, D) per layer
    v: list[Tensor]
    cross_k: list[Tensor]  # (B, H, C, D)
    cross_v: list[Tensor]
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]


class ARBlock(nn.Module):
    def __init__(self, config: ARConfig):
        super().__init__()
        d, self.heads = config.dim, config.heads
        self.norm_cross = nn.LayerNorm(d)
        self.cross_q = nn.Linear(d, d)
        self.cross_kv = nn.Linear(d, 2 * d)
        self.cross_out = nn.Linear(d, d)
        self.norm_self = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.self_out = nn.Linear(d, d)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = FeedForward(d, int(d * config.mlp_ratio), config.dropout)
        self.dropout = config.dropout

    def _split(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.heads, C // self.heads).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        B, H, T, D = x.shape
        return x.transpose(1, 2).reshape(B, T, H * D)

    def cross_keys(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.cross_kv(cond).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: Tensor, positions: Tensor, cross: tuple[Tensor, Tensor], cond_mask: Tensor | None,
                cache: tuple[Tensor, Tensor] | None = None, start: int = 0, window: int | None = None) -> Tensor:
        """x (B, T, d) at `positions` (T,). Without a cache: causal within x. With a cache: x holds
        positions start..start+T-1, written into the cache, attending to cached keys within `window`."""
        q = self._split(self.cross_q(self.norm_cross(x)))
        a = F.scaled_dot_product_attention(q, *cross, attn_mask=cond_mask)
        x = x + F.dropout(self.cross_out(self._merge(a)), self.dropout, self.training)

        q, k, v = (self._split(t) for t in self.qkv(self.norm_self(x)).chunk(3, dim=-1))
        q, k = rotary(q, positions), rotary(k, positions)
        T = x.shape[1]
        if cache is None:
            mask = None
            if window is not None and T > window:
                i = torch.arange(T, device=x.device)
                mask = (i[None] <= i[:, None]) & (i[:, None] - i[None] < window)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        else:
            ck, cv = cache
            ck[:, :, start:start + T] = k
            cv[:, :, start:start + T] = v
            lo = 0 if window is None else max(0, start + T - window)
            keys, values = ck[:, :, lo:start + T], cv[:, :, lo:start + T]
            if T == 1:
                a = F.scaled_dot_product_attention(q, keys, values)
            else:
                qi = torch.arange(start, start + T, device=x.device)[:, None]
                ki = torch.arange(lo, start + T, device=x.device)[None]
                mask = ki <= qi
                if window is not None:
                    mask = mask & (qi - ki < window)
                a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = x + F.dropout(self.self_out(self._merge(a)), self.dropout, self.training)
        return x + self.ff(self.norm_ff(x))


def sinusoid(values: Tensor, dim: int, max_frequency: float) -> Tensor:
    """(N,) values in [0, 1] -> (N, dim) sin/cos features at geometric frequencies 1..max_frequency."""
    half = dim // 2
    freqs = max_frequency ** (torch.arange(half, dtype=torch.float32) / max(1, half - 1))
    ang = 2 * math.pi * values[:, None].float() * freqs
    out = torch.cat([ang.sin(), ang.cos()], dim=1)
    return F.pad(out, (0, dim - out.shape[1]))


class ARTransformer(nn.Module):
    def __init__(self, config: ARConfig, vocab_size: int, levels: int = 1024,
                 box: tuple[tuple[float, ...], tuple[float, ...]] = ((-1.0,) * 3, (1.0,) * 3)):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.levels = levels
        self.num_faces = vocab_size - levels - 3
        self.register_buffer("box_min", torch.tensor(box[0], dtype=torch.float32), persistent=False)
        self.register_buffer("box_max", torch.tensor(box[1], dtype=torch.float32), persistent=False)
        #: triangle centroids of the head template in head space; saved with the weights (set_triangles)
        self.register_buffer("triangle_centroids", torch.zeros(self.num_faces, 3))
        self.pe_gain = nn.Parameter(torch.tensor(0.03))
        self.tok_emb = nn.Embedding(vocab_size, config.dim)
        self.type_emb = nn.Embedding(TOKENS_PER_POINT + 1, config.dim)
        self.blocks = nn.ModuleList(ARBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        if config.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    def set_triangles(self, centroids: Tensor) -> None:
        """Give the binding tokens their triangles' centroids (F, 3), metres in head space."""
        if centroids.shape != self.triangle_centroids.shape:
            raise ValueError(f"expected {tuple(self.triangle_centroids.shape)} centroids, got {tuple(centroids.shape)}")
        with torch.no_grad():
            self.triangle_centroids.copy_(centroids)

    def meaning_features(self) -> Tensor:
        """(vocab, dim) fixed features of what each token stands for (zeros for START/END/PAD); cached."""
        key = (self.triangle_centroids._version, self.triangle_centroids.data_ptr())
        if getattr(self, "_features_key", None) != key:
            with torch.no_grad():
                self._features = self._meaning_features()
            self._features_key = key
        return self._features

    def _meaning_features(self) -> Tensor:
        d = self.config.dim
        coords = sinusoid(torch.arange(self.levels, device=self.pe_gain.device) / self.levels, d, self.levels / 4)
        unit = (self.triangle_centroids - self.box_min) / (self.box_max - self.box_min)
        third = d // 3
        tri = torch.cat([sinusoid(unit[:, a], third, 64.0) for a in range(3)], dim=1)
        tri = F.pad(tri, (0, d - tri.shape[1]))
        return torch.cat([coords, tri, coords.new_zeros(3, d)], dim=0)

    def embedding_matrix(self) -> Tensor:
        """The effective token embedding (and, tied, output head) rows."""
        if not self.config.position_features:
            return self.tok_emb.weight
        features = self.meaning_features()
        if torch.is_grad_enabled():
            return self.tok_emb.weight + self.pe_gain * features
        # decoding: one sum per weight update, not one per token
        key = (self.tok_emb.weight._version, self.tok_emb.weight.data_ptr(), self.pe_gain._version, self._features_key)
        if getattr(self, "_matrix_key", None) != key:
            self._matrix = self.tok_emb.weight + self.pe_gain * features
            self._matrix_key = key
        return self._matrix

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.embedding_matrix())

    def output_logits(self, hidden: Tensor) -> Tensor:
        if self.config.tie_embeddings:
            return F.linear(hidden, self.embedding_matrix())
        return self.head(hidden)

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        return self.embed_tokens(tokens) + self.type_emb(token_types(positions))

    def forward(self, tokens: Tensor, cond: Tensor, positions: Tensor | None = None,
                cond_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher-forced pass over a window: tokens (B, T) at positions (T,) or (B, T) (default 0..T-1;
        a window cut from inside a sequence passes its true positions, which set the slot types)
        -> (hidden (B, T, d) after the final norm, logits (B, T, vocab))."""
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self._embed(tokens, positions)
        mask = None if cond_mask is None else cond_mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, positions, block.cross_keys(cond), mask, window=self.config.window)
        h = self.norm(x)
        return h, self.output_logits(h)

    # ----------------------------------------------------------------------------- generation
    def new_cache(self, cond: Tensor, capacity: int | None = None) -> KVCache:
        """Allocate the static cache once and compute every block's cross-attention keys."""
        B = cond.shape[0]
        capacity = capacity or (self.config.max_points * TOKENS_PER_POINT + 2)
        hd = self.config.dim // self.config.heads
        shape = (B, self.config.heads, capacity, hd)
        k = [cond.new_zeros(shape) for _ in self.blocks]
        v = [cond.new_zeros(shape) for _ in self.blocks]
        cross = [block.cross_keys(cond) for block in self.blocks]
        return KVCache(k, v, [c[0] for c in cross], [c[1] for c in cross])

    def prefill(self, tokens: Tensor, cache: KVCache, cond_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run a prompt (B, T) from position 0 into an empty cache; (hidden, logits) of every position."""
        return self._step(tokens, cache, cond_mask)

    def decode_one(self, token: Tensor, cache: KVCache, cond_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Feed one token (B,) at the cache's next position; (hidden (B, d), logits (B, vocab))."""
        h, logits = self._step(token[:, None], cache, cond_mask)
        return h[:, 0], logits[:, 0]

    def decode_hidden(self, token: Tensor, cache: KVCache, cond_mask: Tensor | None = None) -> Tensor:
        """`decode_one` without the output head: the sampler computes only the logits the grammar allows."""
        return self._step(token[:, None], cache, cond_mask, head=False)[0][:, 0]

    def logits_slice(self, hidden: Tensor, lo: int, hi: int) -> Tensor:
        """Logits of tokens lo..hi-1 only (B, hi - lo): a quarter of the steps need 1/9 of the head."""
        weight = self.embedding_matrix()[lo:hi] if self.config.tie_embeddings else self.head.weight[lo:hi]
        return F.linear(hidden, weight)

    def _step(self, tokens: Tensor, cache: KVCache, cond_mask: Tensor | None, head: bool = True) -> tuple[Tensor, Tensor | None]:
        start, T = cache.length, tokens.shape[1]
        if start + T > cache.capacity:
            raise ValueError(f"KV cache full ({cache.capacity} tokens)")
        positions = torch.arange(start, start + T, device=tokens.device)
        x = self._embed(tokens, positions)
        mask = None if cond_mask is None else cond_mask[:, None, None, :]
        for i, block in enumerate(self.blocks):
            x = block(x, positions, (cache.cross_k[i], cache.cross_v[i]), mask, cache=(cache.k[i], cache.v[i]),
                      start=start, window=self.config.window)
        cache.length = start + T
        h = self.norm(x)
        return h, (self.output_logits(h) if head else None)
