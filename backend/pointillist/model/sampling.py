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
    #: with a `keep_point` check: end the sequence after this many consecutive points it refused, once it
    #: has kept as many (the plume the check cuts starts above a head that was written: refusals before
    #: that mean the points are elsewhere, and ending there left real photos with 24-point avatars)
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


class _Stream:
    """One sequence of a (possibly batched) generation: its grammar, random stream and what it wrote."""

    def __init__(self, tokenizer: PointTokenizer, max_points: int, options: SamplingOptions,
                 keep_point: Callable[[np.ndarray, int], bool] | None):
        self.t, self.options, self.keep_point = tokenizer, options, keep_point
        self.grammar = Grammar(tokenizer, max_points, options.min_points)
        self.rng = torch.Generator(device="cpu").manual_seed(options.seed)
        self.tokens = [tokenizer.start]
        self.hidden: list[Tensor] = []
        self.kept: list[bool] = []
        self.num_kept = self.run = 0
        self.ended = self.refused_stop = self.done = False
        self.started, self.seconds = time.perf_counter(), 0.0

    def _finish(self, end_token: bool = False) -> None:
        if end_token:
            self.tokens.append(self.t.end)
        self.done, self.seconds = True, time.perf_counter() - self.started

    def choose(self, model: ARTransformer, h: Tensor) -> int:
        """Sample the next token from this sequence's last hidden state (d,); END sets `done`."""
        # only the logits the grammar allows: the slot's range, plus END at a point boundary
        lo, hi, end_ok = self.grammar.allowed()
        candidates = model.logits_slice(h, lo, hi) if hi > lo else h.new_zeros(0)
        if end_ok:
            candidates = torch.cat([candidates, model.logits_slice(h, self.t.end, self.t.end + 1)])
        o = self.options
        filtered = filter_logits(candidates.float(), None, o.temperature, o.top_k, o.top_p)
        if o.temperature <= 0 or (o.greedy_first_point and self.grammar.points == 0):
            choice = int(torch.argmax(filtered))
        else:
            choice = int(torch.multinomial(torch.softmax(filtered, -1).cpu(), 1, generator=self.rng))
        token = lo + choice if choice < hi - lo else self.t.end
        self.tokens.append(token)
        if self.grammar.push(token):
            self.ended = True
            self._finish()
        return token

    def fed(self, token: int, h: Tensor) -> None:
        """`token` went through the transformer (hidden state h (d,)): judge a finished point, stop at the
        refusal run or the budget."""
        self.hidden.append(h)
        g = self.grammar
        if self.keep_point is not None and not g.cur:  # a point was just finished
            ok = bool(self.keep_point(self.t.dequantize(np.asarray(g.prev)[None])[0], token - self.t.bind_offset))
            self.kept.append(ok)
            self.num_kept += ok
            self.run = 0 if ok else self.run + 1
            if self.run >= self.options.refused_run and self.num_kept >= self.options.refused_run:
                self.refused_stop = True
                self._finish(end_token=True)
                return
        if g.points >= g.max_points and not g.cur:  # budget reached: END is the only choice left
            self._finish(end_token=True)

    def result(self, model: ARTransformer, cond: Tensor) -> Generated:
        seq = np.asarray(self.tokens, dtype=np.int64)
        body = seq[1:-1].reshape(-1, TOKENS_PER_POINT)
        P = len(body)
        hid = (torch.stack(self.hidden[: P * TOKENS_PER_POINT]).reshape(P, TOKENS_PER_POINT, -1) if P
               else cond.new_zeros(0, TOKENS_PER_POINT, model.config.dim))
        written = seq
        keep = np.asarray(self.kept, dtype=bool) if self.kept else np.ones(P, dtype=bool)
        refused = int((~keep).sum())
        if refused:  # a subsequence of a sorted sequence stays sorted, so it still decodes
            body, hid = body[keep], hid[torch.from_numpy(keep).to(hid.device)]
            seq = np.concatenate([seq[:1], body.reshape(-1), seq[-1:]])
        points, binding = self.t.decode(seq)  # the grammar guarantees this never raises
        return Generated(seq, points, body[:, :3].copy(), binding, hid, self.ended, self.seconds, refused,
                         self.refused_stop, written, keep)


