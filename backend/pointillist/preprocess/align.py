"""Similarity-aligned square crop (512² by default) around the head, with the transform kept so results map back.

The numbers (fractions of the crop side):

* the eyes are levelled (rotation from the subject's right eye centre to the left eye centre) and their
  midpoint sits at x = 50 %, y = `EYE_LINE` = 42 % from the top;
* the scale makes the face — forehead landmark 10 to chin 152 — `FACE_HEIGHT` = 45 % of the crop. That
  span is estimated from two distances that fail differently: 2.75 × eye-centre-to-mouth-centre (shrinks
  when the head pitches) and 2.45 × inter-ocular distance between eye centres (shrinks when it turns);
  the larger wins. The factors are the measured ratios on the astronaut portrait and frontal renders of
  our template (2.72–2.84 and 2.30–2.45). With these numbers landmark 10 lands near 28 % and the chin
  near 75 %: ~0.28 of the side above the forehead for hair, the neck below, and ~0.26 either side of the
  face for ears and hair.

Pixel coordinates are continuous with pixel edges at integers (pixel (i, j) covers [i, i+1)), as Pillow's
transforms and MediaPipe's normalised coordinates × size use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..head import mediapipe_topology as mpt
from .decode import BACKGROUND

FACE_HEIGHT = 0.45
EYE_LINE = 0.42
FACE_PER_EYE_TO_MOUTH = 2.75
FACE_PER_IOD = 2.45


@dataclass
class CropTransform:
    matrix: np.ndarray  # (2, 3) float64: source pixel -> crop pixel
    size: int  # the crop is size × size

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float64)
        if self.matrix.shape != (2, 3) or not np.all(np.isfinite(self.matrix)):
            raise ValueError(f"a crop transform is a finite (2, 3) matrix, got shape {self.matrix.shape}")
        self.size = int(self.size)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 2+) source points -> (N, 2) crop points (x, y only; see `apply_landmarks` for z)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, np.shape(points)[-1])[:, :2]
        return p @ self.matrix[:, :2].T + self.matrix[:, 2]

    def apply_landmarks(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) landmarks -> (N, 3) float32: x, y mapped, z (pixel units) scaled by the same factor."""
        pts = np.asarray(points, dtype=np.float64)
        out = np.empty((len(pts), 3), np.float64)
        out[:, :2] = self.apply(pts)
        out[:, 2] = pts[:, 2] * self.scale
        return out.astype(np.float32)

    def inverse(self) -> CropTransform:
        """crop -> source (keeps `size`, the crop's side)."""
        inv = np.linalg.inv(self.matrix[:, :2])
        return CropTransform(np.concatenate([inv, -(inv @ self.matrix[:, 2])[:, None]], 1), self.size)

    def compose(self, first: np.ndarray | CropTransform) -> CropTransform:
        """This transform applied after `first` ((2, 3) matrix or CropTransform)."""
        f = first.matrix if isinstance(first, CropTransform) else np.asarray(first, dtype=np.float64)
        A = self.matrix[:, :2] @ f[:, :2]
        t = self.matrix[:, :2] @ f[:, 2] + self.matrix[:, 2]
        return CropTransform(np.concatenate([A, t[:, None]], 1), self.size)

    @property
    def scale(self) -> float:
        """Crop pixels per source pixel."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    @property
    def rotation_deg(self) -> float:
        """How far the source is turned (counter-clockwise on screen is negative: y points down)."""
        return math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))

    def to_json(self) -> dict:
        return {"matrix": [[float(v) for v in row] for row in self.matrix], "size": self.size}

    @classmethod
    def from_json(cls, data: dict) -> CropTransform:
        return cls(np.asarray(data["matrix"], dtype=np.float64), int(data["size"]))


def crop_transform(points: np.ndarray, size: int = 512) -> CropTransform:
    """Source → crop similarity from (478, 2+) landmarks in source pixels (numbers in the module doc)."""
    pts = np.asarray(points, dtype=np.float64)
    left = pts[list(mpt.LEFT_EYE_UPPER + mpt.LEFT_EYE_LOWER), :2].mean(0)
    right = pts[list(mpt.RIGHT_EYE_UPPER + mpt.RIGHT_EYE_LOWER), :2].mean(0)
    eyes = (left + right) / 2
    mouth = pts[[mpt.LEFT_MOUTH_CORNER, mpt.RIGHT_MOUTH_CORNER], :2].mean(0)
    d = left - right  # the subject's right eye is on the image left
    angle = math.atan2(d[1], d[0])
    face = max(FACE_PER_EYE_TO_MOUTH * np.linalg.norm(mouth - eyes), FACE_PER_IOD * np.linalg.norm(d), 1e-6)
    scale = FACE_HEIGHT * size / face
    c, s = math.cos(-angle) * scale, math.sin(-angle) * scale
    A = np.array([[c, -s], [s, c]])
    t = np.array([size / 2, EYE_LINE * size]) - A @ eyes
    return CropTransform(np.concatenate([A, t[:, None]], 1), size)


def warp(image: np.ndarray, transform: CropTransform, fill: int | None = None) -> np.ndarray:
    """Resample an (H, W) or (H, W, 3) uint8 image into the crop (bicubic; `fill` outside, mid-grey by default).

    When the crop is smaller than the source (scale < 0.8) only the part of the source the crop sees is
    first reduced with Lanczos to about the crop's resolution, so the bicubic warp does not alias.
    """
    image = np.asarray(image)
    mode = "L" if image.ndim == 2 else "RGB"
    if fill is None:
        fill = BACKGROUND
    fillcolor = fill if mode == "L" else (fill,) * 3 if isinstance(fill, int) else tuple(fill)
    size = transform.size
    h, w = image.shape[:2]
    matrix = transform.matrix
    source = Image.fromarray(np.ascontiguousarray(image), mode)
    if transform.scale < 0.8:
        corners = transform.inverse().apply(np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64))
        x0, y0 = np.floor(corners.min(0)).astype(int) - 4
        x1, y1 = np.ceil(corners.max(0)).astype(int) + 4
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:  # the crop sees none of the image
            shape = (size, size) if mode == "L" else (size, size, 3)
            return np.full(shape, fill if mode == "L" else fillcolor, np.uint8)
        rw = max(1, round((x1 - x0) * transform.scale * 1.25))
        rh = max(1, round((y1 - y0) * transform.scale * 1.25))
        source = source.crop((x0, y0, x1, y1)).resize((rw, rh), Image.LANCZOS)
        # region pixel = (source pixel - (x0, y0)) * (rw / (x1 - x0), rh / (y1 - y0))
        sx, sy = rw / (x1 - x0), rh / (y1 - y0)
        to_region = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]])
        matrix = CropTransform(transform.matrix, size).compose(np.linalg.inv(np.vstack([to_region, [0, 0, 1]]))[:2]).matrix
    inv = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]  # Pillow wants crop -> source
    out = source.transform((size, size), Image.AFFINE, data=inv.ravel().tolist(), resample=Image.BICUBIC,
                           fillcolor=fillcolor)
    return np.asarray(out)


def coverage(shape: tuple[int, int], transform: CropTransform) -> np.ndarray:
    """(size, size) bool: crop pixels that come from inside the source image (not the fill)."""
    h, w = shape[:2]
    size = transform.size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    src = transform.inverse().apply(np.stack([xs.ravel(), ys.ravel()], 1)).reshape(size, size, 2)
    return (src[..., 0] >= 0) & (src[..., 0] <= w) & (src[..., 1] >= 0) & (src[..., 1] <= h)
