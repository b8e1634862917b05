"""Binding maths: closest points on triangles, nearest-triangle binding, triangle frames (numpy + scipy).

A Gaussian follows one head triangle. Its barycentrics are those of the closest point on that triangle to
the Gaussian's canonical position (DESIGN §3), so animation can blend the triangle's vertex data. The
triangle frames are GaussianAvatars' (`utils/graphics_utils.py::compute_face_orientation`), used to convert
their triangle-local Gaussians to and from our canonical ones.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .gaussians import Binding

#: Points per chunk: bounds the float64 temporaries of the vectorised maths to a few tens of MB.
CHUNK = 65536


def closest_point_barycentrics(points: np.ndarray, tri_vertices: np.ndarray) -> np.ndarray:
    """Barycentrics (N, 3) float64 of the closest point on triangle i (tri_vertices[i], (N, 3, 3)) to points[i].

    Ericson's Voronoi-region method (Real-Time Collision Detection §5.1.5), vectorised: each point is
    classified as nearest a vertex, an edge or the face interior, which gives the exact closest point
    without iteration. Degenerate (zero-area) triangles take the closest point on their three edges.
    The result lies on the triangle (clamped to [0, 1]) and sums to 1.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    tri = np.asarray(tri_vertices, dtype=np.float64).reshape(-1, 3, 3)
    if len(p) != len(tri):
        raise ValueError(f"{len(p)} points but {len(tri)} triangles")
    if len(p) <= CHUNK:
        return _closest_point_barycentrics(p, tri)
    return np.concatenate([_closest_point_barycentrics(p[i:i + CHUNK], tri[i:i + CHUNK]) for i in range(0, len(p), CHUNK)])


def _closest_point_barycentrics(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    n = len(p)
    out = np.empty((n, 3))
    todo = np.ones(n, dtype=bool)

    def take(mask: np.ndarray, u, v, w) -> None:
        m = mask & todo
        out[m, 0], out[m, 1], out[m, 2] = (x[m] if np.ndim(x) else x for x in (u, v, w))
        todo[m] = False

    with np.errstate(divide="ignore", invalid="ignore"):
        take((d1 <= 0) & (d2 <= 0), 1.0, 0.0, 0.0)  # vertex region A
        take((d3 >= 0) & (d4 <= d3), 0.0, 1.0, 0.0)  # vertex region B
        take((d6 >= 0) & (d5 <= d6), 0.0, 0.0, 1.0)  # vertex region C
        t = d1 / (d1 - d3)
        take((vc <= 0) & (d1 >= 0) & (d3 <= 0), 1 - t, t, 0.0)  # edge AB
        t = d2 / (d2 - d6)
        take((vb <= 0) & (d2 >= 0) & (d6 <= 0), 1 - t, 0.0, t)  # edge AC
        t = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        take((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), 0.0, 1 - t, t)  # edge BC
        denom = va + vb + vc
        take(np.ones(n, dtype=bool), va / denom, vb / denom, vc / denom)  # face interior
    bad = ~np.isfinite(out).all(1)
    if bad.any():
        out[bad] = _closest_on_edges(p[bad], tri[bad])
    out = np.clip(out, 0.0, 1.0)
    return out / out.sum(1, keepdims=True)


def _closest_on_edges(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentrics of the closest point on the three edges (segments) of each triangle."""
    best_d = np.full(len(p), np.inf)
    best = np.zeros((len(p), 3))
    for i, j in ((0, 1), (1, 2), (2, 0)):
        a, b = tri[:, i], tri[:, j]
        ab = b - a
        length2 = _dot(ab, ab)
        t = np.clip(np.where(length2 > 0, _dot(p - a, ab) / np.where(length2 > 0, length2, 1.0), 0.0), 0.0, 1.0)
        d = np.linalg.norm(a + t[:, None] * ab - p, axis=1)
        better = d < best_d
        bary = np.zeros((len(p), 3))
        bary[:, i], bary[:, j] = 1 - t, t
        best[better], best_d[better] = bary[better], d[better]
    return best


def bind_to_nearest_triangles(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                              allowed: np.ndarray | None = None, candidates: int = 16) -> Binding:
    """Bind each point to its nearest triangle by true point-triangle distance.

    A KD-tree over triangle centroids proposes the `candidates` nearest triangles per point and the
    exact distance picks among them: exact unless the true nearest triangle's centroid is not among the
    k nearest centroids, which needs triangles far larger than their neighbours. `allowed` (F,) bool
    restricts the vocabulary (e.g. hair binds to scalp triangles only). Processed in chunks of points.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    face_ids = np.flatnonzero(allowed) if allowed is not None else np.arange(len(faces))
    if len(face_ids) == 0:
        raise ValueError("no triangles to bind to (empty face list or nothing allowed)")
    tri = vertices[faces[face_ids]]  # (F', 3, 3)
    tree = cKDTree(tri.mean(1))
    k = min(candidates, len(face_ids))
    triangles = np.empty(len(points), dtype=np.int64)
    bary = np.empty((len(points), 3), dtype=np.float32)
    for start in range(0, len(points), CHUNK):
        p = points[start:start + CHUNK]
        _, cand = tree.query(p, k=k)
        cand = cand.reshape(len(p), k)
        best_d = np.full(len(p), np.inf)
        best = np.zeros(len(p), dtype=np.int64)
        best_bary = np.zeros((len(p), 3))
        for j in range(k):
            t = tri[cand[:, j]]
            b = closest_point_barycentrics(p, t)
            d = np.linalg.norm(np.einsum("nk,nkc->nc", b, t) - p, axis=1)
            better = d < best_d
            best_d[better], best[better], best_bary[better] = d[better], cand[better, j], b[better]
        triangles[start:start + CHUNK] = face_ids[best]
        bary[start:start + CHUNK] = best_bary
    return Binding(triangles=triangles, barycentrics=bary)


def triangle_frames(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-triangle frames in GaussianAvatars' convention, float64.

    vertices (..., V, 3), faces (F, 3) -> centres (..., F, 3), rotations (..., F, 3, 3), scales (..., F).
    Columns of the rotation: a0 = unit(v1 - v0) along the first edge, a1 = unit(a0 × (v2 - v0)) the
    face normal, a2 = -unit(a1 × a0) in the face plane; scale = (|v1 - v0| + |a2 · (v2 - v0)|) / 2
    (mean of the first edge and the height over it); centre = mean of the three vertices.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    v0, v1, v2 = (vertices[..., faces[:, i], :] for i in range(3))
    a0 = _normalize(v1 - v0)
    a1 = _normalize(np.cross(a0, v2 - v0))
    a2 = -_normalize(np.cross(a1, a0))
    rotations = np.stack([a0, a1, a2], axis=-1)
    s0 = np.sqrt(np.maximum(_dot(v1 - v0, v1 - v0), 1e-20))  # GA's `length` clamps the same way
    s1 = np.abs(_dot(a2, v2 - v0))
    return (v0 + v1 + v2) / 3.0, rotations, (s0 + s1) / 2.0


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x * y).sum(-1)


def _normalize(x: np.ndarray) -> np.ndarray:
    """GaussianAvatars' safe_normalize: x / sqrt(max(|x|², 1e-20))."""
    return x / np.sqrt(np.maximum(_dot(x, x), 1e-20))[..., None]
