"""Grammar-constrained sampling of point sequences: every sample decodes.

At each step a mask allows only the tokens that keep the sequence valid: coordinates in the x, y, z
slots, a triangle in the binding slot, END only at a point boundary (after at least one point, and
forced at the point budget), and coordinate ranges that never go backwards in the y-z-x order (the next
point's (y, z, x) key is strictly greater than the last one's, with infeasible choices excluded early so
no later slot is left without a legal token).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .ar_transformer import ARTransformer
from .tokenizer import BIND, TOKENS_PER_POINT, PointTokenizer, X, Y, Z


class Cancelled(Exception):
    """Generation stopped because the caller's cancel check said so."""


@dataclass
class SamplingOptions:
    temperature: float = 0.5
    top_k: int = 0  # 0: off
    top_p: float = 0.95  # 1: off
    max_points: int = 1024
    min_points: int = 1
    seed: int = 0
    #: with a `keep_point` check: end the sequence after this many consecutive points it refused
    refused_run: int = 24
    #: take the first point's tokens at the mode: the y-z-x order never goes back, so a first point sampled
    #: from the distribution's tail (the crown instead of the neck) loses everything below it for good
    greedy_first_point: bool = True


@dataclass
class Generated:
    tokens: np.ndarray  # (1 + 4P + 1,) START ... END
    points: np.ndarray  # (P, 3) float32 cell centres
    cells: np.ndarray  # (P, 3) int64
    binding: np.ndarray  # (P,) int64
    hidden: Tensor  # (P, 4, dim): last-layer hidden state of each point's four tokens
    ended: bool  # True if the model chose END, False if the budget stopped it
    seconds: float
    refused: int = 0  # points written by the model but dropped by the `keep_point` check
    refused_stop: bool = False  # True if a run of refused points ended the sequence
    #: every point the model wrote (START ... END), refused ones included, and which of them were kept:
    #: a teacher-forced pass over `written` reproduces the context `hidden` was computed in (within a window)
    written: np.ndarray | None = None
    kept: np.ndarray | None = None


class Grammar:
    """Which tokens may come next, from the last finished point and the current partial point."""

    def __init__(self, tokenizer: PointTokenizer, max_points: int, min_points: int = 1):
        self.t = tokenizer
        self.L = tokenizer.levels
        self.max_points = max_points
        self.min_points = max(1, min_points)
        self.prev: tuple[int, int, int] | None = None  # (x, y, z) of the last point
        self.cur: list[int] = []
        self.points = 0

    def allowed(self) -> tuple[int, int, bool]:
        """(lo, hi) half-open token range and whether END is allowed too."""
        L, slot = self.L, len(self.cur)
        if slot == BIND:
            return self.t.bind_offset, self.t.bind_offset + self.t.config.num_faces, False
        if slot == X:
            can_end = self.points >= self.min_points
            if self.points >= self.max_points:
                return 0, 0, True
            lo = 0
            if self.prev is not None and self.prev[1] == L - 1 and self.prev[2] == L - 1:
                lo = self.prev[0] + 1  # y and z cannot grow: x must
            return lo, L, can_end or lo >= L
        if self.prev is None:
            return 0, L, False
        px, py, pz = self.prev
        x = self.cur[0]
        if slot == Y:
            same_y_ok = pz < L - 1 or x > px
            return (py if same_y_ok else py + 1), L, False
        y = self.cur[1]
        if y > py:
            return 0, L, False
        return (pz if x > px else pz + 1), L, False

    def push(self, token: int) -> bool:
        """Record a sampled token; True when it was END."""
        if token == self.t.end:
            return True
        if len(self.cur) < BIND:
            self.cur.append(token)
        else:
            self.prev = (self.cur[X], self.cur[Y], self.cur[Z])
            self.cur = []
            self.points += 1
        return False

    def mask(self, vocab: int, device=None) -> Tensor:
        lo, hi, end = self.allowed()
        m = torch.zeros(vocab, dtype=torch.bool, device=device)
        m[lo:hi] = True
        if end:
            m[self.t.end] = True
        return m


