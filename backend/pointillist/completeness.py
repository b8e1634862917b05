"""Is an avatar whole? What it covers of the portrait's face and head, seen from the camera that took it.

An avatar is judged where the photo is certain: rendered with the fitted camera and expression, its alpha
must cover the face (inside MediaPipe's face oval) and most of the head (the person's matte above the
chin plus a margin, hair included). Both regions are counted only on pixels that come from the photo
(a crop that runs past the photo's edge says nothing there) and off the hands (a hand on the cheek is in
the matte but is not the head). `create` returns no avatar that fails
this: it samples again another way, and refuses if nothing passes (`pipeline.create_avatar`).

The same regions give the real-portrait benchmark its coverage and face-region scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .head import mediapipe_topology as mpt

#: a pixel counts as covered where the avatar's accumulated opacity reaches this
COVERED_ALPHA = 0.5
#: the head region reaches this far below the chin (fraction of the crop side): the jaw line's Gaussians
#: and the shadow under the chin belong to the head, the collar does not
CHIN_MARGIN = 0.03


@dataclass
class PortraitRegions:
    """Boolean (S, S) masks of the aligned portrait crop."""

    face: np.ndarray  # inside the face oval (MediaPipe's landmarks), on the photo, not a hand
    head: np.ndarray  # the person's matte above the chin + margin (hair included), on the photo, not a hand

    @classmethod
    def from_portrait(cls, landmarks: np.ndarray, matte: np.ndarray, photo: np.ndarray | None = None,
                      hands: np.ndarray | None = None, size: int | None = None) -> PortraitRegions:
        """From crop-space landmarks (478, 2+), the matte (S, S) uint8, the photo mask and the hands (S, S)
        bool, at `size` (default: the crop's own side)."""
        matte = np.asarray(matte)
        side = matte.shape[0]
        size = size or side
        scale = size / side
        points = np.asarray(landmarks, dtype=np.float64)[:, :2] * scale
        oval = Image.new("L", (size, size), 0)
        ImageDraw.Draw(oval).polygon([tuple(p) for p in points[list(mpt.FACE_OVAL)]], fill=255)
        face = np.asarray(oval) > 0
        if size != side:
            matte = np.asarray(Image.fromarray(matte).resize((size, size), Image.BILINEAR))
            nearest = lambda m: None if m is None else np.asarray(Image.fromarray(np.asarray(m)).resize((size, size), Image.NEAREST))
            photo, hands = nearest(photo), nearest(hands)
        on_photo = photo_pixels(photo, hands, (size, size))
        # "above the chin" in the crop's own rows: the crop is levelled on the eyes, so rows run across the face
        chin_row = points[mpt.CHIN, 1] + CHIN_MARGIN * size
        rows = (np.arange(size) + 0.5)[:, None] <= chin_row
        person = matte > 127
        return cls(face=face & on_photo, head=((person & rows) | face) & on_photo)


def photo_pixels(photo: np.ndarray | None, hands: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: crop pixels that say something about the head: from the photo (not fill past its edge)
    and not a hand."""
    on_photo = np.ones(shape, bool) if photo is None else np.asarray(photo, bool)
    return on_photo if hands is None else on_photo & ~np.asarray(hands, bool)


@dataclass
class Coverage:
    face: float  # share of the face region the avatar covers
    head: float  # share of the head region the avatar covers

    def to_json(self) -> dict:
        return {"face": round(self.face, 4), "head": round(self.head, 4)}


def coverage(alpha: np.ndarray, regions: PortraitRegions) -> Coverage:
    """What an alpha image (S, S) at the portrait camera covers of each region (1 for an empty region)."""
    covered = np.asarray(alpha) >= COVERED_ALPHA
    share = lambda region: float(covered[region].mean()) if region.any() else 1.0
    return Coverage(face=share(regions.face), head=share(regions.head))


@dataclass(frozen=True)
class CompletenessCheck:
    """The bar an avatar must pass to leave `create`."""

    face: float = 0.95
    head: float = 0.75
    #: a head needs a few hundred points (≈ 600 for a bald one at the training targets' spacing); fewer than
    #: this cannot be one whatever the coverage says
    min_points: int = 64

    def failures(self, cover: Coverage, points: int) -> list[str]:
        """What falls short, in words; empty when the avatar passes."""
        out = []
        if points < self.min_points:
            out.append(f"only {points} points (a head needs at least {self.min_points})")
        if cover.face < self.face:
            out.append(f"it covers {cover.face:.0%} of the face (needs {self.face:.0%})")
        if cover.head < self.head:
            out.append(f"it covers {cover.head:.0%} of the head and hair (needs {self.head:.0%})")
        return out
