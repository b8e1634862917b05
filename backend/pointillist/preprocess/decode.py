"""Decoding any portrait an artist drops in into 8-bit RGB, safely.

Only JPEG, PNG, WebP, TIFF and BMP are opened (the content decides, not the extension); EXIF orientation
is applied; CMYK, 16-bit, palette, grayscale and alpha become 8-bit RGB (alpha composited on mid-grey
and kept as a matte hint); Pillow's decompression-bomb warning is an error, and so is our own pixel limit;
large images are downscaled before detection, with the scale recorded so results map back.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "TIFF", "BMP"}
EXTENSIONS = {"JPEG": {".jpg", ".jpeg"}, "PNG": {".png"}, "WEBP": {".webp"}, "TIFF": {".tif", ".tiff"}, "BMP": {".bmp"}}
BACKGROUND = 128


class PortraitError(ValueError):
    """A portrait cannot be used; the message names the problem and what to do."""


@dataclass
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, upright, possibly downscaled
    alpha: np.ndarray | None  # (H, W) uint8 when the file had transparency
    original_size: tuple[int, int]  # (w, h) after EXIF orientation, before downscaling
    scale: float  # rgb pixels per original pixel (<= 1)
    warnings: list[str] = field(default_factory=list)


def decode_image(source: str | os.PathLike | bytes, *, max_pixels: int = 50_000_000, max_side: int = 2048) -> DecodedImage:
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if isinstance(source, (bytes, bytearray)):
        payload = bytes(source)
    else:
        try:
            payload = Path(source).read_bytes()
        except FileNotFoundError:
            raise PortraitError(f"{name}: file not found") from None
        except IsADirectoryError:
            raise PortraitError(f"{name}: is a folder, not an image") from None
    if not payload:
        raise PortraitError(f"{name}: the file is empty (0 bytes)")
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(payload))
        except UnidentifiedImageError:
            raise PortraitError(f"{name}: not an image Pointillist can read (use JPEG, PNG, WebP, TIFF or BMP)") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise PortraitError(f"{name}: image is too large ({exc})") from None
        if image.format not in ALLOWED_FORMATS:
            raise PortraitError(f"{name}: {image.format} images are not accepted; save the portrait as JPEG, PNG, WebP, TIFF or BMP")
        w, h = image.size
        if w * h > max_pixels:
            raise PortraitError(f"{name}: {w}×{h} pixels is over the {max_pixels // 1_000_000} MP limit; downscale the portrait")
        suffix = Path(name).suffix.lower()
        if suffix and suffix not in EXTENSIONS[image.format]:
            notes.append(f"{Path(name).name} holds a {image.format} image despite its {suffix} extension")
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise PortraitError(f"{name}: the image data is truncated or corrupt ({exc})") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise PortraitError(f"{name}: image is too large ({exc})") from None
    rgb, alpha = _to_rgb8(image)
    original = (rgb.shape[1], rgb.shape[0])
    scale = 1.0
    if max(original) > max_side:
        scale = max_side / max(original)
        size = (max(1, round(original[0] * scale)), max(1, round(original[1] * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS))
        if alpha is not None:
            alpha = np.asarray(Image.fromarray(alpha).resize(size, Image.LANCZOS))
        notes.append(f"downscaled from {original[0]}×{original[1]} to {size[0]}×{size[1]} for detection")
    return DecodedImage(rgb=np.ascontiguousarray(rgb), alpha=alpha, original_size=original, scale=scale, warnings=notes)


def _to_rgb8(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any Pillow mode -> (RGB uint8, alpha uint8 | None); alpha composited on mid-grey."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / peak * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(values * (255 if values.max() <= 1 else 1) + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    alpha = None
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3].astype(np.uint8)
        a = rgba[..., 3:4] / 255.0
        rgb = (rgba[..., :3] * a + BACKGROUND * (1 - a) + 0.5).astype(np.uint8)
        if alpha.min() == 255:
            alpha = None
        return rgb, alpha
    return np.asarray(image.convert("RGB")), None