def filter_logits(logits: Tensor, allowed: Tensor | None, temperature: float, top_k: int, top_p: float) -> Tensor:
    """Masked, temperature-scaled logits with top-k / nucleus filtering (-inf where excluded)."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    else:
        allowed = torch.isfinite(logits)
    if temperature <= 0:
        return logits
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, int(allowed.sum()))).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, -1) > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(model: ARTransformer, tokenizer: PointTokenizer, cond: Tensor, options: SamplingOptions = SamplingOptions(),
             cond_mask: Tensor | None = None, progress: Callable[[int, int], None] | None = None,
             cancelled: Callable[[], bool] | None = None,
             keep_point: Callable[[np.ndarray, int], bool] | None = None) -> Generated:
    """Sample one point sequence for one conditioning (cond (1, C, d)). Temperature 0 is greedy.

    `keep_point(xyz, triangle)` (e.g. `SilhouetteCarver`) judges each finished point: a refused point stays
    in the transformer's context (it was written) but leaves the output, and `options.refused_run`
    consecutive refusals end the sequence. If it refuses every point, the output keeps them all."""
    start_time = time.perf_counter()
    if cond.shape[0] != 1:
        raise ValueError("generate samples one avatar at a time (cond batch must be 1)")
    max_points = min(options.max_points, model.config.max_points)
    grammar = Grammar(tokenizer, max_points, options.min_points)
    gen = torch.Generator(device="cpu").manual_seed(options.seed)
    cache = model.new_cache(cond, capacity=max_points * TOKENS_PER_POINT + 2)
    tokens = [tokenizer.start]
    hidden: list[Tensor] = []
    h, _ = model.prefill(torch.tensor([[tokenizer.start]], device=cond.device), cache, cond_mask)
    h = h[:, -1]
    ended = refused_stop = False
    kept: list[bool] = []
    run = 0
    while True:
        # only the logits the grammar allows: the slot's range, plus END at a point boundary
        lo, hi, end_ok = grammar.allowed()
        candidates = model.logits_slice(h[0], lo, hi) if hi > lo else h.new_zeros(0)
        if end_ok:
            candidates = torch.cat([candidates, model.logits_slice(h[0], tokenizer.end, tokenizer.end + 1)])
        filtered = filter_logits(candidates.float(), None, options.temperature, options.top_k, options.top_p)
        if options.temperature <= 0 or (options.greedy_first_point and grammar.points == 0):
            choice = int(torch.argmax(filtered))
        else:
            choice = int(torch.multinomial(torch.softmax(filtered, -1).cpu(), 1, generator=gen))
        token = lo + choice if choice < hi - lo else tokenizer.end
        tokens.append(token)
        if grammar.push(token):
            ended = True
            break
        h = model.decode_hidden(torch.tensor([token], device=cond.device), cache, cond_mask)
        hidden.append(h[0])
        if keep_point is not None and not grammar.cur:  # a point was just finished
            ok = bool(keep_point(tokenizer.dequantize(np.asarray(grammar.prev)[None])[0], token - tokenizer.bind_offset))
            kept.append(ok)
            run = 0 if ok else run + 1
            if run >= options.refused_run:
                tokens.append(tokenizer.end)
                refused_stop = True
                break
        if grammar.points >= max_points and not grammar.cur:  # budget reached: END is the only choice left
            tokens.append(tokenizer.end)
            break
        if not grammar.cur and progress is not None:
            progress(grammar.points, max_points)
        if cancelled is not None and len(tokens) % 64 == 0 and cancelled():
            raise Cancelled("generation cancelled")
    seq = np.asarray(tokens, dtype=np.int64)
    body = seq[1:-1].reshape(-1, TOKENS_PER_POINT)
    P = len(body)
    hid = torch.stack(hidden[: P * TOKENS_PER_POINT]).reshape(P, TOKENS_PER_POINT, -1) if P else cond.new_zeros(0, TOKENS_PER_POINT, model.config.dim)
    written = seq
    keep = np.asarray(kept, dtype=bool) if kept else np.ones(P, dtype=bool)
    if not keep.any():  # every point refused: keep them all
        keep[:] = True
    refused = int((~keep).sum())
    if refused:  # a subsequence of a sorted sequence stays sorted, so it still decodes
        body, hid = body[keep], hid[torch.from_numpy(keep).to(hid.device)]
        seq = np.concatenate([seq[:1], body.reshape(-1), seq[-1:]])
    points, binding = tokenizer.decode(seq)  # the grammar guarantees this never raises
    return Generated(seq, points, body[:, :3].copy(), binding, hid, ended,
                     time.perf_counter() - start_time, refused, refused_stop, written, keep)
