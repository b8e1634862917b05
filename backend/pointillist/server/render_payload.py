"""The render bridge's binary formats (DESIGN §6), little-endian throughout; numpy only.

Blender sends per-frame posed Gaussians as raw float32 arrays, so frames cost a memcpy, not JSON.
Parsers check every size and count against the header *before* reading arrays, and the total length
exactly; any mismatch raises `PayloadError` (the service answers 400 `bad_payload`).

Object registration — `PUT /v1/objects/{object_id}`, `Content-Type: application/octet-stream`
(the static attributes, sent once per object):

    offset  type        field
    0       4 bytes     magic b"PTOB"
    4       uint16      version = 1
    6       uint16      flags: bit 0 COLORS_RGB (colour block is (N, 3) RGB instead of SH; sh_degree 0)
                               bit 1 REST_QUATS (a canonical-rotation block follows the scales)
                               bit 2 SKIN (needs REST_QUATS: a skinning block follows; frames may then send
                               bone rotations instead of one rotation per Gaussian)
    8       uint32      N, Gaussians (>= 1)
    12      uint8       sh_degree, 0..3 (K = (sh_degree + 1)^2 coefficients per channel)
    13      3 bytes     reserved, zero
    16      float32     colours: N*K*3 SH coefficients, (N, K, 3) row-major; or N*3 RGB with COLORS_RGB
            float32     N opacities, activated, in [0, 1]
            float32     N*3 scales, activated standard deviations in metres, > 0
            float32     N*4 canonical rotations, w-first (only with REST_QUATS; lets SH bands >= 1 follow
                        each Gaussian's rotation: the renderer uses R(posed) R(rest)^T as its frame)
            uint32      J bones (1..64), then uint32 P weight patterns (1..N)        (only with SKIN)
            float32     P*J pattern weights, rows summing to 1 (or all zero: the pattern does not move)
            uint32      N pattern index per Gaussian (< P)

Render request — `POST /v1/render`, `Content-Type: application/octet-stream`:

    offset  type        field
    0       4 bytes     magic b"PTRF"
    4       uint16      version = 1
    6       uint16      flags: bit 0 WANT_DEPTH, bit 1 RAW (float32 output; otherwise a PNG); depth needs RAW
                               bit 2 ORTHO (orthographic: u = fx x + cx, v = fy y + cy with K in pixels per
                               metre; near/far still bound camera z)
                               bit 3 FILM (needs RAW): answer with a compositor's film (`render.film`): rows
                               bottom first, RGB scene-linear, alpha 1 (opaque film) and depth FAR_DEPTH
                               (1e10) where nothing was hit, so a DCC writes the bytes to its passes as they are
                               bit 4 TRANSPARENT (needs FILM and a zero background): a transparent film, RGB
                               premultiplied by alpha = coverage
    8       uint32      width, pixels
    12      uint32      height, pixels
    16      uint32      M, objects in this frame (>= 1)
    20      float32     near (> 0), camera-z near plane, metres
    24      float32     far (> near)
    28      3 float32   background RGB composited behind the splats (0 0 0 gives premultiplied colour)
    40      16 float32  viewmat, world -> camera, OpenCV axes (x right, y down, z forward), row-major
    104     9 float32   K, pinhole intrinsics in pixels, row-major, last row 0 0 1
    140     uint32      reserved, zero
    144     M records, each:
              uint32      N, Gaussians (must equal the registered object's count)
              uint16      L, length of the object id (1..64)
              uint16      flags: bit 0 BONES (the object was registered with SKIN)
              L bytes     object id, ASCII [A-Za-z0-9_-], then zero padding to a multiple of 4 bytes
              uint32      J, bones (only with BONES; must equal the registered J)
              float32     N*3 posed means (world)
              float32     N*4 posed rotations, w-first (non-zero; normalised by the renderer); or with BONES:
                          J*9 bone rotations (the linear part of each bone's world deform matrix, row-major)
                          and a w-first quaternion Q: a Gaussian turns by polar(sum_j w_j B_j) Q R(rest),
                          the backend's LBS rotation (so the client sends 40 floats, not 4 per Gaussian)

Raw render response (`RAW`), `Content-Type: application/octet-stream`:

    0       4 bytes     magic b"PTIM"
    4       uint16      version = 1
    6       uint16      flags: bit 0 HAS_DEPTH, bit 1 FILM (the request's FILM layout, below)
    8       uint32      width
    12      uint32      height
    16      float32     H*W*4 RGBA, row-major from the top row; RGB is display sRGB composited over the
                        background
            float32     H*W depth (camera z, 0 where alpha is 0), only with HAS_DEPTH

With FILM the pixels come in film layout and only the block that holds every covered pixel is sent (a head
rarely fills the frame; outside the block every pixel is the empty film):

    16      4 uint32    x0, y0, w, h: the block, y0 counted from the bottom row (w = h = 0: nothing covered)
    32      4 float32   RGBA of every pixel outside the block (0 0 0 0, or the linearised background, alpha 1)
    48      float32     depth outside the block (FAR_DEPTH)
    52      12 bytes    reserved, zero
    64      float32     w*h*4 RGBA of the block, rows bottom first; then w*h depth, only with HAS_DEPTH

Otherwise the response is `image/png`, 8-bit RGBA of the same pixels.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np

OBJECT_MAGIC, RENDER_MAGIC, IMAGE_MAGIC = b"PTOB", b"PTRF", b"PTIM"
VERSION = 1
COLORS_RGB, REST_QUATS, SKIN = 1, 2, 4
BONES = 1  # frame record flag
MAX_BONES = 64
WANT_DEPTH, RAW, ORTHO, FILM, TRANSPARENT = 1, 2, 4, 8, 16
HAS_DEPTH, FILM_IMAGE = 1, 2
OBJECT_HEADER = struct.Struct("<4sHHIB3s")  # 16 bytes
RENDER_HEADER = struct.Struct("<4sHHIIIff3f16f9fI")  # 144 bytes
RECORD_HEADER = struct.Struct("<IHH")  # 8 bytes
IMAGE_HEADER = struct.Struct("<4sHHII")  # 16 bytes
FILM_HEADER = struct.Struct("<IIII4ff12x")  # 48 bytes after IMAGE_HEADER
OBJECT_ID_RE = re.compile(rb"[A-Za-z0-9_-]{1,64}")
F32 = np.dtype("<f4")

assert OBJECT_HEADER.size == 16 and RENDER_HEADER.size == 144 and RECORD_HEADER.size == 8
assert FILM_HEADER.size == 48


class PayloadError(ValueError):
    """A malformed binary payload; the message names the field."""


@dataclass(frozen=True)
class PayloadLimits:
    max_gaussians_per_object: int = 2_000_000
    max_objects_per_render: int = 64
    max_side: int = 8192
    max_pixels: int = 3840 * 2160 * 2


@dataclass
class ObjectAttributes:
    """Static attributes of one registered object (arrays are float32, C-contiguous)."""

    opacities: np.ndarray  # (N,)
    scales: np.ndarray  # (N, 3)
    sh: np.ndarray | None = None  # (N, K, 3)
    colors: np.ndarray | None = None  # (N, 3)
    rest_quats: np.ndarray | None = None  # (N, 4)
    pattern_weights: np.ndarray | None = None  # (P, J) skinning weight patterns (SKIN)
    pattern_index: np.ndarray | None = None  # (N,) uint32 pattern of each Gaussian (SKIN)

    @property
    def count(self) -> int:
        return int(self.opacities.shape[0])

    @property
    def sh_degree(self) -> int:
        return 0 if self.sh is None else round(self.sh.shape[1] ** 0.5) - 1


@dataclass
class FrameObject:
    object_id: str
    means: np.ndarray  # (N, 3)
    quats: np.ndarray | None = None  # (N, 4); or, for a SKIN object, the next two
    bones: np.ndarray | None = None  # (J, 3, 3) bone rotations
    post: np.ndarray | None = None  # (4,) quaternion Q applied before the bones (object rotation, frame change)


@dataclass
class RenderRequest:
    width: int
    height: int
    near: float
    far: float
    background: np.ndarray  # (3,)
    viewmat: np.ndarray  # (4, 4)
    K: np.ndarray  # (3, 3)
    objects: list[FrameObject]
    want_depth: bool = False
    raw: bool = False
    ortho: bool = False
    film: bool = False  # answer in film layout (render.film): needs raw
    transparent: bool = False  # a transparent film: needs film and a zero background


# ------------------------------------------------------------------------------------ helpers
def _floats(body: memoryview, offset: int, count: int, what: str) -> tuple[np.ndarray, int]:
    end = offset + 4 * count
    if end > len(body):
        raise PayloadError(f"{what}: needs {4 * count} bytes at offset {offset}, the body ends at {len(body)}")
    values = np.frombuffer(body, dtype=F32, count=count, offset=offset).astype(np.float32)
    if not np.isfinite(values).all():
        raise PayloadError(f"{what}: contains NaN or Inf")
    return values, end


def _pad4(n: int) -> int:
    return (n + 3) & ~3


# ------------------------------------------------------------------------------------ objects
def encode_object(attrs: ObjectAttributes) -> bytes:
    n = attrs.count
    flags = 0
    if attrs.colors is not None:
        flags |= COLORS_RGB
        color_block, degree = np.asarray(attrs.colors, F32).reshape(n, 3), 0
    else:
        color_block, degree = np.asarray(attrs.sh, F32), attrs.sh_degree
    if attrs.rest_quats is not None:
        flags |= REST_QUATS
    if attrs.pattern_weights is not None:
        flags |= SKIN
    parts = [OBJECT_HEADER.pack(OBJECT_MAGIC, VERSION, flags, n, degree, b"\0\0\0"), color_block.tobytes(),
             np.asarray(attrs.opacities, F32).reshape(n).tobytes(), np.asarray(attrs.scales, F32).reshape(n, 3).tobytes()]
    if attrs.rest_quats is not None:
        parts.append(np.asarray(attrs.rest_quats, F32).reshape(n, 4).tobytes())
    if attrs.pattern_weights is not None:
        p, j = attrs.pattern_weights.shape
        parts += [struct.pack("<II", j, p), np.asarray(attrs.pattern_weights, F32).tobytes(),
                  np.asarray(attrs.pattern_index, "<u4").reshape(n).tobytes()]
    return b"".join(parts)


def _check_header(kind: str, magic: bytes, expected: bytes, version: int, flags: int, known_flags: int) -> None:
    if magic != expected:
        raise PayloadError(f"{kind} payload: magic {magic!r}, expected {expected!r}")
    if version != VERSION:
        raise PayloadError(f"{kind} payload: version {version}, this service reads version {VERSION}")
    if flags & ~known_flags:
        raise PayloadError(f"{kind} payload: unknown flag bits {flags & ~known_flags:#x}")


def parse_object(body: bytes, limits: PayloadLimits = PayloadLimits()) -> ObjectAttributes:
    view = memoryview(body)
    if len(view) < OBJECT_HEADER.size:
        raise PayloadError(f"object payload: {len(view)} bytes is shorter than its {OBJECT_HEADER.size}-byte header")
    magic, version, flags, n, degree, reserved = OBJECT_HEADER.unpack_from(view, 0)
    _check_header("object", magic, OBJECT_MAGIC, version, flags, COLORS_RGB | REST_QUATS | SKIN)
    if flags & SKIN and not flags & REST_QUATS:
        raise PayloadError("object payload: SKIN needs REST_QUATS (the canonical rotations it turns)")
    if reserved != b"\0\0\0":
        raise PayloadError("object payload: reserved bytes must be zero")
    if not 1 <= n <= limits.max_gaussians_per_object:
        raise PayloadError(f"object payload: count {n} must be between 1 and {limits.max_gaussians_per_object}")
    if degree > 3:
        raise PayloadError(f"object payload: sh_degree {degree} must be 0..3")
    if flags & COLORS_RGB and degree != 0:
        raise PayloadError("object payload: COLORS_RGB needs sh_degree 0")
    k = (degree + 1) ** 2
    per_color = 3 if flags & COLORS_RGB else 3 * k
    expected = OBJECT_HEADER.size + 4 * n * (per_color + 1 + 3 + (4 if flags & REST_QUATS else 0))
    skin_at = expected
    if flags & SKIN:
        if len(view) < expected + 8:
            raise PayloadError(f"object payload: {len(view)} bytes end before the skinning block at {expected}")
        j, p = struct.unpack_from("<II", view, expected)
        if not (1 <= j <= MAX_BONES and 1 <= p <= n):
            raise PayloadError(f"object payload: {j} bones and {p} weight patterns; need 1..{MAX_BONES} bones and "
                               f"1..{n} patterns")
        expected += 8 + 4 * p * j + 4 * n
    if len(view) != expected:
        raise PayloadError(f"object payload: {len(view)} bytes, but its header (count {n}, sh_degree {degree}, "
                           f"flags {flags}) needs exactly {expected}")
    offset = OBJECT_HEADER.size
    colors, offset = _floats(view, offset, n * per_color, "colours")
    opacities, offset = _floats(view, offset, n, "opacities")
    scales, offset = _floats(view, offset, n * 3, "scales")
    rest = None
    if flags & REST_QUATS:
        rest, offset = _floats(view, offset, n * 4, "rest rotations")
        rest = rest.reshape(n, 4)
        if (np.linalg.norm(rest, axis=1) < 1e-8).any():
            raise PayloadError("rest rotations: a quaternion is zero")
    pattern_weights = pattern_index = None
    if flags & SKIN:
        pattern_weights, _ = _floats(view, skin_at + 8, p * j, "pattern weights")
        pattern_weights = pattern_weights.reshape(p, j)
        totals = pattern_weights.sum(axis=1)
        if (pattern_weights < 0).any() or not (np.isclose(totals, 1.0, atol=1e-3) | (totals == 0)).all():
            raise PayloadError("pattern weights: each row must be non-negative and sum to 1 (or be all zero)")
        pattern_index = np.frombuffer(view, "<u4", count=n, offset=skin_at + 8 + 4 * p * j).astype(np.int64)
        if pattern_index.max() >= p:
            raise PayloadError(f"pattern index: {int(pattern_index.max())} is not one of the {p} patterns")
    if ((opacities < 0) | (opacities > 1)).any():
        raise PayloadError("opacities: must lie in [0, 1]")
    if (scales <= 0).any():
        raise PayloadError("scales: must be > 0 (activated standard deviations in metres)")
    skin = {"pattern_weights": pattern_weights, "pattern_index": pattern_index}
    if flags & COLORS_RGB:
        return ObjectAttributes(opacities=opacities, scales=scales.reshape(n, 3), colors=colors.reshape(n, 3),
                                rest_quats=rest, **skin)
    return ObjectAttributes(opacities=opacities, scales=scales.reshape(n, 3), sh=colors.reshape(n, k, 3),
                            rest_quats=rest, **skin)


# ------------------------------------------------------------------------------------ frames
def encode_render(request: RenderRequest) -> bytes:
    flags = (WANT_DEPTH if request.want_depth else 0) | (RAW if request.raw else 0) | (ORTHO if request.ortho else 0) \
        | (FILM if request.film else 0) | (TRANSPARENT if request.transparent else 0)
    header = RENDER_HEADER.pack(RENDER_MAGIC, VERSION, flags, request.width, request.height, len(request.objects),
                                request.near, request.far, *np.asarray(request.background, F32).reshape(3),
                                *np.asarray(request.viewmat, F32).reshape(16), *np.asarray(request.K, F32).reshape(9), 0)
    parts = [header]
    for obj in request.objects:
        name = obj.object_id.encode("ascii")
        n = int(np.asarray(obj.means).shape[0])
        bones = obj.bones is not None
        parts += [RECORD_HEADER.pack(n, len(name), BONES if bones else 0), name, b"\0" * (_pad4(len(name)) - len(name))]
        if bones:
            parts.append(struct.pack("<I", len(obj.bones)))
        parts.append(np.ascontiguousarray(obj.means, F32).reshape(n, 3).tobytes())
        if bones:
            parts += [np.ascontiguousarray(obj.bones, F32).reshape(-1).tobytes(),
                      np.ascontiguousarray(obj.post, F32).reshape(4).tobytes()]
        else:
            parts.append(np.ascontiguousarray(obj.quats, F32).reshape(n, 4).tobytes())
    return b"".join(parts)


def parse_render(body: bytes, limits: PayloadLimits = PayloadLimits()) -> RenderRequest:
    view = memoryview(body)
    if len(view) < RENDER_HEADER.size:
        raise PayloadError(f"render payload: {len(view)} bytes is shorter than its {RENDER_HEADER.size}-byte header")
    fields = RENDER_HEADER.unpack_from(view, 0)
    magic, version, flags, width, height, m, near, far = fields[:8]
    background = np.array(fields[8:11], np.float32)
    viewmat = np.array(fields[11:27], np.float32).reshape(4, 4)
    K = np.array(fields[27:36], np.float32).reshape(3, 3)
    reserved = fields[36]
    _check_header("render", magic, RENDER_MAGIC, version, flags, WANT_DEPTH | RAW | ORTHO | FILM | TRANSPARENT)
    if flags & WANT_DEPTH and not flags & RAW:
        raise PayloadError("render payload: depth is only returned with the RAW flag (PNG carries RGBA only)")
    if flags & FILM and not flags & RAW:
        raise PayloadError("render payload: the FILM layout is float32: it needs the RAW flag")
    if flags & TRANSPARENT and not (flags & FILM and not background.any()):
        raise PayloadError("render payload: TRANSPARENT needs the FILM flag and a zero (0 0 0) background")
    if reserved != 0:
        raise PayloadError("render payload: reserved field must be zero")
    if not (1 <= width <= limits.max_side and 1 <= height <= limits.max_side):
        raise PayloadError(f"render payload: size {width}x{height}; each side must be 1..{limits.max_side}")
    if width * height > limits.max_pixels:
        raise PayloadError(f"render payload: {width}x{height} is over the {limits.max_pixels}-pixel limit")
    if not 1 <= m <= limits.max_objects_per_render:
        raise PayloadError(f"render payload: object count {m} must be between 1 and {limits.max_objects_per_render}")
    if not (np.isfinite(near) and np.isfinite(far) and 0 < near < far):
        raise PayloadError(f"render payload: near {near} and far {far} must be finite with 0 < near < far")
    for name, value in (("background", background), ("viewmat", viewmat), ("K", K)):
        if not np.isfinite(value).all():
            raise PayloadError(f"render payload: {name} contains NaN or Inf")
    if not np.allclose(viewmat[3], (0, 0, 0, 1), atol=1e-6):
        raise PayloadError("render payload: viewmat's last row must be 0 0 0 1")
    if not (K[0, 0] > 0 and K[1, 1] > 0 and np.allclose(K[2], (0, 0, 1), atol=1e-6) and K[1, 0] == 0):
        raise PayloadError("render payload: K must be a pinhole matrix (fx, fy > 0, last row 0 0 1)")

    objects: list[FrameObject] = []
    seen: set[str] = set()
    offset = RENDER_HEADER.size
    for index in range(m):
        if offset + RECORD_HEADER.size > len(view):
            raise PayloadError(f"object record {index}: the body ends before its header (offset {offset})")
        n, id_len, rec_flags = RECORD_HEADER.unpack_from(view, offset)
        offset += RECORD_HEADER.size
        if rec_flags & ~BONES:
            raise PayloadError(f"object record {index}: unknown flag bits {rec_flags & ~BONES:#x}")
        if not 1 <= n <= limits.max_gaussians_per_object:
            raise PayloadError(f"object record {index}: count {n} must be between 1 and {limits.max_gaussians_per_object}")
        if not 1 <= id_len <= 64:
            raise PayloadError(f"object record {index}: id length {id_len} must be 1..64")
        padded = _pad4(id_len)
        needs = padded + (4 + 12 * n if rec_flags & BONES else 28 * n)
        if offset + needs > len(view):
            raise PayloadError(f"object record {index}: {n} Gaussians need {needs} bytes at offset "
                               f"{offset}, the body ends at {len(view)}")
        raw_id = bytes(view[offset:offset + id_len])
        if not OBJECT_ID_RE.fullmatch(raw_id):
            raise PayloadError(f"object record {index}: the id must be 1-64 characters of A-Z a-z 0-9 _ -")
        if any(view[offset + id_len:offset + padded]):
            raise PayloadError(f"object record {index}: id padding must be zero")
        object_id = raw_id.decode("ascii")
        if object_id in seen:
            raise PayloadError(f"object record {index}: object {object_id!r} appears twice")
        seen.add(object_id)
        offset += padded
        if rec_flags & BONES:
            (j,) = struct.unpack_from("<I", view, offset)
            offset += 4
            if not 1 <= j <= MAX_BONES:
                raise PayloadError(f"object {object_id!r}: {j} bones; must be 1..{MAX_BONES}")
            means, offset = _floats(view, offset, n * 3, f"object {object_id!r} means")
            bones, offset = _floats(view, offset, j * 9, f"object {object_id!r} bone rotations")
            post, offset = _floats(view, offset, 4, f"object {object_id!r} bone frame quaternion")
            if float(post @ post) < 1e-16:
                raise PayloadError(f"object {object_id!r}: the bone frame quaternion is zero")
            objects.append(FrameObject(object_id, means.reshape(n, 3), bones=bones.reshape(j, 3, 3), post=post))
            continue
        means, offset = _floats(view, offset, n * 3, f"object {object_id!r} means")
        quats, offset = _floats(view, offset, n * 4, f"object {object_id!r} rotations")
        quats = quats.reshape(n, 4)
        if (np.einsum("ij,ij->i", quats, quats) < 1e-16).any():
            raise PayloadError(f"object {object_id!r} rotations: a quaternion is zero")
        objects.append(FrameObject(object_id, means.reshape(n, 3), quats))
    if offset != len(view):
        raise PayloadError(f"render payload: {len(view) - offset} unexpected bytes after the last object record")
    return RenderRequest(width=width, height=height, near=float(near), far=float(far), background=background,
                         viewmat=viewmat, K=K, objects=objects, want_depth=bool(flags & WANT_DEPTH),
                         raw=bool(flags & RAW), ortho=bool(flags & ORTHO), film=bool(flags & FILM),
                         transparent=bool(flags & TRANSPARENT))


# ------------------------------------------------------------------------------------ images
def raw_image_buffer(width: int, height: int, with_depth: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(whole response as a uint8 buffer with its header written, RGBA view (H, W, 4), depth view (H, W) or None).

    The renderer writes pixels straight into the views, so the response is built without extra copies.
    """
    buffer, rgba, depth = _pass_buffer(IMAGE_HEADER.size, width, height, with_depth)
    IMAGE_HEADER.pack_into(buffer, 0, IMAGE_MAGIC, VERSION, HAS_DEPTH if with_depth else 0, width, height)
    return buffer, rgba, depth


