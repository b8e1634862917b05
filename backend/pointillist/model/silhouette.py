"""Silhouette carving: a generated point must project inside the person's matte in the portrait.

Why: the one thing a single photo states with certainty about the avatar's shape is its outline from the
camera that took it. Every point of the true head, hair included, projects inside the person's matte
(the visual-hull constraint), wherever the point lies in depth. The AR transformer, trained on a CPU
budget, often overshoots the top of the head: after the crown it keeps writing a plume of points above
it, and as the y-z-x order never goes back, it can only climb further. Those points land on the
photo's background. Checking each point as it is written, and ending the sequence once a run of points
all land outside, removes the plume and the time spent writing it; the transformer's own END still ends
every sequence that stays on the person.

The check poses each point like the head in the photo (its bound triangle's blended LBS transform, as
`portrait_probe.triangle_transforms`), projects it with the fitted camera, and reads a slightly dilated
matte (the points are voxel centres; the Gaussians around them reach a little further). Points outside
the frame, behind the camera, or on crop pixels that lie past the photo's own edge (`photo`) are kept: the
photo says nothing about them. That last rule matters on real photos: a tight head shot cuts the neck at
the photo's lower edge, the aligned crop fills the rest with grey, and the neck is the first thing the
y-z-x order writes; judged against that fill, every neck point was refused and the sequence ended
before it reached the face.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..head.model import HeadModel
from .portrait_probe import PortraitView, triangle_transforms

#: dilation of the matte, as a fraction of the portrait's width (10 px at 512², ~1 cm at head distance)
DILATE_FRACTION = 0.02
#: a matte value above this is the person
MATTE_THRESHOLD = 0.5


class SilhouetteCarver:
    """Decides, per point in head space at rest bound to a triangle, whether the portrait allows it."""

    def __init__(self, view: PortraitView, head: HeadModel, dilate_fraction: float = DILATE_FRACTION,
                 photo: np.ndarray | None = None):
        """`photo`: (H, W) bool, the portrait's pixels that come from the photo (None: all of them)."""
        if view.alpha is None:
            raise ValueError("silhouette carving needs the portrait's matte")
        with torch.no_grad():
            face_T = triangle_transforms(view, head)  # (F, 4, 4)
        # head space at rest -> camera, per triangle: viewmat @ the triangle's skinning transform
        cam_T = view.viewmat.double().numpy() @ face_T.double().cpu().numpy()
        self._R = cam_T[:, :3, :3]
        self._t = cam_T[:, :3, 3]
        self._K = view.K.double().numpy()
        matte = view.alpha.numpy() > MATTE_THRESHOLD
        radius = int(round(dilate_fraction * matte.shape[1]))
        yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
        self._inside_person = ndimage.binary_dilation(matte, structure=xx**2 + yy**2 <= radius**2) if radius else matte
        if photo is not None:
            photo = np.asarray(photo, dtype=bool)
            if photo.shape != matte.shape:
                raise ValueError(f"the photo mask is {photo.shape}, the matte {matte.shape}")
            self._inside_person = self._inside_person | ~photo  # unknown pixels never refuse a point

    def keep(self, points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
        """(N,) bool for points (N, 3) metres at rest bound to triangles (N,): False where the point lands on
        the photo's background."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        tri = np.asarray(triangles, dtype=np.int64).reshape(-1)
        cam = np.einsum("nij,nj->ni", self._R[tri], points) + self._t[tri]
        H, W = self._inside_person.shape
        z = cam[:, 2]
        in_front = z > 1e-3
        zs = np.where(in_front, z, 1.0)
        u = self._K[0, 0] * cam[:, 0] / zs + self._K[0, 2]
        v = self._K[1, 1] * cam[:, 1] / zs + self._K[1, 2]
        seen = in_front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        keep = np.ones(len(points), dtype=bool)
        ui = np.clip(u[seen].astype(np.int64), 0, W - 1)
        vi = np.clip(v[seen].astype(np.int64), 0, H - 1)
        keep[seen] = self._inside_person[vi, ui]
        return keep

    def __call__(self, point: np.ndarray, triangle: int) -> bool:
        """One point: the `keep_point` check `sampling.generate` takes."""
        return bool(self.keep(np.asarray(point)[None], np.asarray([triangle]))[0])
