"""Points on the fitted head's own surface, each bound to the triangle it lies on.

Also the voxel rule that turns an avatar's Gaussians into the generator's training targets.

The paper's "FLAME positions" ablation decodes these instead of generated points; `create` uses them as
its last resort when no sampled point cloud passes the completeness check, since they cover the face and
skull by construction (hair beyond the scalp is what they lack).
"""

from __future__ import annotations

import numpy as np
import torch

from ..head.model import HeadModel

#: parts that are not skin: the mouth's inside is drawn by the points bound near it
INTERIOR_PARTS = ("mouth_cavity", "teeth_upper", "teeth_lower")


def skin_faces(head: HeadModel, also_exclude: tuple[str, ...] = ()) -> np.ndarray:
    """Indices of the head's triangles that are skin: not the mouth's inside (nor the parts named)."""
    data = head.data
    skin = np.ones(data.num_faces, dtype=bool)
    for name in INTERIOR_PARTS + also_exclude:
        if data.face_parts is not None and name in data.part_names:
            skin &= ~data.part_mask(name)
    return np.flatnonzero(skin)


def template_points(head: HeadModel, shape: np.ndarray, voxel_m: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(points (P, 3) float32, triangles (P,) int64): the identity mesh's skin vertices, each bound to the
    first skin triangle holding it. With `voxel_m`, one vertex per occupied cell of a grid of that edge
    (`voxel_subsample`: the spacing the generator's training targets have)."""
    data = head.data
    with torch.no_grad():
        verts = head.identity_vertices(torch.as_tensor(np.asarray(shape), dtype=torch.float32)[None])[0].numpy()
    owner = np.full(data.num_vertices, -1)
    for f in skin_faces(head)[::-1]:
        owner[data.faces[f]] = f
    index = np.flatnonzero(owner >= 0)
    points, triangles = verts[index].astype(np.float32), owner[index].astype(np.int64)
    if voxel_m:
        points, triangles, _ = voxel_subsample(points, np.full(len(points), 10.0), triangles, voxel_m)
    return points, triangles.astype(np.int64)


def voxel_subsample(means: np.ndarray, opacity_logits: np.ndarray, binding: np.ndarray, voxel: float,
                    min_opacity: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AR targets: (points (P, 3) float32, binding (P,) int32, Gaussian index (P,) int64).

    Over Gaussians with sigmoid(logit) >= ``min_opacity``: per occupied cell of a grid of edge ``voxel``
    anchored at the origin, the Gaussian nearest the mean of the cell's Gaussians (lowest index on a
    tie). Sorted by cell (y, z, x). Deterministic.
    """
    logits = np.asarray(opacity_logits, dtype=np.float64)
    keep = np.flatnonzero(1.0 / (1.0 + np.exp(-logits)) >= min_opacity)
    if len(keep) == 0:
        return np.zeros((0, 3), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int64)
    pos = np.asarray(means, dtype=np.float64)[keep]
    cells = np.floor(pos / voxel).astype(np.int64)[:, [1, 2, 0]]  # (y, z, x): np.unique sorts rows lexicographically
    _, inverse = np.unique(cells, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse)
    centroid = np.stack([np.bincount(inverse, weights=pos[:, k]) for k in range(3)], 1) / counts[:, None]
    dist = ((pos - centroid[inverse]) ** 2).sum(1)
    order = np.lexsort((np.arange(len(pos)), dist, inverse))
    first = order[np.r_[True, inverse[order][1:] != inverse[order][:-1]]]  # one per cell, cells ascending
    index = keep[first]
    return (np.asarray(means, dtype=np.float32)[index], np.asarray(binding)[index].astype(np.int32), index.astype(np.int64))
