"""The avatar as data: canonical Gaussians + their binding to the head + the head identity.

numpy only (no torch, no scipy), so the Blender add-on can carry it. Gaussians keep raw parameters,
Inria-style (log-scales, logit opacities, w-first quaternions, SH coefficients) because that is what the
PLY stores and what optimisers work on; the activations that turn them into scales, opacities and colours
live here and nowhere else, so every consumer (renderer, Blender, exporters) agrees on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

#: Zeroth-order real spherical harmonic, Y_0^0 = 1 / (2 sqrt(pi)); rgb = 0.5 + SH_C0 * dc (Inria's RGB2SH).
SH_C0 = 0.28209479177387814
#: The bundle / avatar format version this code reads and writes.
FORMAT_VERSION = 1
#: Coefficients per colour channel in `sh_rest` for SH degrees 0..3.
SH_REST_COEFFS = (0, 3, 8, 15)
#: Tolerance on barycentrics: computed ones are clamped, stored ones went through float32.
BARY_TOLERANCE = 1e-4

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class AvatarFormatError(ValueError):
    """An avatar, bundle or PLY is malformed; the message names the field or file at fault."""


@dataclass
class Gaussians:
    """N canonical Gaussians in head space (metres, +Y up, +Z out of the face), raw parameters."""

    means: np.ndarray  # (N, 3) float32
    log_scales: np.ndarray  # (N, 3) float32, natural log of the standard deviations
    quats: np.ndarray  # (N, 4) float32, w first, not necessarily normalised
    opacity_logits: np.ndarray  # (N,) float32
    sh_dc: np.ndarray  # (N, 3) float32, SH band 0 per RGB channel
    sh_rest: np.ndarray  # (N, K, 3) float32, K in {0, 3, 8, 15}: bands 1..degree, coefficient-major

    @property
    def num(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        k = int(self.sh_rest.shape[1])
        if k not in SH_REST_COEFFS:
            raise AvatarFormatError(f"field 'sh_rest': {k} coefficients per channel; expected one of {SH_REST_COEFFS}")
        return SH_REST_COEFFS.index(k)

    # ---- activations: the one place raw parameters become physical quantities
    def scales(self) -> np.ndarray:
        """Standard deviations (N, 3) in metres."""
        return np.exp(self.log_scales)

    def opacities(self) -> np.ndarray:
        """Opacities (N,) in (0, 1)."""
        return 1.0 / (1.0 + np.exp(-self.opacity_logits))

    def normalized_quats(self) -> np.ndarray:
        """Unit w-first quaternions (N, 4); a zero quaternion stays zero rather than becoming NaN."""
        return self.quats / np.maximum(np.linalg.norm(self.quats, axis=1, keepdims=True), 1e-12)

    def colors(self) -> np.ndarray:
        """View-independent RGB (N, 3) from the SH DC band, clamped at 0 like the rasterizers do."""
        return np.maximum(0.5 + SH_C0 * self.sh_dc, 0.0)

    def subset(self, index: np.ndarray) -> "Gaussians":
        """The Gaussians selected by a boolean mask or index array."""
        return Gaussians(*(getattr(self, f)[index] for f in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")))

    def concatenate(self, other: "Gaussians") -> "Gaussians":
        """These Gaussians followed by `other`'s; SH bands missing on one side are zero there."""
        k = max(self.sh_rest.shape[1], other.sh_rest.shape[1])

        def rest(g: Gaussians) -> np.ndarray:
            return np.concatenate([g.sh_rest, np.zeros((g.num, k - g.sh_rest.shape[1], 3), np.float32)], axis=1)

        return Gaussians(*(np.concatenate([getattr(self, f), getattr(other, f)]).astype(np.float32)
                           for f in ("means", "log_scales", "quats", "opacity_logits", "sh_dc")),
                         sh_rest=np.concatenate([rest(self), rest(other)]).astype(np.float32))


@dataclass
class Binding:
    """Which head triangle each Gaussian follows, and where on it.

    `barycentrics` is None only straight out of a GaussianAvatars PLY, which stores the triangle but
    not the point on it; `validate_avatar` refuses an avatar in that state.
    """

    triangles: np.ndarray  # (N,) int64 index into the head model's faces
    barycentrics: np.ndarray | None  # (N, 3) float32: closest point on that triangle to the canonical mean


@dataclass
class HeadIdentity:
    """The head the avatar was made for: model id plus the identity's shape coefficients."""

    model_id: str
    shape: np.ndarray  # (S,) float32 identity coefficients
    vertex_offsets: np.ndarray | None = None  # (V, 3) float32 per-vertex identity offsets (e.g. static_offset)


