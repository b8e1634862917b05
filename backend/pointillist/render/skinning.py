"""Rotation skinning of registered render objects: each Gaussian turns by polar(sum_j w_j B_j) Q R(rest).

The render bridge registers a rigged object's weight patterns once (an avatar has ~1,500 distinct weightings
for 20k Gaussians) and then sends only its bones' rotations per frame; the blend, its polar factor (Newton's
iteration, as `head.lbs.orthonormalize`) and the quaternion happen once per pattern, and one quaternion product
per Gaussian. As torch ops on these small arrays this cost 2.6 ms a frame, mostly per-op overhead; one compiled
pass costs a few hundredths of that. Without numba the same maths runs through `head.lbs` in torch.
"""

from __future__ import annotations

import numpy as np

from .jit import AVAILABLE, parallel_jit, prange

POLAR_ITERATIONS = 5  # as head.lbs.orthonormalize: quadratic convergence, blended LBS rotations need 3-4


def _pattern_quats(weights, bones, post, iterations, out):  # pragma: no cover - compiled
    """Per pattern: blend the bones, polar-orthonormalise, to a w-first quaternion, times `post`."""
    for p in prange(weights.shape[0]):
        x = np.zeros((3, 3))
        total = 0.0
        for j in range(weights.shape[1]):
            w = weights[p, j]
            total += w
            for a in range(3):
                for b in range(3):
                    x[a, b] += w * bones[j, a, b]
        if total <= 0.0:  # an unweighted pattern does not move
            x[0, 0] = 1.0
            x[1, 1] = 1.0
            x[2, 2] = 1.0
        for _ in range(iterations):
            c00 = x[1, 1] * x[2, 2] - x[2, 1] * x[1, 2]
            c10 = x[2, 1] * x[0, 2] - x[0, 1] * x[2, 2]
            c20 = x[0, 1] * x[1, 2] - x[1, 1] * x[0, 2]
            c01 = x[1, 2] * x[2, 0] - x[2, 2] * x[1, 0]
            c11 = x[2, 2] * x[0, 0] - x[0, 2] * x[2, 0]
            c21 = x[0, 2] * x[1, 0] - x[1, 2] * x[0, 0]
            c02 = x[1, 0] * x[2, 1] - x[2, 0] * x[1, 1]
            c12 = x[2, 0] * x[0, 1] - x[0, 0] * x[2, 1]
            c22 = x[0, 0] * x[1, 1] - x[1, 0] * x[0, 1]
            det = x[0, 0] * c00 + x[1, 0] * c10 + x[2, 0] * c20
            x[0, 0] = 0.5 * (x[0, 0] + c00 / det)
            x[1, 0] = 0.5 * (x[1, 0] + c10 / det)
            x[2, 0] = 0.5 * (x[2, 0] + c20 / det)
            x[0, 1] = 0.5 * (x[0, 1] + c01 / det)
            x[1, 1] = 0.5 * (x[1, 1] + c11 / det)
            x[2, 1] = 0.5 * (x[2, 1] + c21 / det)
            x[0, 2] = 0.5 * (x[0, 2] + c02 / det)
            x[1, 2] = 0.5 * (x[1, 2] + c12 / det)
            x[2, 2] = 0.5 * (x[2, 2] + c22 / det)
        # rotation matrix -> quaternion by the largest pivot
        t0 = 1.0 + x[0, 0] + x[1, 1] + x[2, 2]
        t1 = 1.0 + x[0, 0] - x[1, 1] - x[2, 2]
        t2 = 1.0 - x[0, 0] + x[1, 1] - x[2, 2]
        t3 = 1.0 - x[0, 0] - x[1, 1] + x[2, 2]
        if t0 >= t1 and t0 >= t2 and t0 >= t3:
            w, qx, qy, qz = t0, x[2, 1] - x[1, 2], x[0, 2] - x[2, 0], x[1, 0] - x[0, 1]
        elif t1 >= t2 and t1 >= t3:
            w, qx, qy, qz = x[2, 1] - x[1, 2], t1, x[0, 1] + x[1, 0], x[0, 2] + x[2, 0]
        elif t2 >= t3:
            w, qx, qy, qz = x[0, 2] - x[2, 0], x[0, 1] + x[1, 0], t2, x[1, 2] + x[2, 1]
        else:
            w, qx, qy, qz = x[1, 0] - x[0, 1], x[0, 2] + x[2, 0], x[1, 2] + x[2, 1], t3
        norm = np.sqrt(w * w + qx * qx + qy * qy + qz * qz)
        w, qx, qy, qz = w / norm, qx / norm, qy / norm, qz / norm
        pw, px, py, pz = post[0], post[1], post[2], post[3]
        out[p, 0] = w * pw - qx * px - qy * py - qz * pz
        out[p, 1] = w * px + qx * pw + qy * pz - qz * py
        out[p, 2] = w * py - qx * pz + qy * pw + qz * px
        out[p, 3] = w * pz + qx * py - qy * px + qz * pw


