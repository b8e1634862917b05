"""Portrait understanding: safe decoding, face landmarks, alignment and matting (no downloaded weights).

    from pointillist.preprocess import understand_portrait, PortraitError
    inputs = understand_portrait("portrait.jpg")  # crop, matte, landmarks, transform, warnings, timings

Modules: `decode` (file → upright 8-bit RGB), `landmarks` (MediaPipe face mesh, size and turn checks),
`align` (similarity crop and its transform), `matte` (selfie segmentation + pymatting), `portrait` (the
chain). MediaPipe and pymatting are imported only when first used; the names below load lazily.
"""

from __future__ import annotations

_EXPORTS = {
    "PortraitError": "decode", "DecodedImage": "decode", "decode_image": "decode",
    "FaceLandmarks": "landmarks", "detect_landmarks": "landmarks", "estimate_yaw": "landmarks",
    "CropTransform": "align", "crop_transform": "align", "warp": "align",
    "foreground_matte": "matte",
    "PortraitInputs": "portrait", "understand_portrait": "portrait",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
