"""The one definition of our Gaussian PLY layout (numpy + plyfile only; the Blender add-on carries it).

Inria 3DGS layout so every splat viewer opens our files — `x y z nx ny nz f_dc_0..2 f_rest_0.. opacity
scale_0..2 rot_0..3`, with f_rest stored channel-major (`(N, K, 3)` transposed to `(N, 3, K)`) — plus the
binding: `binding_0` (triangle index, int32) and `bary_0..2`. GaussianAvatars writes `binding_0` as a float;
we read that too. Reading is strict: every problem raises `AvatarFormatError` naming the file and field.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from .gaussians import AvatarFormatError, Binding, Gaussians

SH_REST_COUNTS = {0: 0, 9: 3, 24: 8, 45: 15}  # f_rest properties -> coefficients per channel
OPTIONAL = ("nx", "ny", "nz")
BINDING_PROPS = ("binding_0", "bary_0", "bary_1", "bary_2")


def property_names(sh_rest_coeffs: int, with_binding: bool) -> list[str]:
    """Property order of a PLY we write (exactly Inria's, then the binding)."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * sh_rest_coeffs)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    if with_binding:
        names += list(BINDING_PROPS)
    return names


def gaussians_to_ply_bytes(gaussians: Gaussians, binding: Binding | None = None) -> bytes:
    """Serialise to a binary little-endian PLY in memory (used for files and zip members)."""
    n = gaussians.num
    k = gaussians.sh_rest.shape[1]
    names = property_names(k, binding is not None)
    dtype = [(name, "f4") for name in names]
    if binding is not None:
        dtype[names.index("binding_0")] = ("binding_0", "i4")
    rows = np.zeros(n, dtype=dtype)
    for i, axis in enumerate("xyz"):
        rows[axis] = gaussians.means[:, i]
    for i in range(3):
        rows[f"f_dc_{i}"] = gaussians.sh_dc[:, i]
        rows[f"scale_{i}"] = gaussians.log_scales[:, i]
    rest = gaussians.sh_rest.transpose(0, 2, 1).reshape(n, -1)  # channel-major, like Inria
    for i in range(rest.shape[1]):
        rows[f"f_rest_{i}"] = rest[:, i]
    rows["opacity"] = gaussians.opacity_logits
    for i in range(4):
        rows[f"rot_{i}"] = gaussians.quats[:, i]
    if binding is not None:
        rows["binding_0"] = binding.triangles.astype(np.int32)
        for i in range(3):
            rows[f"bary_{i}"] = binding.barycentrics[:, i]
    import io

    buffer = io.BytesIO()
    PlyData([PlyElement.describe(rows, "vertex")], byte_order="<").write(buffer)
    return buffer.getvalue()


def write_gaussian_ply(path: str | os.PathLike, gaussians: Gaussians, binding: Binding | None = None) -> None:
    """Write atomically: a temp file in the same folder, fsync, then `os.replace`."""
    atomic_write_bytes(path, gaussians_to_ply_bytes(gaussians, binding))


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_gaussian_ply(path: str | os.PathLike) -> tuple[Gaussians, Binding | None]:
    path = Path(path)
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise AvatarFormatError(f"{path}: file not found") from None
    except OSError as exc:
        raise AvatarFormatError(f"{path}: cannot read ({exc.strerror})") from None
    return gaussians_from_ply_bytes(payload, str(path))


def gaussians_from_ply_bytes(payload: bytes, name: str = "<ply>") -> tuple[Gaussians, Binding | None]:
    """Parse and check a Gaussian PLY; plain Inria files give `binding=None`."""
    import io

    if not payload.startswith(b"ply"):
        raise AvatarFormatError(f"{name}: not a PLY file (missing 'ply' magic)")
    header_end = payload.find(b"end_header")
    if header_end < 0:
        raise AvatarFormatError(f"{name}: PLY header is truncated (no end_header)")
    _check_declared_size(payload, header_end, name)
    try:
        ply = PlyData.read(io.BytesIO(payload))
    except Exception as exc:  # plyfile raises several types on malformed input
        raise AvatarFormatError(f"{name}: corrupt or truncated PLY ({exc})") from None
    if "vertex" not in ply:
        raise AvatarFormatError(f"{name}: no 'vertex' element")
    element = ply["vertex"]
    data = element.data
    names = list(data.dtype.names)
    n_rest = len([p for p in names if p.startswith("f_rest_")])
    if n_rest not in SH_REST_COUNTS:
        raise AvatarFormatError(f"{name}: {n_rest} f_rest properties; expected 0, 9, 24 or 45 (SH degree 0-3)")
    required = [p for p in property_names(SH_REST_COUNTS[n_rest], False) if p not in OPTIONAL]
    missing = [p for p in required if p not in names]
    if missing:
        raise AvatarFormatError(f"{name}: missing propert{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}")
    unknown = [p for p in names if p not in required and p not in OPTIONAL and p not in BINDING_PROPS]
    if unknown:
        raise AvatarFormatError(f"{name}: unexpected propert{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}")
    n = element.count

    def col(prop: str) -> np.ndarray:
        value = np.asarray(data[prop], dtype=np.float64)
        if not np.isfinite(value).all():
            raise AvatarFormatError(f"{name}: property '{prop}' contains NaN or Inf")
        return value

    def stack(props: list[str]) -> np.ndarray:
        return np.stack([col(p) for p in props], axis=1).astype(np.float32) if props else np.zeros((n, 0), np.float32)

    k = SH_REST_COUNTS[n_rest]
    rest = stack([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k).transpose(0, 2, 1)
    gaussians = Gaussians(
        means=stack(["x", "y", "z"]),
        log_scales=stack(["scale_0", "scale_1", "scale_2"]),
        quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacity_logits=col("opacity").astype(np.float32),
        sh_dc=stack(["f_dc_0", "f_dc_1", "f_dc_2"]),
        sh_rest=np.ascontiguousarray(rest),
    )
    binding = None
    if "binding_0" in names:
        raw = np.asarray(data["binding_0"])
        if raw.dtype.kind == "f":
            if not np.isfinite(raw).all() or (raw != np.round(raw)).any():
                raise AvatarFormatError(f"{name}: property 'binding_0' must hold whole triangle indices")
        if n and raw.min() < 0:
            raise AvatarFormatError(f"{name}: property 'binding_0' has a negative triangle index")
        triangles = raw.astype(np.int64)
        has_bary = [p in names for p in BINDING_PROPS[1:]]
        if any(has_bary) and not all(has_bary):
            raise AvatarFormatError(f"{name}: properties bary_0..2 must appear together")
        bary = stack(list(BINDING_PROPS[1:])) if all(has_bary) else np.full((n, 3), np.nan, np.float32)
        binding = Binding(triangles=triangles, barycentrics=bary)
    return gaussians, binding


_TYPE_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
               "int": 4, "uint": 4, "float": 4, "int32": 4, "uint32": 4, "float32": 4, "double": 8, "float64": 8}


def _check_declared_size(payload: bytes, header_end: int, name: str) -> None:
    """For binary PLYs without list properties, the header fixes the data size: check it up front."""
    header = payload[:header_end].decode("ascii", errors="replace").splitlines()
    if not any(line.startswith("format binary") for line in header):
        return
    counts: list[tuple[str, int, int]] = []  # (element, count, row bytes)
    for line in header:
        words = line.split()
        if words[:1] == ["element"] and len(words) == 3 and words[2].isdigit():
            counts.append((words[1], int(words[2]), 0))
        elif words[:1] == ["property"] and counts:
            if words[1] == "list" or words[1] not in _TYPE_SIZES:
                return  # variable-size rows: plyfile's own checks apply
            element, count, row = counts[-1]
            counts[-1] = (element, count, row + _TYPE_SIZES[words[1]])
    data_start = payload.index(b"\n", header_end) + 1
    expected = sum(count * row for _, count, row in counts)
    if len(payload) - data_start < expected:
        vertices = next((c for e, c, _ in counts if e == "vertex"), 0)
        raise AvatarFormatError(
            f"{name}: truncated: header declares {vertices} vertices ({expected} bytes of data) "
            f"but the file holds {len(payload) - data_start} bytes"
        )