def _splat_quats(pattern_q, index, rest, out):  # pragma: no cover - compiled
    for i in prange(index.shape[0]):
        q = pattern_q[index[i]]
        r = rest[i]
        out[i, 0] = q[0] * r[0] - q[1] * r[1] - q[2] * r[2] - q[3] * r[3]
        out[i, 1] = q[0] * r[1] + q[1] * r[0] + q[2] * r[3] - q[3] * r[2]
        out[i, 2] = q[0] * r[2] - q[1] * r[3] + q[2] * r[0] + q[3] * r[1]
        out[i, 3] = q[0] * r[3] + q[1] * r[2] - q[2] * r[1] + q[3] * r[0]


_pattern_kernel = parallel_jit(_pattern_quats) if AVAILABLE else None
_splat_kernel = parallel_jit(_splat_quats) if AVAILABLE else None


def skin_quaternions(weights: np.ndarray, index: np.ndarray, rest: np.ndarray, bones: np.ndarray,
                     post: np.ndarray) -> np.ndarray:
    """(N, 4) float32 posed rotations, w-first: polar(sum_j weights[index_i, j] bones_j) post rest_i.

    `weights` (P, J) pattern rows (all-zero rows stay put), `index` (N,) each Gaussian's pattern, `rest` (N, 4)
    canonical rotations, `bones` (J, 3, 3) rotations, `post` (4,) a quaternion applied before the bones.
    """
    weights = np.ascontiguousarray(weights, np.float64)
    bones = np.ascontiguousarray(bones, np.float64)
    post = np.ascontiguousarray(post, np.float64)
    if _pattern_kernel is None:  # pragma: no cover - numba missing
        return _skin_quaternions_torch(weights, index, rest, bones, post)
    pattern_q = np.empty((len(weights), 4))
    _pattern_kernel(weights, bones, post, POLAR_ITERATIONS, pattern_q)
    out = np.empty((len(index), 4), np.float32)
    _splat_kernel(pattern_q.astype(np.float32), np.ascontiguousarray(index, np.int64),
                  np.ascontiguousarray(rest, np.float32), out)
    return out


def _skin_quaternions_torch(weights, index, rest, bones, post) -> np.ndarray:
    """The same maths with the head model's own LBS functions: the path without numba, and the tests' oracle."""
    import torch

    from ..head.lbs import matrix_to_quaternion, orthonormalize, quaternion_multiply

    w = torch.from_numpy(weights)
    blended = torch.einsum("pj,jab->pab", w, torch.from_numpy(bones))
    rot = torch.eye(3, dtype=torch.float64).repeat(len(w), 1, 1)
    moved = w.sum(dim=1) > 0
    if moved.any():
        rot[moved] = orthonormalize(blended[moved], POLAR_ITERATIONS)
    q = quaternion_multiply(matrix_to_quaternion(rot), torch.from_numpy(post)).float()
    return quaternion_multiply(q[torch.as_tensor(np.asarray(index, np.int64))],
                               torch.as_tensor(np.asarray(rest, np.float32))).numpy()
