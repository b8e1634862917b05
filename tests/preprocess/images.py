"""Test images the preprocess tests make themselves: the astronaut (public domain, inside scikit-image's
wheel) in every format and mode, and deliberately broken files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8


def encode(image: np.ndarray | Image.Image, format: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format=format, **kwargs)
    return buffer.getvalue()


def save(image: np.ndarray | Image.Image, path: Path, format: str | None = None, **kwargs) -> Path:
    fmt = format or {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF",
                     ".tiff": "TIFF", ".bmp": "BMP", ".gif": "GIF"}[Path(path).suffix.lower()]
    Path(path).write_bytes(encode(image, fmt, **kwargs))
    return Path(path)


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR (with a correct CRC) claims width × height pixels."""
    data = bytearray(encode(Image.new("RGB", (4, 4)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])  # depth, colour type, compression...
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def on_canvas(image: np.ndarray, size: tuple[int, int], at: tuple[int, int], fill: int = 128) -> np.ndarray:
    """`image` pasted at (x, y) on a grey (w, h) canvas."""
    canvas = np.full((size[1], size[0], 3), fill, np.uint8)
    h, w = image.shape[:2]
    canvas[at[1]:at[1] + h, at[0]:at[0] + w] = image
    return canvas


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(subject's left, subject's right) eye-contour centres."""
    from pointillist.preprocess.landmarks import eye_centres as centres

    return centres(points)