@dataclass
class SourceInfo:
    """What the avatar was made from, kept so it can be refined or re-fitted later."""

    image: np.ndarray | None = None  # (H, W, 3) uint8 aligned input
    matte: np.ndarray | None = None  # (H, W) uint8
    camera: dict | None = None  # {"viewmat": 4x4 list, "K": 3x3 list, "width": int, "height": int}
    expression: np.ndarray | None = None  # (E,) float32 fitted expression
    pose: np.ndarray | None = None  # (5, 3) float32 fitted joint pose (axis-angle)


@dataclass
class Avatar:
    """Everything a bundle holds. `meta` is JSON-serialisable: format_version, model_version,
    creation_options, source_sha256 (of the original portrait file) and anything else worth keeping."""

    gaussians: Gaussians
    binding: Binding | None = None
    identity: HeadIdentity | None = None
    source: SourceInfo | None = None
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- validation
def validate_avatar(avatar: Avatar, num_faces: int | None = None, num_vertices: int | None = None) -> None:
    """Raise `AvatarFormatError` naming the first bad field.

    Checks shapes and counts against each other, finiteness of every float array, binding range
    (against `num_faces` when the head is known), barycentrics, identity offsets (against
    `num_vertices`), the source record and the format version recorded in `meta`.
    """
    if not isinstance(avatar, Avatar):
        raise AvatarFormatError(f"expected an Avatar, got {type(avatar).__name__}")
    _validate_gaussians(avatar.gaussians)
    n = avatar.gaussians.num
    if avatar.binding is not None:
        _validate_binding(avatar.binding, n, num_faces)
    if avatar.identity is not None:
        _validate_identity(avatar.identity, num_vertices)
    if avatar.source is not None:
        _validate_source(avatar.source)
    _validate_meta(avatar.meta)


