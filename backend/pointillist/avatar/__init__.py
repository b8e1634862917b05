"""Avatar data, its PLY layout, bundles and binding maths.

Importing this package loads only numpy and plyfile (the data classes and the PLY layout), because the
Blender add-on carries those modules without torch or scipy. Bundle I/O (Pillow) and binding maths
(scipy) load on first use; the torch-based modules (`animate`, `gaussian_avatars`) are imported by
their full path and never from here.
"""

from __future__ import annotations

import importlib

from .gaussians import (
    FORMAT_VERSION,
    SH_C0,
    Avatar,
    AvatarFormatError,
    Binding,
    Gaussians,
    HeadIdentity,
    SourceInfo,
    validate_avatar,
)
from .ply import read_gaussian_ply, write_gaussian_ply

_LAZY = {
    "read_bundle": "bundle",
    "write_bundle": "bundle",
    "ZipLimits": "bundle",
    "closest_point_barycentrics": "binding",
    "bind_to_nearest_triangles": "binding",
    "triangle_frames": "binding",
}

__all__ = [
    "FORMAT_VERSION", "SH_C0", "Avatar", "AvatarFormatError", "Binding", "Gaussians", "HeadIdentity", "SourceInfo",
    "validate_avatar", "read_gaussian_ply", "write_gaussian_ply", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
