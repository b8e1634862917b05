"""Binding maths: closest points on triangles, nearest-triangle binding, triangle frames (numpy)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .gaussians import Binding


def closest_point_barycentrics(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentrics (N, 3) of the closest point on each triangle tri (N, 3, 3) to points (N, 3).

    Ericson's region classification (Real-Time Collision Detection §5.1.5), vectorised; degenerate
    triangles fall back to their nearest vertex. The result is clamped to the triangle and sums to 1.
    """
    p = np.asarray(points, dtype=np.float64)
    a, b, c = (np.asarray(tri[:, i], dtype=np.float64) for i in range(3))
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    n = len(p)
    out = np.zeros((n, 3))
    done = np.zeros(n, dtype=bool)

    def assign(mask, u, v, w):
        nonlocal done
        m = mask & ~done
        out[m, 0], out[m, 1], out[m, 2] = u[m] if np.ndim(u) else u, v[m] if np.ndim(v) else v, w[m] if np.ndim(w) else w
        done |= m

    one, zero = np.ones(n), np.zeros(n)
    assign((d1 <= 0) & (d2 <= 0), one, zero, zero)  # vertex A
    assign((d3 >= 0) & (d4 <= d3), zero, one, zero)  # vertex B
    with np.errstate(divide="ignore", invalid="ignore"):
        t = d1 / (d1 - d3)
        assign((vc <= 0) & (d1 >= 0) & (d3 <= 0), 1 - t, t, zero)  # edge AB
        assign((d6 >= 0) & (d5 <= d6), zero, zero, one)  # vertex C
        t = d2 / (d2 - d6)
        assign((vb <= 0) & (d2 >= 0) & (d6 <= 0), 1 - t, zero, t)  # edge AC
        t = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        assign((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), zero, 1 - t, t)  # edge BC
        denom = 1.0 / (va + vb + vc)
        v, w = vb * denom, vc * denom
        assign(np.ones(n, dtype=bool), 1 - v - w, v, w)  # inside
    bad = ~np.isfinite(out).all(1)
    if bad.any():  # degenerate triangle: nearest corner
        d = np.stack([np.linalg.norm(p[bad] - x[bad], axis=1) for x in (a, b, c)], 1)
        out[bad] = np.eye(3)[d.argmin(1)]
    out = np.clip(out, 0.0, 1.0)
    return out / out.sum(1, keepdims=True)


def bind_to_nearest_triangles(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                              allowed: np.ndarray | None = None, candidates: int = 16) -> Binding:
    """Bind each point to its nearest triangle by true point-triangle distance.

    `allowed` (F,) bool restricts the vocabulary (e.g. hair binds to scalp triangles only).
    Candidates come from a KD-tree over triangle centroids; the exact distance picks among them.
    """
    face_ids = np.flatnonzero(allowed) if allowed is not None else np.arange(len(faces))
    if len(face_ids) == 0:
        raise ValueError("no triangles allowed for binding")
    tri = vertices[faces[face_ids]]
    tree = cKDTree(tri.mean(1))
    k = min(candidates, len(face_ids))
    _, cand = tree.query(points, k=k)
    cand = cand.reshape(len(points), k)
    best_d = np.full(len(points), np.inf)
    best = np.zeros(len(points), dtype=np.int64)
    best_bary = np.zeros((len(points), 3))
    for j in range(k):
        t = tri[cand[:, j]]
        bary = closest_point_barycentrics(points, t)
        closest = (t * bary[..., None]).sum(1)
        d = np.linalg.norm(points - closest, axis=1)
        better = d < best_d
        best_d[better], best[better], best_bary[better] = d[better], cand[better, j], bary[better]
    return Binding(triangles=face_ids[best].astype(np.int64), barycentrics=best_bary.astype(np.float32))


def triangle_frames(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-triangle (centres (F, 3), rotations (F, 3, 3), scales (F,)) in GaussianAvatars' convention.

    Columns of the rotation: a0 along the first edge, a1 the face normal, a2 = -(a1 × a0);
    scale = mean of the first edge length and the triangle's height along a2.
    """
    v0, v1, v2 = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    a0 = _normalize(v1 - v0)
    a1 = _normalize(np.cross(a0, v2 - v0))
    a2 = -_normalize(np.cross(a1, a0))
    rot = np.stack([a0, a1, a2], axis=-1)
    s0 = np.linalg.norm(v1 - v0, axis=-1)
    s1 = np.abs((a2 * (v2 - v0)).sum(-1))
    return (v0 + v1 + v2) / 3.0, rot, (s0 + s1) / 2.0


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-20)