def _validate_gaussians(g: Gaussians) -> None:
    if not isinstance(g, Gaussians):
        raise AvatarFormatError(f"field 'gaussians': expected Gaussians, got {type(g).__name__}")
    means = g.means
    if not isinstance(means, np.ndarray) or means.ndim != 2 or means.shape[1] != 3:
        raise AvatarFormatError(f"field 'means': expected shape (N, 3), got {_shape(means)}")
    n = means.shape[0]
    expected = {"log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,), "sh_dc": (n, 3)}
    for name, shape in expected.items():
        value = getattr(g, name)
        if not isinstance(value, np.ndarray) or value.shape != shape:
            raise AvatarFormatError(f"field '{name}': expected shape {shape} for {n} Gaussians, got {_shape(value)}")
    rest = g.sh_rest
    if not isinstance(rest, np.ndarray) or rest.ndim != 3 or rest.shape[0] != n or rest.shape[1] not in SH_REST_COEFFS or rest.shape[2] != 3:
        raise AvatarFormatError(f"field 'sh_rest': expected shape ({n}, K, 3) with K in {SH_REST_COEFFS}, got {_shape(rest)}")
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        value = getattr(g, name)
        if value.dtype.kind != "f":
            raise AvatarFormatError(f"field '{name}': expected floats, got dtype {value.dtype}")
        if not np.isfinite(value).all():
            raise AvatarFormatError(f"field '{name}': contains NaN or Inf")
    if n and (np.linalg.norm(g.quats, axis=1) < 1e-12).any():
        raise AvatarFormatError("field 'quats': zero-length quaternion (no rotation can be recovered)")


def _validate_binding(b: Binding, n: int, num_faces: int | None) -> None:
    t = b.triangles
    if not isinstance(t, np.ndarray) or t.shape != (n,) or t.dtype.kind not in "iu":
        raise AvatarFormatError(f"field 'binding': expected ({n},) integer triangle indices, got {_shape(t)} {getattr(t, 'dtype', '')}")
    if n and t.min() < 0:
        raise AvatarFormatError(f"field 'binding': negative triangle index {int(t.min())}")
    if n and num_faces is not None and t.max() >= num_faces:
        raise AvatarFormatError(f"field 'binding': triangle index {int(t.max())} out of range (the head has {num_faces} triangles)")
    bary = b.barycentrics
    if bary is None:
        raise AvatarFormatError("field 'bary': barycentrics are missing (compute them with binding.closest_point_barycentrics)")
    if not isinstance(bary, np.ndarray) or bary.shape != (n, 3) or bary.dtype.kind != "f":
        raise AvatarFormatError(f"field 'bary': expected ({n}, 3) floats, got {_shape(bary)}")
    if not np.isfinite(bary).all():
        raise AvatarFormatError("field 'bary': contains NaN or Inf")
    if n:
        if (bary < -BARY_TOLERANCE).any() or (bary > 1 + BARY_TOLERANCE).any():
            raise AvatarFormatError(f"field 'bary': barycentrics outside [0, 1] (min {float(bary.min()):g}, max {float(bary.max()):g})")
        worst = float(np.abs(bary.astype(np.float64).sum(1) - 1.0).max())
        if worst > BARY_TOLERANCE:
            raise AvatarFormatError(f"field 'bary': barycentrics must sum to 1 (off by up to {worst:g})")


def _validate_identity(ident: HeadIdentity, num_vertices: int | None) -> None:
    if not isinstance(ident.model_id, str) or not ident.model_id:
        raise AvatarFormatError("field 'identity.model_id': must be a non-empty string")
    shape = ident.shape
    if not isinstance(shape, np.ndarray) or shape.ndim != 1 or shape.dtype.kind != "f":
        raise AvatarFormatError(f"field 'identity.shape': expected a 1-D float array, got {_shape(shape)}")
    if not np.isfinite(shape).all():
        raise AvatarFormatError("field 'identity.shape': contains NaN or Inf")
    off = ident.vertex_offsets
    if off is not None:
        want = f"({num_vertices if num_vertices is not None else 'V'}, 3)"
        if not isinstance(off, np.ndarray) or off.ndim != 2 or off.shape[1] != 3 or off.dtype.kind != "f" \
                or (num_vertices is not None and off.shape[0] != num_vertices):
            raise AvatarFormatError(f"field 'identity.vertex_offsets': expected {want} floats, got {_shape(off)}")
        if not np.isfinite(off).all():
            raise AvatarFormatError("field 'identity.vertex_offsets': contains NaN or Inf")


def _validate_source(src: SourceInfo) -> None:
    if src.image is not None:
        img = src.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or 0 in img.shape:
            raise AvatarFormatError(f"field 'source.image': expected (H, W, 3) uint8, got {_shape(img)} {getattr(img, 'dtype', '')}")
    if src.matte is not None:
        m = src.matte
        if not isinstance(m, np.ndarray) or m.ndim != 2 or m.dtype != np.uint8 or 0 in m.shape:
            raise AvatarFormatError(f"field 'source.matte': expected (H, W) uint8, got {_shape(m)} {getattr(m, 'dtype', '')}")
    if src.camera is not None:
        cam = src.camera
        if not isinstance(cam, dict):
            raise AvatarFormatError("field 'source.camera': expected a dict with viewmat, K, width, height")
        for key, shape in (("viewmat", (4, 4)), ("K", (3, 3))):
            try:
                value = np.asarray(cam.get(key), dtype=np.float64)
            except (TypeError, ValueError):
                value = None
            if value is None or value.shape != shape or not np.isfinite(value).all():
                raise AvatarFormatError(f"field 'source.camera.{key}': expected a finite {shape[0]}x{shape[1]} matrix")
        for key in ("width", "height"):
            value = cam.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise AvatarFormatError(f"field 'source.camera.{key}': expected a positive integer, got {value!r}")
    if src.expression is not None:
        e = src.expression
        if not isinstance(e, np.ndarray) or e.ndim != 1 or e.dtype.kind != "f" or not np.isfinite(e).all():
            raise AvatarFormatError(f"field 'source.expression': expected a finite 1-D float array, got {_shape(e)}")
    if src.pose is not None:
        p = src.pose
        if not isinstance(p, np.ndarray) or p.shape != (5, 3) or p.dtype.kind != "f" or not np.isfinite(p).all():
            raise AvatarFormatError(f"field 'source.pose': expected finite (5, 3) floats, got {_shape(p)}")


def _validate_meta(meta: dict) -> None:
    if not isinstance(meta, dict):
        raise AvatarFormatError(f"field 'meta': expected a dict, got {type(meta).__name__}")
    version = meta.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise AvatarFormatError(f"field 'meta.format_version': unknown format version {version!r} (this Pointillist handles {FORMAT_VERSION})")
    sha = meta.get("source_sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        raise AvatarFormatError("field 'meta.source_sha256': expected 64 lowercase hex digits")


def _shape(value) -> str:
    return str(getattr(value, "shape", type(value).__name__))
