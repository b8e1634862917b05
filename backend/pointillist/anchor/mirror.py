"""Bilateral symmetry: each Gaussian's partner across the head's mid-plane.

Head space is the head model's own (the fitted pose lives in the joints, not in the canonical points), and
its mid-plane is x = 0, so the mirror image of a canonical point is (-x, y, z). Faces are not exactly
symmetric and the photo's light is not either, but the side a portrait hides is far better guessed from
the side it shows than from a model trained on procedural heads.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

MIRROR = np.array([-1.0, 1.0, 1.0])


def mirror_partners(points: np.ndarray, max_distance: float = np.inf) -> np.ndarray:
    """Index of the point nearest each point's mirror image across x = 0 (-1 where none is within
    `max_distance` metres)."""
    points = np.asarray(points, dtype=np.float64)
    if not len(points):
        return np.zeros(0, np.int64)
    dist, idx = cKDTree(points).query(points * MIRROR, distance_upper_bound=max_distance)
    return np.where(np.isfinite(dist), idx, -1).astype(np.int64)


def photo_share(seen: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """Per point, how much of its `mirrored_colours` colour comes from the photo (itself or its partner)."""
    seen = np.clip(np.asarray(seen, dtype=np.float64), 0, 1)
    return seen + (1 - seen) * _partner_seen(seen, partners)


def mirrored_colours(colours: np.ndarray, seen: np.ndarray, partners: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per point: its own photo colour as far as the photo sees it, the rest from its mirror partner's photo
    colour as far as the photo sees that, the rest `fallback` ((N, 3) or (3,))."""
    seen = np.clip(np.asarray(seen, dtype=np.float64), 0, 1)
    fallback = np.broadcast_to(np.asarray(fallback, dtype=np.float64), colours.shape)
    partner_seen = _partner_seen(seen, partners)[:, None]
    hidden = partner_seen * colours[np.where(partners >= 0, partners, 0)] + (1 - partner_seen) * fallback
    return seen[:, None] * colours + (1 - seen[:, None]) * hidden


def _partner_seen(seen: np.ndarray, partners: np.ndarray) -> np.ndarray:
    return np.where(partners >= 0, seen[np.where(partners >= 0, partners, 0)], 0.0)
