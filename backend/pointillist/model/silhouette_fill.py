"""Silhouette fill: points where the photo shows the person's head and hair but the generated avatar does not.

The generator, trained on a CPU budget, writes long or windswept hair short: its avatar covers the face and
leaves the hair that falls past the ears or blows out to the side uncovered. The photo's matte says where
that hair is, but not how deep. This fills it as a sheet: one point per `spacing_m` (8 mm) across each
uncovered pixel region (half the generator's 18 mm spacing: its points stand in several layers, these in
one, and the decoder's Gaussians, ~5 mm at 0.2 opacity each, left holes at 18 mm), back-projected from the portrait camera to the depth of the posed head's centre (hair
beside or behind a head lies around that depth), each bound to the nearest skin triangle of the posed head
and carried back to rest through that triangle's skinning, so it animates like the hair the generator
writes. The Gaussian decoder then decodes these points with the others, reading their colour from the
photo (its portrait probe). Seen from the side, the filled hair is a flat sheet: it keeps the portrait
camera's outline, not the true hair volume.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..head.model import HeadModel
from .portrait_probe import PortraitView, triangle_transforms
from .template_points import skin_faces

EYE_PARTS = ("left_eyeball", "right_eyeball")


def fill_points(view: PortraitView, head: HeadModel, uncovered: np.ndarray,
                spacing_m: float = 0.008) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3) float32 at rest, triangles (N,) int64) filling `uncovered`, an (s, s) bool mask of
    the portrait (any side s; the view's camera is scaled to it)."""
    uncovered = np.asarray(uncovered, dtype=bool)
    side = uncovered.shape[0]
    if not uncovered.any():
        return np.zeros((0, 3), np.float32), np.zeros(0, np.int64)
    data = head.data
    with torch.no_grad():
        face_T = triangle_transforms(view, head).double().cpu().numpy()  # (F, 4, 4) rest -> posed
        rest = head.identity_vertices(view.shape.to(head.v_template.device)[None])[0].double().cpu().numpy()
    faces = skin_faces(head, also_exclude=EYE_PARTS)
    centroids = rest[data.faces[faces]].mean(1)
    posed = np.einsum("fij,fj->fi", face_T[faces, :3, :3], centroids) + face_T[faces, :3, 3]
    viewmat = view.viewmat.double().numpy()
    cam = posed @ viewmat[:3, :3].T + viewmat[:3, 3]
    depth = float(np.median(cam[:, 2]))
    K = view.K.double().numpy().copy()
    K[:2] *= side / view.image.shape[-1]
    step = max(1, int(round(spacing_m * K[0, 0] / depth)))  # pixels per `spacing_m` at the head's depth
    ys, xs = np.mgrid[step // 2:side:step, step // 2:side:step]
    pick = uncovered[ys, xs]
    u, v = xs[pick] + 0.5, ys[pick] + 0.5
    if not len(u):
        return np.zeros((0, 3), np.float32), np.zeros(0, np.int64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], 1)
    in_head = (rays * depth - viewmat[:3, 3]) @ viewmat[:3, :3]  # camera -> posed head space (R orthonormal)
    nearest = cKDTree(posed).query(in_head)[1]
    tri = faces[nearest]
    T = face_T[tri]  # blended skinning transforms are affine, not always rigid: invert them exactly
    points = np.linalg.solve(T[:, :3, :3], (in_head - T[:, :3, 3])[..., None])[..., 0]
    return points.astype(np.float32), tri.astype(np.int64)
