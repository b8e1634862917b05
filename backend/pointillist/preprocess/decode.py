"""Decoding any portrait an artist drops in into upright 8-bit RGB, safely.

* Only JPEG (and MPO, the multi-picture JPEG cameras write), PNG, WebP, TIFF and BMP are decoded. The
  content decides, not the extension: a PNG named `.jpg` is read (with a warning); a GIF, ICO, PSD,
  HEIC… is refused with a message that names its format.
* Pillow's `DecompressionBombWarning` is an error, and so is our own `max_pixels` limit (50 MP); both
  are checked from the header, before any pixel is decoded. Truncated or corrupt pixel data is refused
  (`LOAD_TRUNCATED_IMAGES` stays off).
* EXIF orientation is applied; an embedded ICC profile (CMYK press profiles, Display P3 / Adobe RGB
  phone and camera photos) is converted to sRGB; CMYK, 16-bit (`I;16`, `I`), float, palette, grayscale,
  LA and RGBA become 8-bit RGB. Transparency is composited on mid-grey and kept as a matte hint.
* Images whose longer side exceeds `max_side` (2048) are downscaled with Lanczos for detection;
  `scale` records decoded pixels per original pixel so results map back, and the full-resolution image
  is kept so the aligned crop can be cut from it without losing detail.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP")
_OPENERS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")  # Pillow's JPEG opener also returns MPO files
ACCEPTED = "JPEG, PNG, WebP, TIFF or BMP"
EXTENSIONS = {"JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"}, "MPO": {".jpg", ".jpeg", ".mpo"}, "PNG": {".png"},
              "WEBP": {".webp"}, "TIFF": {".tif", ".tiff"}, "BMP": {".bmp", ".dib"}}
BACKGROUND = 128  # mid-grey behind transparent pixels (and outside the photo in the crop)
MAX_FILE_BYTES = 512 * 1024 * 1024  # refuse before reading: no 50 MP portrait needs more

# Leading bytes of formats people commonly try, so the refusal can name them without decoding anything.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"), (0, b"\x89PNG\r\n\x1a\n", "PNG"), (0, b"II*\x00", "TIFF"), (0, b"MM\x00*", "TIFF"),
    (0, b"BM", "BMP"), (0, b"GIF87a", "GIF"), (0, b"GIF89a", "GIF"), (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x02\x00", "CUR"), (0, b"8BPS", "PSD"), (0, b"%PDF", "PDF"), (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"), (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (0, b"\xffO\xffQ", "JPEG 2000"),
    (0, b"\xff\x0a", "JPEG XL"), (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"), (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"), (0, b"icns", "ICNS"), (0, b"gimp xcf", "XCF"), (0, b"PK\x03\x04", "ZIP archive"),
)
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
                b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


class PortraitError(ValueError):
    """A portrait cannot be used; the message names the problem and what to do."""


@dataclass
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, upright, downscaled so the longer side <= max_side
    alpha: np.ndarray | None  # (H, W) uint8 when the file had transparency (the matte hint)
    original_size: tuple[int, int]  # (w, h) after EXIF orientation, before downscaling
    scale: float  # rgb pixels per original pixel (<= 1); per-axis exactly `scale_xy`
    warnings: list[str] = field(default_factory=list)
    original_rgb: np.ndarray | None = None  # full resolution, only when `rgb` was downscaled
    original_alpha: np.ndarray | None = None

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Exact per-axis scale (the downscaled size is rounded to whole pixels)."""
        return self.rgb.shape[1] / self.original_size[0], self.rgb.shape[0] / self.original_size[1]

    @property
    def full_rgb(self) -> np.ndarray:
        return self.rgb if self.original_rgb is None else self.original_rgb

    @property
    def full_alpha(self) -> np.ndarray | None:
        return self.alpha if self.original_rgb is None else self.original_alpha


