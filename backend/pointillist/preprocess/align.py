"""Similarity-aligned 512² crop around the head, with the transform kept so results map back.

The eyes are levelled; the scale puts the eye-to-mouth distance at 22 % of the crop and the eye line at 42 %
from the top, which leaves room above for hair and below for the chin and neck.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..head import mediapipe_topology as mpt

EYE_TO_MOUTH = 0.22
EYE_LINE = 0.42


@dataclass
class CropTransform:
    matrix: np.ndarray  # (2, 3) source pixel -> crop pixel
    size: int

    def apply(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64)[:, :2]
        return p @ self.matrix[:, :2].T + self.matrix[:, 2]

    def inverse(self) -> "CropTransform":
        A = self.matrix[:, :2]
        inv = np.linalg.inv(A)
        return CropTransform(np.concatenate([inv, -(inv @ self.matrix[:, 2])[:, None]], 1), self.size)

    def compose(self, first: np.ndarray) -> "CropTransform":
        """This transform after a (2, 3) `first` one."""
        A = self.matrix[:, :2] @ first[:, :2]
        t = self.matrix[:, :2] @ first[:, 2] + self.matrix[:, 2]
        return CropTransform(np.concatenate([A, t[:, None]], 1), self.size)

    @property
    def scale(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def to_json(self) -> dict:
        return {"matrix": self.matrix.tolist(), "size": self.size}

    @classmethod
    def from_json(cls, data: dict) -> "CropTransform":
        return cls(np.asarray(data["matrix"], dtype=np.float64), int(data["size"]))


def crop_transform(points: np.ndarray, size: int = 512) -> CropTransform:
    left = points[list(mpt.LEFT_EYE_UPPER + mpt.LEFT_EYE_LOWER), :2].mean(0)
    right = points[list(mpt.RIGHT_EYE_UPPER + mpt.RIGHT_EYE_LOWER), :2].mean(0)
    eyes = (left + right) / 2
    mouth = points[[mpt.LEFT_MOUTH_CORNER, mpt.RIGHT_MOUTH_CORNER], :2].mean(0)
    d = left - right  # subject's right eye is on the image left
    angle = np.arctan2(d[1], d[0])
    scale = EYE_TO_MOUTH * size / max(np.linalg.norm(mouth - eyes), 1e-6)
    c, s = np.cos(-angle) * scale, np.sin(-angle) * scale
    A = np.array([[c, -s], [s, c]])
    t = np.array([size / 2, EYE_LINE * size]) - A @ eyes
    return CropTransform(np.concatenate([A, t[:, None]], 1), size)


def warp(image: np.ndarray, transform: CropTransform, fill: int | tuple = 128) -> np.ndarray:
    inv = transform.inverse().matrix  # Pillow wants crop -> source
    mode = "L" if image.ndim == 2 else "RGB"
    out = Image.fromarray(image, mode).transform((transform.size, transform.size), Image.AFFINE, data=inv.ravel().tolist(),
                                                  resample=Image.BICUBIC, fillcolor=fill)
    return np.asarray(out)