def _pass_buffer(start: int, width: int, height: int, with_depth: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(uint8 buffer of `start` header bytes + the passes, RGBA view (h, w, 4), depth view (h, w) or None)."""
    pixels = width * height
    buffer = np.empty(start + 4 * pixels * (5 if with_depth else 4), np.uint8)
    body = buffer[start:].view(F32)
    rgba = body[: 4 * pixels].reshape(height, width, 4)
    depth = body[4 * pixels:].reshape(height, width) if with_depth else None
    return buffer, rgba, depth


def film_image_buffer(width: int, height: int, block: tuple[int, int, int, int], fill_rgba: np.ndarray,
                      fill_depth: float, with_depth: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A FILM response: (buffer with both headers written, the block's RGBA view (h, w, 4), depth view or None)."""
    x0, y0, w, h = block
    if not (0 <= x0 and 0 <= y0 and x0 + w <= width and y0 + h <= height):
        raise PayloadError(f"film block {block} is outside the {width}x{height} frame")
    buffer, rgba, depth = _pass_buffer(IMAGE_HEADER.size + FILM_HEADER.size, w, h, with_depth)
    IMAGE_HEADER.pack_into(buffer, 0, IMAGE_MAGIC, VERSION, FILM_IMAGE | (HAS_DEPTH if with_depth else 0), width, height)
    FILM_HEADER.pack_into(buffer, IMAGE_HEADER.size, x0, y0, w, h, *np.asarray(fill_rgba, np.float32).reshape(4),
                          float(fill_depth))
    return buffer, rgba, depth


def encode_raw_image(rgba: np.ndarray, depth: np.ndarray | None = None) -> bytes:
    h, w = rgba.shape[:2]
    buffer, rgba_view, depth_view = raw_image_buffer(w, h, depth is not None)
    rgba_view[...] = rgba
    if depth is not None:
        depth_view[...] = depth
    return buffer.tobytes()


def _image_header(body: bytes, what: str, min_size: int) -> tuple[int, int, int]:
    """(flags, width, height) of a PTIM response, its magic, version and flags checked."""
    if len(body) < min_size:
        raise PayloadError(f"{what}: shorter than its header")
    magic, version, flags, width, height = IMAGE_HEADER.unpack_from(body, 0)
    if magic != IMAGE_MAGIC or version != VERSION or flags & ~(HAS_DEPTH | FILM_IMAGE):
        raise PayloadError(f"{what}: bad magic, version or flags")
    return flags, width, height


def decode_film_image(body: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGBA (H, W, 4), depth (H, W) or None) in film layout from a FILM response: the empty film with the
    sent block pasted in (what a DCC writes to its passes)."""
    flags, width, height = _image_header(body, "film image", IMAGE_HEADER.size + FILM_HEADER.size)
    if not flags & FILM_IMAGE:
        raise PayloadError("film image: the film layout was asked for and not given (a backend older than this client?)")
    x0, y0, w, h, *fill = FILM_HEADER.unpack_from(body, IMAGE_HEADER.size)
    with_depth = bool(flags & HAS_DEPTH)
    start = IMAGE_HEADER.size + FILM_HEADER.size
    if x0 + w > width or y0 + h > height:
        raise PayloadError(f"film image: block {(x0, y0, w, h)} is outside the {width}x{height} frame")
    if len(body) != start + 4 * w * h * (5 if with_depth else 4):
        raise PayloadError(f"film image: {len(body)} bytes do not match a {w}x{h} block")
    rgba = np.empty((height, width, 4), np.float32)
    rgba[...] = np.asarray(fill[:4], np.float32)
    rgba[y0:y0 + h, x0:x0 + w] = np.frombuffer(body, F32, count=w * h * 4, offset=start).reshape(h, w, 4)
    depth = None
    if with_depth:
        depth = np.full((height, width), fill[4], np.float32)
        depth[y0:y0 + h, x0:x0 + w] = np.frombuffer(body, F32, count=w * h, offset=start + 16 * w * h).reshape(h, w)
    return rgba, depth


def decode_raw_image(body: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGBA (H, W, 4), depth (H, W) or None) from a raw render response (for clients and tests), as read-only
    views of `body`. A FILM response is refused here: `decode_film_image` reads it."""
    flags, w, h = _image_header(body, "raw image", IMAGE_HEADER.size)
    if flags & FILM_IMAGE:
        raise PayloadError("raw image: a film layout (read it with decode_film_image)")
    expected = IMAGE_HEADER.size + 4 * w * h * (5 if flags & HAS_DEPTH else 4)
    if len(body) != expected:
        raise PayloadError(f"raw image: {len(body)} bytes, expected {expected}")
    rgba = np.frombuffer(body, F32, count=w * h * 4, offset=IMAGE_HEADER.size).reshape(h, w, 4)
    depth = None
    if flags & HAS_DEPTH:
        depth = np.frombuffer(body, F32, count=w * h, offset=IMAGE_HEADER.size + 16 * w * h).reshape(h, w)
    return rgba, depth
