"""The one definition of our Gaussian PLY layout (numpy; plyfile for writing and ASCII files; the Blender add-on carries it).

Layout: Inria 3DGS, so every splat viewer opens our files —
`x y z nx ny nz f_dc_0..2 f_rest_0..f_rest_{3K-1} opacity scale_0..2 rot_0..3` as float32, binary little
endian, one `vertex` element; opacity is a logit, scales are logs, rot is w-first; f_rest is channel-major
(`(N, K, 3)` transposed to `(N, 3, K)` before flattening, so `f_rest_{c*K + k}` is coefficient k of channel c).
Our bundles append the binding: `binding_0` (triangle index, int32: the honest type) and `bary_0..2`.
GaussianAvatars writes `binding_0` as a float after the Inria properties and no barycentrics; we read and
write that too.

Reading is strict, because a PLY may come from anywhere: the header is checked against the file size before
plyfile touches the data (plyfile can read garbage from a file whose header overstates its vertex count),
every property must be known, and every value finite. Each problem raises `AvatarFormatError` naming the
file and the property.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from ..atomic import atomic_write, atomic_write_files, fsync_dir  # noqa: F401  (re-exported for bundle/GA writers)
from .gaussians import AvatarFormatError, Binding, Gaussians

#: f_rest property count -> SH coefficients per channel (degree 0..3).
SH_REST_COUNTS = {0: 0, 9: 3, 24: 8, 45: 15}
NORMAL_PROPS = ("nx", "ny", "nz")
BARY_PROPS = ("bary_0", "bary_1", "bary_2")
BINDING_PROP = "binding_0"
#: PLY scalar types and their sizes in bytes (both spellings the PLY spec allows).
_TYPE_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
               "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}
_NUMPY_TYPES = {"char": "i1", "uchar": "u1", "int8": "i1", "uint8": "u1", "short": "i2", "ushort": "u2", "int16": "i2",
                "uint16": "u2", "int": "i4", "uint": "u4", "int32": "i4", "uint32": "u4", "float": "f4", "float32": "f4",
                "double": "f8", "float64": "f8"}
_FLOAT_TYPES = {"float", "float32", "double", "float64"}
_MAX_HEADER_BYTES = 1 << 20

PlyLayout = Literal["pointillist", "gaussian_avatars"]


def property_names(sh_rest_coeffs: int, with_binding: bool, *, with_bary: bool = True) -> list[str]:
    """Property order of a PLY we write: exactly Inria's, then the binding (if any)."""
    names = ["x", "y", "z", *NORMAL_PROPS, "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * sh_rest_coeffs)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    if with_binding:
        names.append(BINDING_PROP)
        if with_bary:
            names += list(BARY_PROPS)
    return names


# ---------------------------------------------------------------------------------------- write
def vertex_rows(gaussians: Gaussians, binding: Binding | None = None, layout: PlyLayout = "pointillist") -> np.ndarray:
    """The PLY `vertex` records as a numpy structured array, in our property order.

    layout="pointillist": int32 `binding_0` + `bary_0..2` (barycentrics required).
    layout="gaussian_avatars": float32 `binding_0`, no barycentrics (GaussianAvatars' `save_ply`).
    """
    n = gaussians.num
    k = int(gaussians.sh_rest.shape[1])
    if k not in SH_REST_COUNTS.values():
        raise AvatarFormatError(f"field 'sh_rest': {k} coefficients per channel; expected 0, 3, 8 or 15")
    ga = layout == "gaussian_avatars"
    if binding is not None:
        if binding.triangles.shape != (n,):
            raise AvatarFormatError(f"field 'binding': expected {n} triangle indices, got {binding.triangles.shape}")
        if n and (binding.triangles.min() < 0 or binding.triangles.max() >= (1 << 24 if ga else 1 << 31)):
            raise AvatarFormatError("field 'binding': triangle index out of the range binding_0 can store")
        if not ga and binding.barycentrics is None:
            raise AvatarFormatError("field 'bary': barycentrics are missing; our PLY always stores them")
    names = property_names(k, binding is not None, with_bary=not ga)
    dtype = [(name, "<f4") for name in names]
    if binding is not None and not ga:
        dtype[names.index(BINDING_PROP)] = (BINDING_PROP, "<i4")
    rows = np.zeros(n, dtype=dtype)
    for i, axis in enumerate("xyz"):
        rows[axis] = gaussians.means[:, i]
    for i in range(3):
        rows[f"f_dc_{i}"] = gaussians.sh_dc[:, i]
        rows[f"scale_{i}"] = gaussians.log_scales[:, i]
    rest = np.asarray(gaussians.sh_rest).transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major, like Inria
    for i in range(3 * k):
        rows[f"f_rest_{i}"] = rest[:, i]
    rows["opacity"] = gaussians.opacity_logits
    for i in range(4):
        rows[f"rot_{i}"] = gaussians.quats[:, i]
    if binding is not None:
        rows[BINDING_PROP] = binding.triangles
        if not ga:
            for i, name in enumerate(BARY_PROPS):
                rows[name] = binding.barycentrics[:, i]
    return rows


def write_ply_rows(stream: BinaryIO, rows: np.ndarray) -> None:
    """Write structured records as one binary little-endian `vertex` element."""
    from plyfile import PlyData, PlyElement

    PlyData([PlyElement.describe(rows, "vertex")], byte_order="<").write(stream)


def gaussians_to_ply_bytes(gaussians: Gaussians, binding: Binding | None = None, layout: PlyLayout = "pointillist") -> bytes:
    """Serialise to PLY bytes in memory (for zip members)."""
    buffer = io.BytesIO()
    write_ply_rows(buffer, vertex_rows(gaussians, binding, layout))
    return buffer.getvalue()


def write_gaussian_ply(path: str | os.PathLike, gaussians: Gaussians, binding: Binding | None = None,
                       layout: PlyLayout = "pointillist") -> Path:
    """Write a Gaussian PLY atomically: readers see the old file or the whole new one, never a part."""
    rows = vertex_rows(gaussians, binding, layout)  # fails before anything touches the disk
    return atomic_write(path, lambda fh: write_ply_rows(fh, rows))


# ---------------------------------------------------------------------------------------- read
def read_gaussian_ply(path: str | os.PathLike) -> tuple[Gaussians, Binding | None]:
    """Read a plain Inria 3DGS PLY (binding None), a GaussianAvatars PLY (barycentrics None) or ours."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            return _read(fh, size, str(path))
    except FileNotFoundError:
        raise AvatarFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise AvatarFormatError(f"{path}: is a folder, not a PLY file") from None
    except OSError as exc:
        raise AvatarFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None


def gaussians_from_ply_bytes(payload: bytes, name: str = "<ply>") -> tuple[Gaussians, Binding | None]:
    """`read_gaussian_ply` for bytes already in memory (e.g. a zip member)."""
    return _read(io.BytesIO(payload), len(payload), name)


def _read(stream: BinaryIO, size: int, name: str) -> tuple[Gaussians, Binding | None]:
    header = _Header.parse(stream, size, name)
    sh_coeffs = _check_properties(header, name)  # before plyfile builds a dtype from the names
    if header.format != "ascii":
        # The header was checked against the file size, so the records are exactly count * row bytes: one
        # frombuffer (plyfile reads a stream value by value, ~1 s per 20k Gaussians).
        order = "<" if header.format == "binary_little_endian" else ">"
        dtype = np.dtype([(p, order + _NUMPY_TYPES[t]) for p, t in header.props])
        stream.seek(header.data_start)
        payload = stream.read(header.count * dtype.itemsize)
        if len(payload) != header.count * dtype.itemsize:
            raise AvatarFormatError(f"{name}: truncated: header declares {header.count} vertices, read {len(payload) // max(dtype.itemsize, 1)}")
        return _decode(np.frombuffer(payload, dtype=dtype, count=header.count), header, sh_coeffs, name)
    from plyfile import PlyData  # ASCII PLYs only (rare): plyfile parses the text

    stream.seek(0)
    try:
        ply = PlyData.read(stream, mmap=False)
    except Exception as exc:  # plyfile raises PlyParseError, ValueError, EOFError... on malformed data
        raise AvatarFormatError(f"{name}: corrupt or truncated PLY data ({exc})") from None
    data = ply["vertex"].data
    if len(data) != header.count:
        raise AvatarFormatError(f"{name}: truncated: header declares {header.count} vertices, read {len(data)}")
    return _decode(data, header, sh_coeffs, name)


class _Header:
    """What we need from a PLY header, parsed by us so sizes can be checked before any data is read."""

    def __init__(self, fmt: str, count: int, props: list[tuple[str, str]], data_start: int):
        self.format = fmt
        self.count = count
        self.props = props  # (name, type) of the vertex element, in file order
        self.data_start = data_start

    @property
    def names(self) -> list[str]:
        return [p for p, _ in self.props]

    @classmethod
    def parse(cls, stream: BinaryIO, size: int, name: str) -> "_Header":
        head = stream.read(min(size, _MAX_HEADER_BYTES))
        if not head.startswith(b"ply"):
            raise AvatarFormatError(f"{name}: not a PLY file (missing 'ply' magic)")
        end = head.find(b"end_header")
        newline = head.find(b"\n", end) if end >= 0 else -1
        if end < 0 or newline < 0:
            raise AvatarFormatError(f"{name}: PLY header is truncated or too long (no end_header)")
        try:
            lines = head[:end].decode("ascii").splitlines()
        except UnicodeDecodeError:
            raise AvatarFormatError(f"{name}: PLY header is not ASCII text") from None
        fmt, elements = None, []  # elements: [name, count, [(prop, type)]]
        for line in lines[1:]:
            words = line.split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "format" and len(words) == 3:
                fmt = words[1]
            elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
                elements.append([words[1], int(words[2]), []])
            elif words[0] == "property" and elements:
                if words[1] == "list":
                    if elements[-1][0] != "vertex":  # refused below as an unexpected element
                        elements[-1][2].append((words[-1], "list"))
                        continue
                    raise AvatarFormatError(f"{name}: property '{words[-1]}' is a list; Gaussian PLYs hold scalars only")
                if len(words) != 3 or words[1] not in _TYPE_SIZES:
                    raise AvatarFormatError(f"{name}: malformed PLY header line {line!r}")
                elements[-1][2].append((words[2], words[1]))
            else:
                raise AvatarFormatError(f"{name}: malformed PLY header line {line!r}")
        if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
            raise AvatarFormatError(f"{name}: unknown PLY format {fmt!r}")
        others = [e[0] for e in elements if e[0] != "vertex"]
        if others or len(elements) != 1:
            what = f"unexpected element(s) {', '.join(others)}" if others else "no single 'vertex' element"
            raise AvatarFormatError(f"{name}: {what}; a Gaussian PLY has exactly one 'vertex' element")
        _, count, props = elements[0]
        header = cls(fmt, count, props, newline + 1)
        if fmt != "ascii":
            row = sum(_TYPE_SIZES[t] for _, t in props)
            expected, held = count * row, size - header.data_start
            if held < expected:
                raise AvatarFormatError(f"{name}: truncated: header declares {count} vertices ({expected} bytes of data) "
                                        f"but the file holds {held} bytes")
            if held > expected:
                raise AvatarFormatError(f"{name}: {held - expected} unexpected bytes after the {count} vertices the header declares")
        return header


def _check_properties(header: _Header, name: str) -> int:
    """Check the vertex property names and types; return SH coefficients per channel (K)."""
    names = header.names
    types = dict(header.props)
    duplicates = sorted({p for p in names if names.count(p) > 1})
    if duplicates:
        raise AvatarFormatError(f"{name}: duplicate propert{'y' if len(duplicates) == 1 else 'ies'} {', '.join(duplicates)}")
    n_rest = sum(p.startswith("f_rest_") for p in names)
    if n_rest not in SH_REST_COUNTS:
        raise AvatarFormatError(f"{name}: {n_rest} f_rest properties; expected 0, 9, 24 or 45 (SH degree 0-3)")
    k = SH_REST_COUNTS[n_rest]
    required = [p for p in property_names(k, False) if p not in NORMAL_PROPS]
    missing = [p for p in required if p not in types]
    if missing:
        raise AvatarFormatError(f"{name}: missing propert{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}")
    allowed = set(required) | set(NORMAL_PROPS) | {BINDING_PROP} | set(BARY_PROPS)
    unknown = [p for p in names if p not in allowed]
    if unknown:
        raise AvatarFormatError(f"{name}: unexpected propert{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} "
                                f"(a Gaussian PLY holds the Inria properties, nx/ny/nz, binding_0 and bary_0..2)")
    not_float = [p for p in names if p != BINDING_PROP and types[p] not in _FLOAT_TYPES]
    if not_float:
        raise AvatarFormatError(f"{name}: property '{not_float[0]}' has type {types[not_float[0]]}; expected float or double")
    has_bary = [p in types for p in BARY_PROPS]
    if any(has_bary) and not all(has_bary):
        raise AvatarFormatError(f"{name}: properties bary_0, bary_1, bary_2 must appear together")
    if any(has_bary) and BINDING_PROP not in types:
        raise AvatarFormatError(f"{name}: bary_0..2 without binding_0")
    return k


def _decode(data: np.ndarray, header: _Header, k: int, name: str) -> tuple[Gaussians, Binding | None]:
    types = dict(header.props)
    n_rest = 3 * k
    n = len(data)

    def col(prop: str) -> np.ndarray:
        value = np.asarray(data[prop])
        if not np.isfinite(value).all():
            raise AvatarFormatError(f"{name}: property '{prop}' contains NaN or Inf")
        return value.astype(np.float32)

    def stack(props: list[str]) -> np.ndarray:
        if not props:
            return np.zeros((n, 0), np.float32)
        return np.stack([col(p) for p in props], axis=1)

    for prop in NORMAL_PROPS:  # ignored, but a NaN there still means a broken writer
        if prop in types:
            col(prop)
    rest = stack([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k).transpose(0, 2, 1)
    gaussians = Gaussians(
        means=stack(["x", "y", "z"]),
        log_scales=stack(["scale_0", "scale_1", "scale_2"]),
        quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacity_logits=col("opacity"),
        sh_dc=stack(["f_dc_0", "f_dc_1", "f_dc_2"]),
        sh_rest=np.ascontiguousarray(rest),
    )
    if BINDING_PROP not in types:
        return gaussians, None
    has_bary = BARY_PROPS[0] in types
    return gaussians, Binding(triangles=_triangles(np.asarray(data[BINDING_PROP]), name),
                              barycentrics=stack(list(BARY_PROPS)) if has_bary else None)


def _triangles(raw: np.ndarray, name: str) -> np.ndarray:
    """binding_0 as int64, whether stored as an integer (ours) or a float (GaussianAvatars)."""
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all():
            raise AvatarFormatError(f"{name}: property 'binding_0' contains NaN or Inf")
        if (raw != np.round(raw)).any():
            bad = raw[raw != np.round(raw)][0]
            raise AvatarFormatError(f"{name}: property 'binding_0' must hold whole triangle indices (found {bad:g})")
        if raw.size and raw.max() >= 2.0 ** 31:
            raise AvatarFormatError(f"{name}: property 'binding_0' holds an impossibly large triangle index {raw.max():g}")
    if raw.size and raw.min() < 0:
        raise AvatarFormatError(f"{name}: property 'binding_0' has a negative triangle index {raw.min():g}")
    return raw.astype(np.int64)
