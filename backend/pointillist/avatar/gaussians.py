"""The avatar as data: canonical Gaussians + their binding to the head + the head identity.

numpy only (no torch), so the Blender add-on can carry it. Gaussians keep raw parameters, Inria-style
(log-scales, logit opacities, w-first quaternions, SH coefficients); activations live in one place here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SH_C0 = 0.28209479177387814
FORMAT_VERSION = 1


class AvatarFormatError(ValueError):
    """An avatar, bundle or PLY is malformed; the message names the field or file at fault."""


@dataclass
class Gaussians:
    means: np.ndarray  # (N, 3) float32, head space at rest
    log_scales: np.ndarray  # (N, 3) float32
    quats: np.ndarray  # (N, 4) float32, w first, not necessarily normalised
    opacity_logits: np.ndarray  # (N,) float32
    sh_dc: np.ndarray  # (N, 3) float32
    sh_rest: np.ndarray  # (N, K, 3) float32, K in {0, 3, 8, 15}

    @property
    def num(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return {0: 0, 3: 1, 8: 2, 15: 3}[int(self.sh_rest.shape[1])]

    def scales(self) -> np.ndarray:
        return np.exp(self.log_scales)

    def opacities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.opacity_logits))

    def normalized_quats(self) -> np.ndarray:
        return self.quats / np.maximum(np.linalg.norm(self.quats, axis=1, keepdims=True), 1e-12)

    def colors(self) -> np.ndarray:
        """View-independent RGB (the SH DC band), clamped at 0 like the renderer."""
        return np.maximum(0.5 + SH_C0 * self.sh_dc, 0.0)

    def subset(self, index: np.ndarray) -> "Gaussians":
        return Gaussians(*(getattr(self, f)[index] for f in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")))


@dataclass
class Binding:
    triangles: np.ndarray  # (N,) int64 index into the head model's faces
    barycentrics: np.ndarray  # (N, 3) float32 closest point on that triangle to the canonical mean


@dataclass
class HeadIdentity:
    model_id: str
    shape: np.ndarray  # (S,) float32 identity coefficients
    vertex_offsets: np.ndarray | None = None  # (V, 3) float32 per-vertex identity offsets (e.g. static_offset)


@dataclass
class SourceInfo:
    image: np.ndarray | None = None  # (H, W, 3) uint8 aligned input
    matte: np.ndarray | None = None  # (H, W) uint8
    camera: dict | None = None  # {"viewmat": 4x4, "K": 3x3, "width": int, "height": int}
    expression: np.ndarray | None = None  # (E,) fitted expression
    pose: np.ndarray | None = None  # (5, 3) fitted joint pose


@dataclass
class Avatar:
    gaussians: Gaussians
    binding: Binding | None = None
    identity: HeadIdentity | None = None
    source: SourceInfo | None = None
    meta: dict = field(default_factory=dict)


def validate_avatar(avatar: Avatar, num_faces: int | None = None, num_vertices: int | None = None) -> None:
    """Raise `AvatarFormatError` naming the first bad field: shapes, finiteness, binding range."""
    g = avatar.gaussians
    n = g.num
    expected = {"means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,), "sh_dc": (n, 3)}
    for name, shape in expected.items():
        value = getattr(g, name)
        if not isinstance(value, np.ndarray) or value.shape != shape:
            raise AvatarFormatError(f"field '{name}': expected shape {shape}, got {getattr(value, 'shape', type(value).__name__)}")
    if g.sh_rest.ndim != 3 or g.sh_rest.shape[0] != n or g.sh_rest.shape[1] not in (0, 3, 8, 15) or g.sh_rest.shape[2] != 3:
        raise AvatarFormatError(f"field 'sh_rest': expected shape ({n}, K, 3) with K in 0/3/8/15, got {g.sh_rest.shape}")
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        if not np.isfinite(getattr(g, name)).all():
            raise AvatarFormatError(f"field '{name}': contains NaN or Inf")
    if n and (np.linalg.norm(g.quats, axis=1) < 1e-12).any():
        raise AvatarFormatError("field 'quats': zero-length quaternion")
    b = avatar.binding
    if b is not None:
        if b.triangles.shape != (n,) or b.triangles.dtype.kind not in "iu":
            raise AvatarFormatError(f"field 'binding': expected ({n},) integer triangle indices, got {b.triangles.shape} {b.triangles.dtype}")
        if b.barycentrics.shape != (n, 3):
            raise AvatarFormatError(f"field 'bary': expected shape ({n}, 3), got {b.barycentrics.shape}")
        if n and b.triangles.min() < 0:
            raise AvatarFormatError("field 'binding': negative triangle index")
        if n and num_faces is not None and b.triangles.max() >= num_faces:
            raise AvatarFormatError(f"field 'binding': triangle index {int(b.triangles.max())} out of range (head has {num_faces} triangles)")
        if not np.isfinite(b.barycentrics).all():
            raise AvatarFormatError("field 'bary': contains NaN or Inf")
        if n and ((b.barycentrics < -1e-4).any() or (b.barycentrics > 1 + 1e-4).any() or not np.allclose(b.barycentrics.sum(1), 1.0, atol=1e-4)):
            raise AvatarFormatError("field 'bary': barycentrics must lie in [0, 1] and sum to 1")
    ident = avatar.identity
    if ident is not None:
        if not np.isfinite(ident.shape).all():
            raise AvatarFormatError("field 'identity.shape': contains NaN or Inf")
        if ident.vertex_offsets is not None:
            if ident.vertex_offsets.ndim != 2 or ident.vertex_offsets.shape[1] != 3 or (num_vertices is not None and ident.vertex_offsets.shape[0] != num_vertices):
                raise AvatarFormatError(f"field 'identity.vertex_offsets': expected ({num_vertices or 'V'}, 3), got {ident.vertex_offsets.shape}")
            if not np.isfinite(ident.vertex_offsets).all():
                raise AvatarFormatError("field 'identity.vertex_offsets': contains NaN or Inf")
