"""Hands in the portrait: MediaPipe's hand landmarks (palm detector and landmark models ship in the wheel).

A hand on the cheek or a phone at the ear is inside the person's matte but is not the head: an avatar of
the head must not be asked to cover it. Each hand found becomes the convex hull of its 21 landmarks,
widened by a share of its size (fingers' flesh beyond the joints, and what the hand holds).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy.spatial import ConvexHull

from .landmarks import _lock, native_stderr_silenced

#: the hull is grown by this share of the hand's size (wrist to middle fingertip)
HAND_MARGIN = 0.25
_hands = None


def hand_landmarks(rgb: np.ndarray) -> list[np.ndarray]:
    """(21, 2) pixel landmarks of each hand found in an (H, W, 3) uint8 image."""
    global _hands
    h, w = rgb.shape[:2]
    with _lock, native_stderr_silenced():
        if _hands is None:
            import mediapipe as mp

            _hands = mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=2, model_complexity=1,
                                              min_detection_confidence=0.5)
        found = _hands.process(np.ascontiguousarray(rgb)).multi_hand_landmarks or []
    return [np.array([[p.x * w, p.y * h] for p in hand.landmark], dtype=np.float64) for hand in found]


def hand_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of the hands in the image (their widened hulls)."""
    h, w = rgb.shape[:2]
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for points in hand_landmarks(rgb):
        size = float(np.linalg.norm(points[12] - points[0]))  # wrist to middle fingertip
        centre = points.mean(0)
        grown = centre + (points - centre) * (1 + HAND_MARGIN)
        try:
            draw.polygon([tuple(p) for p in grown[ConvexHull(grown).vertices]], fill=255)
        except Exception:  # noqa: BLE001 - a degenerate (flat) hand: its rounded points below still count
            pass
        r = HAND_MARGIN * size / 2
        for p in grown:  # round the hull's corners by the margin
            draw.ellipse((p[0] - r, p[1] - r, p[0] + r, p[1] + r), fill=255)
    return np.asarray(canvas) > 0
