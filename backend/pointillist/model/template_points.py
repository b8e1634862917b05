"""Points on the fitted head's own surface, each bound to the triangle it lies on.

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


def template_points(head: HeadModel, shape: np.ndarray, voxel_m: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(points (P, 3) float32, triangles (P,) int64): the identity mesh's skin vertices, each bound to the
    first skin triangle holding it. With `voxel_m`, one vertex per occupied cell of a grid of that edge
    (the vertex nearest the cell's centroid), the spacing the generator's training targets have."""
    data = head.data
    with torch.no_grad():
        verts = head.identity_vertices(torch.as_tensor(np.asarray(shape), dtype=torch.float32)[None])[0].numpy()
    skin = np.ones(data.num_faces, dtype=bool)
    for name in INTERIOR_PARTS:
        if data.face_parts is not None and name in data.part_names:
            skin &= ~data.part_mask(name)
    faces = np.flatnonzero(skin)
    owner = np.full(data.num_vertices, -1)
    for f in faces[::-1]:
        owner[data.faces[f]] = f
    index = np.flatnonzero(owner >= 0)
    if voxel_m:
        pos = verts[index].astype(np.float64)
        _, cell = np.unique(np.floor(pos / voxel_m).astype(np.int64), axis=0, return_inverse=True)
        cell = cell.reshape(-1)
        counts = np.bincount(cell)
        centroid = np.stack([np.bincount(cell, weights=pos[:, k]) for k in range(3)], 1) / counts[:, None]
        order = np.lexsort((np.arange(len(pos)), ((pos - centroid[cell]) ** 2).sum(1), cell))
        first = order[np.r_[True, cell[order][1:] != cell[order][:-1]]]
        index = index[np.sort(first)]
    return verts[index].astype(np.float32), owner[index].astype(np.int64)
