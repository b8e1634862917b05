"""Teacher forcing: the AR transformer's hidden states over a given token sequence.

`create` needs them for points it did not sample (the fitted head's surface, its last-resort fallback) and
training needs them for every decoder step; one definition keeps the two from drifting apart. A long
sequence runs in windows that overlap by half, as training does, each position computed once.
"""

from __future__ import annotations

import numpy as np
import torch

from .generator import Generator


def windowed_passes(model: Generator, tokens: torch.Tensor, cond: torch.Tensor):
    """Teacher-forced passes over a whole sequence (n,) in windows that overlap by half, each starting
    at a point boundary; yields (first, last, hidden, logits) for positions first..last-1, each position
    once, with as much context as the window allows."""
    window = model.config.ar.window
    n = len(tokens)
    done = start = 0
    while done < n:
        end = min(n, start + window)
        h, logits = model.ar(tokens[None, start:end], cond, positions=torch.arange(start, end, device=tokens.device))
        yield done, end, h[0, done - start:], logits[0, done - start:]
        done = end
        start = max(0, end - window // 2)
        start = start if start == 0 else 1 + 4 * ((start - 1) // 4)


def teacher_forced_pass(model: Generator, seq: np.ndarray, cond: torch.Tensor,
                        keep_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(last hidden states (P, 4, d) of every point's tokens, logits (n, vocab) predicting seq[1:] or None)
    of a START ... END sequence; differentiable when grad is enabled. The logits of a long sequence are
    large (n × vocab floats): keep them only when a loss needs them."""
    tokens = torch.as_tensor(seq[:-1], device=cond.device)
    hs, ls = [], []
    for _, _, h, logits in windowed_passes(model, tokens, cond):
        hs.append(h)
        if keep_logits:
            ls.append(logits)
    hidden = torch.cat(hs)
    P = (len(tokens) - 1) // 4
    return hidden[1:1 + 4 * P].reshape(P, 4, -1), (torch.cat(ls) if keep_logits else None)


def teacher_forced_hidden(model: Generator, seq: np.ndarray, cond: torch.Tensor) -> torch.Tensor:
    """Last hidden states (P, 4, d) of every point's tokens in a START ... END sequence."""
    return teacher_forced_pass(model, seq, cond, keep_logits=False)[0]