def sniff_format(payload: bytes) -> str | None:
    """The format named by a file's leading bytes, for messages (None when unknown)."""
    for offset, magic, name in _MAGIC:
        if payload[offset:offset + len(magic)] == magic:
            return name
    if payload[:4] == b"RIFF" and payload[8:12] == b"WEBP":
        return "WEBP"
    if payload[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(payload[8:12], "ISO media (HEIC/AVIF/MP4)")
    head = payload[:512].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg")) or b"<svg" in head:
        return "SVG"
    if head.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    return None


def _read(source: str | os.PathLike | bytes) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>", bytes(source)
    path = Path(source)
    name = str(source)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise PortraitError(f"{name}: is a folder, not an image; give the portrait's file")
        if size > MAX_FILE_BYTES:
            raise PortraitError(f"{name}: the file is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit; "
                                f"save the portrait as a JPEG or PNG of at most 50 MP")
        return name, path.read_bytes()
    except FileNotFoundError:
        raise PortraitError(f"{name}: file not found; check the path") from None
    except PermissionError:
        raise PortraitError(f"{name}: permission denied; check that the file can be read") from None
    except OSError as exc:
        raise PortraitError(f"{name}: cannot be read ({exc.strerror or exc}); check the path") from None


def _open(name: str, payload: bytes) -> Image.Image:
    """Pillow image from the header only; no pixel is decoded here."""
    try:
        return Image.open(io.BytesIO(payload), formats=_OPENERS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PortraitError(f"{name}: image is too large to decode safely ({exc}); downscale the portrait to at most 50 MP") from None
    except UnidentifiedImageError:
        pass
    except Exception as exc:  # noqa: BLE001 - a plugin choked on a broken header
        kind = sniff_format(payload) or "image"
        raise PortraitError(f"{name}: the {kind} data is truncated or corrupt ({exc}); "
                            f"re-export or re-download the portrait") from None
    sniffed = sniff_format(payload)
    if sniffed is None:
        try:  # name the format if Pillow knows it (header only; never decoded)
            with Image.open(io.BytesIO(payload)) as other:
                sniffed = other.format
        except Exception:  # noqa: BLE001 - naming the format is best effort
            sniffed = None
    if sniffed in ALLOWED_FORMATS:
        raise PortraitError(f"{name}: the {sniffed} data is truncated or corrupt (header unreadable); "
                            f"re-export or re-download the portrait")
    if sniffed:
        raise PortraitError(f"{name}: {sniffed} images are not accepted; save the portrait as {ACCEPTED}")
    raise PortraitError(f"{name}: not an image Pointillist can read; use a {ACCEPTED} file")


def decode_image(source: str | os.PathLike | bytes, *, max_pixels: int = 50_000_000, max_side: int = 2048) -> DecodedImage:
    """Decode a portrait file (path or bytes) to upright 8-bit RGB; raises `PortraitError` for bad input."""
    name, payload = _read(source)
    if not payload:
        raise PortraitError(f"{name}: the file is empty (0 bytes); re-export or re-download the portrait")
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(name, payload)
        fmt = "JPEG" if image.format == "MPO" else image.format
        w, h = image.size
        if w * h > max_pixels:
            raise PortraitError(f"{name}: {w}×{h} pixels ({w * h / 1e6:.0f} MP) is too large, over the "
                                f"{max_pixels / 1e6:g} MP limit; downscale the portrait")
        if w < 1 or h < 1:
            raise PortraitError(f"{name}: the image has no pixels ({w}×{h}); re-export the portrait")
        suffix = Path(name).suffix.lower() if name != "<bytes>" else ""
        if suffix and suffix not in EXTENSIONS[image.format]:
            notes.append(f"{Path(name).name} holds a {fmt} image despite its {suffix} extension; read as {fmt}")
        frames = getattr(image, "n_frames", 1)
        if frames > 1 and image.format != "MPO":
            notes.append(f"the {fmt} file holds {frames} frames; using the first")
        try:
            image.load()
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise PortraitError(f"{name}: image is too large to decode safely ({exc}); downscale the portrait") from None
        except MemoryError:
            raise PortraitError(f"{name}: not enough memory to decode {w}×{h} pixels; downscale the portrait") from None
        except Exception as exc:  # noqa: BLE001 - OSError "image file is truncated", SyntaxError, zlib errors...
            raise PortraitError(f"{name}: the {fmt} data is truncated or corrupt ({exc}); "
                                f"re-export or re-download the portrait") from None
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not lose an otherwise good photo
            notes.append(f"EXIF orientation could not be applied ({exc}); the photo is used as stored")
    image, note = _to_srgb(image)
    if note:
        notes.append(note)
    rgb, alpha = _to_rgb8(name, image)
    original = (rgb.shape[1], rgb.shape[0])
    if max(original) <= max_side:
        return DecodedImage(rgb=np.ascontiguousarray(rgb), alpha=alpha, original_size=original, scale=1.0, warnings=notes)
    scale = max_side / max(original)
    size = (max(1, round(original[0] * scale)), max(1, round(original[1] * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS))
    small_alpha = None if alpha is None else np.asarray(Image.fromarray(alpha).resize(size, Image.LANCZOS))
    notes.append(f"downscaled from {original[0]}×{original[1]} to {size[0]}×{size[1]} for detection")
    return DecodedImage(rgb=np.ascontiguousarray(small), alpha=small_alpha, original_size=original, scale=scale,
                        warnings=notes, original_rgb=np.ascontiguousarray(rgb), original_alpha=alpha)


def _to_srgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """Apply an embedded ICC profile (to sRGB); CMYK without a profile is left to Pillow's plain conversion."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image, None
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = (ImageCms.getProfileDescription(source) or "").strip()
        if image.mode != "CMYK" and "srgb" in description.lower():
            return image, None  # already sRGB: nothing to do
        alpha = image.getchannel("A") if image.mode == "RGBA" else None
        base = image.convert("RGB") if alpha is not None else image
        converted = ImageCms.profileToProfile(base, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        if alpha is not None:
            converted.putalpha(alpha)
        return converted, None
    except Exception as exc:  # noqa: BLE001 - a broken profile: colours may be a little off, the photo still works
        return image, f"the embedded colour profile could not be applied ({exc}); colours may be slightly off"


def _to_rgb8(name: str, image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any Pillow mode -> (RGB uint8, alpha uint8 | None); transparency composited on mid-grey."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        # I;16 is always 16-bit; 32-bit "I" holds 16-bit samples (PNG/TIFF) unless they all fit in 8 bits
        peak = 65535.0 if mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / peak * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        gain = 255.0 if values.max() <= 1.0 else 1.0
        image = Image.fromarray(np.clip(values * gain + 0.5, 0, 255).astype(np.uint8), "L")
    if "transparency" in image.info and image.mode in ("P", "L", "RGB"):
        image = image.convert("RGBA")
    elif image.mode == "P":
        image = image.convert("RGB")
    try:
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = np.asarray(image.convert("RGBA"))
            alpha = np.ascontiguousarray(rgba[..., 3])
            if alpha.min() == 255:
                return np.ascontiguousarray(rgba[..., :3]), None
            a = alpha[..., None].astype(np.float32) / 255.0
            rgb = rgba[..., :3].astype(np.float32) * a + BACKGROUND * (1.0 - a)
            return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), alpha
        return np.ascontiguousarray(np.asarray(image.convert("RGB"))), None
    except (ValueError, OSError) as exc:
        raise PortraitError(f"{name}: its colour mode {mode} cannot be converted to RGB ({exc}); "
                            f"re-export the portrait as 8-bit RGB") from None
