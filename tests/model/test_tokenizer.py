"""Tokenizer: the paper's layout, invertible within half a bin, one sequence per cloud."""

from __future__ import annotations

import numpy as np
import pytest
from pointillist.model.config import TokenizerConfig
from pointillist.model.tokenizer import BIND, PointTokenizer, TokenError


@pytest.fixture
def tok():
    return PointTokenizer(TokenizerConfig(num_faces=100))


def _cloud(n=500, seed=0):
    rng = np.random.default_rng(seed)
    lo, hi = np.array([-0.2, -0.24, -0.24]), np.array([0.2, 0.2, 0.16])
    return (lo + rng.random((n, 3)) * (hi - lo)).astype(np.float32), rng.integers(0, 100, n)


def test_round_trip_within_half_a_bin(tok):
    pts, bind = _cloud()
    enc = tok.encode(pts, bind)
    assert enc.merged == 0 and enc.clamped == 0
    assert enc.tokens[0] == tok.start and enc.tokens[-1] == tok.end and len(enc.tokens) == 2 + 4 * len(pts)
    points, binding = tok.decode(enc.tokens)
    err = np.abs(points - pts[enc.source_index])
    assert np.all(err <= tok.bin / 2 + 1e-6)
    assert np.array_equal(binding, bind[enc.source_index])
    # the paper's layout: x, y, z, binding + 1024 per point
    body = enc.tokens[1:-1].reshape(-1, 4)
    assert body[:, :3].max() < 1024 and np.all(body[:, BIND] >= 1024) and np.all(body[:, BIND] < 1124)


def test_order_is_y_then_z_then_x_and_independent_of_input_order(tok):
    pts, bind = _cloud(seed=1)
    a = tok.encode(pts, bind).tokens
    perm = np.random.default_rng(2).permutation(len(pts))
    b = tok.encode(pts[perm], bind[perm]).tokens
    assert np.array_equal(a, b)
    body = a[1:-1].reshape(-1, 4)
    keys = body[:, 1] * 1024**2 + body[:, 2] * 1024 + body[:, 0]
    assert np.all(np.diff(keys) > 0)


def test_same_cell_points_merge_and_outside_points_clamp(tok):
    pts = np.array([[0.0, 0.0, 0.0], [0.0001, 0.0001, 0.0001], [5.0, 0.0, 0.0]], dtype=np.float32)
    enc = tok.encode(pts, np.array([1, 2, 3]))
    assert enc.merged == 1 and enc.clamped == 1 and len(enc.binding) == 2


@pytest.mark.parametrize("bad", [
    [0, 1, 2],  # not a whole point
    [0, 1, 2, 3],  # binding slot holds a coordinate
    [1030, 1, 2, 1030],  # coordinate slot holds a binding
    [5, 1, 2, 1030, 4, 1, 2, 1030],  # goes backwards in x at equal y, z
])
def test_malformed_sequences_are_refused(tok, bad):
    with pytest.raises(TokenError):
        tok.decode(np.array([tok.start, *bad, tok.end]))


def test_bindings_must_be_triangles(tok):
    with pytest.raises(ValueError, match="bindings"):
        tok.encode(np.zeros((1, 3)), np.array([100]))
