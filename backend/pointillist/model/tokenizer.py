"""Point cloud <-> token sequence in the paper's layout (pure numpy, invertible within half a bin).

A canonical box is quantised to 2**bits levels per axis. Points are sorted by y, then z, then x (neck
first, top of the hair last), so a cloud has exactly one sequence; points that fall into the same cell
keep only the first. Each point is four tokens in one shared vocabulary:

    x, y, z in [0, levels)        binding (triangle index) + levels        START, END, PAD after that

A sequence is START, x0 y0 z0 b0, x1 y1 z1 b1, ..., END. Token k >= 1 has type (k - 1) % 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TokenizerConfig

X, Y, Z, BIND = range(4)
TOKENS_PER_POINT = 4


class TokenError(ValueError):
    """A token sequence that does not follow the grammar."""


@dataclass
class Tokenized:
    tokens: np.ndarray  # (1 + 4P + 1,) int64
    points: np.ndarray  # (P, 3) float32: the de-quantised points, in sequence order
    binding: np.ndarray  # (P,) int64
    source_index: np.ndarray  # (P,) index of each kept point in the input
    clamped: int  # input points outside the box (moved onto its faces)
    merged: int  # input points dropped because an earlier point held the same cell


class PointTokenizer:
    def __init__(self, config: TokenizerConfig = TokenizerConfig()):
        self.config = config
        self.levels = config.levels
        self.lo = np.asarray(config.box_min, dtype=np.float64)
        self.hi = np.asarray(config.box_max, dtype=np.float64)
        if np.any(self.hi <= self.lo):
            raise ValueError("tokenizer box_max must exceed box_min on every axis")
        self.bin = (self.hi - self.lo) / self.levels
        self.bind_offset = self.levels
        self.start = self.levels + config.num_faces
        self.end = self.start + 1
        self.pad = self.start + 2
        self.vocab_size = config.vocab_size

    # ------------------------------------------------------------------ coordinates
    def quantize(self, points: np.ndarray) -> tuple[np.ndarray, int]:
        """(P, 3) metres -> (P, 3) int64 cells, and how many points lay outside the box."""
        p = np.asarray(points, dtype=np.float64)
        cells = np.floor((p - self.lo) / self.bin).astype(np.int64)
        outside = int(np.any((cells < 0) | (cells >= self.levels), axis=1).sum())
        return np.clip(cells, 0, self.levels - 1), outside

    def dequantize(self, cells: np.ndarray) -> np.ndarray:
        """Cell centres (P, 3) float32 in metres."""
        return (self.lo + (np.asarray(cells, dtype=np.float64) + 0.5) * self.bin).astype(np.float32)

    @staticmethod
    def order(cells: np.ndarray) -> np.ndarray:
        """Sequence order: by y, then z, then x (stable)."""
        return np.lexsort((cells[:, X], cells[:, Z], cells[:, Y]))

    # ------------------------------------------------------------------ sequences
    def encode(self, points: np.ndarray, binding: np.ndarray) -> Tokenized:
        binding = np.asarray(binding, dtype=np.int64).reshape(-1)
        if len(binding) != len(points):
            raise ValueError(f"{len(points)} points but {len(binding)} bindings")
        if len(binding) and (binding.min() < 0 or binding.max() >= self.config.num_faces):
            raise ValueError(f"bindings must lie in [0, {self.config.num_faces})")
        cells, clamped = self.quantize(points)
        order = self.order(cells)
        cells, binding, source = cells[order], binding[order], order
        keep = np.ones(len(cells), dtype=bool)
        keep[1:] = np.any(cells[1:] != cells[:-1], axis=1)
        cells, binding, source = cells[keep], binding[keep], source[keep]
        body = np.concatenate([cells, binding[:, None] + self.bind_offset], axis=1).reshape(-1)
        tokens = np.concatenate([[self.start], body, [self.end]]).astype(np.int64)
        return Tokenized(tokens, self.dequantize(cells), binding, source, clamped, int((~keep).sum()))

    def decode(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens (with or without START/END/PAD) -> (points (P, 3) float32, binding (P,) int64).

        Raises TokenError when the body is not whole points of (coordinate, coordinate, coordinate,
        binding) or goes backwards in the y-z-x order.
        """
        t = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(t) and t[0] == self.start:
            t = t[1:]
        stop = np.flatnonzero((t == self.end) | (t == self.pad))
        if len(stop):
            t = t[: stop[0]]
        if len(t) % TOKENS_PER_POINT:
            raise TokenError(f"{len(t)} body tokens is not a whole number of points")
        body = t.reshape(-1, TOKENS_PER_POINT)
        coords, bind = body[:, :3], body[:, 3] - self.bind_offset
        if np.any((coords < 0) | (coords >= self.levels)):
            raise TokenError("a coordinate slot holds a non-coordinate token")
        if np.any((bind < 0) | (bind >= self.config.num_faces)):
            raise TokenError("a binding slot holds a non-binding token")
        keys = coords[:, Y] * self.levels**2 + coords[:, Z] * self.levels + coords[:, X]
        if np.any(np.diff(keys) <= 0):
            raise TokenError("points are not in strictly increasing y-z-x order")
        return self.dequantize(coords), bind

    def token_type(self, positions: np.ndarray) -> np.ndarray:
        """Slot type (X, Y, Z, BIND) of sequence positions >= 1."""
        return (np.asarray(positions) - 1) % TOKENS_PER_POINT