def _select_rows(cache, rows: Tensor) -> None:
    """Keep only batch rows `rows` of every per-layer cache (a finished sequence stops costing compute)."""
    for lst in (cache.k, cache.v, cache.cross_k, cache.cross_v):
        lst[:] = [t.index_select(0, rows) for t in lst]


@torch.no_grad()
def generate_batch(model: ARTransformer, tokenizer: PointTokenizer, cond: Tensor, options: list[SamplingOptions],
                   keep_points: list[Callable[[np.ndarray, int], bool] | None] | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   cancelled: Callable[[], bool] | None = None, cond_mask: Tensor | None = None) -> list[Generated]:
    """Sample one point sequence per conditioning row (cond (B, C, d)), each with its own options (seed,
    temperature, budget...) and `keep_point` check, in lockstep: every sequence is at the same token slot
    at every step (a point is always four tokens), so one transformer step serves them all, and a
    finished sequence leaves the batch. Why: the rows share each step's weight reads and Python overhead,
    so offline sampling (`dataset sample-points`) runs several subjects at once. Each row still reads its
    own KV cache, which is memory-bound on a CPU: 8 rows gave ≈ 1.2x the subjects per second of 1.

    Each sequence is what `generate` gives for its row alone, up to float rounding of batched matmuls."""
    B = cond.shape[0]
    if len(options) != B:
        raise ValueError(f"{len(options)} sampling options for {B} conditionings")
    keep_points = keep_points or [None] * B
    streams = [_Stream(tokenizer, min(o.max_points, model.config.max_points), o, k) for o, k in zip(options, keep_points)]
    cache = model.new_cache(cond, capacity=max(s.grammar.max_points for s in streams) * TOKENS_PER_POINT + 2)
    active = list(range(B))  # stream index of each cache row
    h = model.prefill(torch.full((B, 1), tokenizer.start, device=cond.device), cache, cond_mask)[0][:, -1]
    steps = 0
    while True:
        # a sequence that finished on its last fed token, or chooses END now, leaves the batch
        feed = [(row, b, streams[b].choose(model, h[row])) for row, b in enumerate(active) if not streams[b].done]
        feed = [(row, b, token) for row, b, token in feed if not streams[b].done]
        if not feed:
            break
        if len(feed) < len(active):
            rows = [row for row, _, _ in feed]
            _select_rows(cache, torch.tensor(rows, device=cond.device))
            cond_mask = None if cond_mask is None else cond_mask[rows]
            active = [b for _, b, _ in feed]
        h = model.decode_hidden(torch.tensor([token for _, _, token in feed], device=cond.device), cache, cond_mask)
        for row, (_, b, token) in enumerate(feed):
            streams[b].fed(token, h[row])
        steps += 1
        if progress is not None and B == 1 and not streams[0].done and not streams[0].grammar.cur:
            progress(streams[0].grammar.points, streams[0].grammar.max_points)
        if cancelled is not None and steps % 64 == 0 and cancelled():
            raise Cancelled("generation cancelled")
    return [s.result(model, cond) for s in streams]


def generate(model: ARTransformer, tokenizer: PointTokenizer, cond: Tensor, options: SamplingOptions = SamplingOptions(),
             cond_mask: Tensor | None = None, progress: Callable[[int, int], None] | None = None,
             cancelled: Callable[[], bool] | None = None,
             keep_point: Callable[[np.ndarray, int], bool] | None = None) -> Generated:
    """Sample one point sequence for one conditioning (cond (1, C, d)). Temperature 0 is greedy.

    `keep_point(xyz, triangle)` (e.g. `SilhouetteCarver`) judges each finished point: a refused point stays
    in the transformer's context (it was written) but leaves the output, and `options.refused_run`
    consecutive refusals end the sequence once as many were kept. If it refuses every point, the output has
    none (`create`'s completeness check then decides what to do)."""
    if cond.shape[0] != 1:
        raise ValueError("generate samples one avatar at a time (cond batch must be 1; see generate_batch)")
    return generate_batch(model, tokenizer, cond, [options], [keep_point], progress, cancelled, cond_mask)[0]
