"""Converting a real FLAME model file (2020 / 2023 `.pkl`) into our head-model `.npz`, once.

FLAME's licence requires registration, so the project never ships or downloads it: a user who has
`generic_model.pkl` / `flame2023.pkl` runs `pointillist head import-flame FILE -o flame.npz` once. The pickle
is read by an allow-list unpickler (`safe_unpickle`) that executes nothing; afterwards everything loads
with `np.load(..., allow_pickle=False)`.

With `add_teeth=True` the converter appends the two rows of teeth GaussianAvatars adds to FLAME (120
vertices, 168 triangles after FLAME's 9,976) in the same vertex and triangle order, because that order
is what GaussianAvatars' `binding_0` indexes: an avatar trained there binds to the same triangles here.
The teeth are built from FLAME's outer lip rings (vertex ids below are facts about FLAME's topology);
upper teeth follow the neck joint, lower teeth the jaw, and they take the lips' mean identity shape.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

from .data import JOINT_NAMES, HeadModelData, HeadModelError
from .safe_unpickle import ChumpyStandIn, RefusedGlobal, SparseStandIn, safe_load

FLAME_VERTICES = 5023
FLAME_FACES = 9976
TEETH_VERTICES = 120
TEETH_FACES = 168
# FLAME's outer lip rings, left to right (15 vertices each), from which the teeth are built.
LIP_OUTSIDE_RING_UPPER = (1713, 1715, 1716, 1735, 1696, 1694, 1657, 3543, 2774, 2811, 2813, 2850, 2833, 2832, 2830)
LIP_OUTSIDE_RING_LOWER = (1576, 1577, 1773, 1774, 1795, 1802, 1865, 3503, 2948, 2905, 2898, 2881, 2880, 2713, 2712)
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")


class FlameFormatError(HeadModelError):
    """The FLAME file is unreadable, unsafe or not a FLAME model; the message says which."""


def convert_flame(pkl_path: str | os.PathLike, *, add_teeth: bool = True, n_shape: int = 300, n_expr: int = 100) -> HeadModelData:
    path = Path(pkl_path)
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise FlameFormatError(f"{path}: file not found") from None
    except OSError as exc:
        raise FlameFormatError(f"{path}: cannot read ({exc.strerror})") from None
    if not payload:
        raise FlameFormatError(f"{path}: file is empty")
    try:
        raw = safe_load(payload)
    except RefusedGlobal as exc:
        raise FlameFormatError(f"{path}: unsafe pickle: {exc}; FLAME files never contain this, so nothing was loaded") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise FlameFormatError(f"{path}: not a readable FLAME pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise FlameFormatError(f"{path}: expected a dict of FLAME arrays, got {type(raw).__name__}")
    arrays = {key: _array(raw, key, path) for key in REQUIRED_KEYS}
    v_template = arrays["v_template"].astype(np.float64)
    V = v_template.shape[0] if v_template.ndim == 2 else -1
    _expect(path, "v_template", v_template, (FLAME_VERTICES, 3))
    faces = arrays["f"].astype(np.int64)
    _expect(path, "f", faces, (FLAME_FACES, 3))
    shapedirs = arrays["shapedirs"].astype(np.float64)
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (V, 3) or shapedirs.shape[2] < 300 + n_expr or n_shape > 300:
        raise FlameFormatError(f"{path}: key 'shapedirs' has shape {shapedirs.shape}; expected ({V}, 3, 400) (300 shape + 100 expression)")
    posedirs = arrays["posedirs"].astype(np.float64)
    _expect(path, "posedirs", posedirs, (V, 3, 36))
    regressor = arrays["J_regressor"].astype(np.float64)
    _expect(path, "J_regressor", regressor, (len(JOINT_NAMES), V))
    weights = arrays["weights"].astype(np.float64)
    _expect(path, "weights", weights, (V, len(JOINT_NAMES)))
    kintree = arrays["kintree_table"].astype(np.int64)
    parents = np.where(kintree[0] >= 2**31, -1, kintree[0]) if kintree.shape == (2, 5) else None
    if parents is None or parents.tolist() != [-1, 0, 1, 1, 1] or kintree[1].tolist() != [0, 1, 2, 3, 4]:
        raise FlameFormatError(f"{path}: key 'kintree_table' is not FLAME's joint tree (global, neck, jaw, eyes)")

    shape_dirs = shapedirs[:, :, :n_shape]
    expr_dirs = shapedirs[:, :, 300:300 + n_expr]
    pose_dirs = posedirs.reshape(-1, 36).T  # (36, V*3), smplx's layout
    parts = np.zeros(FLAME_FACES, dtype=np.int16)
    part_names = ["skin"]
    version = "flame2023" if "2023" in path.name else "flame2020"
    model_id = version
    if add_teeth:
        teeth = _teeth(v_template, shape_dirs)
        v_template = np.concatenate([v_template, teeth.vertices])
        faces = np.concatenate([faces, teeth.faces + V])
        shape_dirs = np.concatenate([shape_dirs, teeth.shape_dirs])
        expr_dirs = np.concatenate([expr_dirs, np.zeros((TEETH_VERTICES, 3, n_expr))])
        pose_dirs = np.concatenate([pose_dirs.reshape(36, V, 3), np.zeros((36, TEETH_VERTICES, 3))], axis=1).reshape(36, -1)
        regressor = np.concatenate([regressor, np.zeros((len(JOINT_NAMES), TEETH_VERTICES))], axis=1)
        weights = np.concatenate([weights, teeth.weights])
        parts = np.concatenate([parts, teeth.parts])
        part_names += ["teeth_upper", "teeth_lower"]
        model_id += "-teeth"
    data = HeadModelData(
        model_id=model_id,
        vertices=v_template.astype(np.float32),
        faces=faces,
        joint_regressor=regressor.astype(np.float32),
        lbs_weights=weights.astype(np.float32),
        shape_dirs=shape_dirs.astype(np.float32),
        shape_names=[f"Shape{i:03d}" for i in range(n_shape)],
        expr_dirs=expr_dirs.astype(np.float32),
        expr_names=[f"Exp{i:03d}" for i in range(n_expr)],
        pose_dirs=pose_dirs.astype(np.float32),
        face_parts=parts,
        part_names=part_names,
        meta={"source": "FLAME", "flame_version": version, "source_sha256": hashlib.sha256(payload).hexdigest(),
              "teeth": "GaussianAvatars layout" if add_teeth else None},
    )
    try:
        data.validate()
    except HeadModelError as exc:
        raise FlameFormatError(f"{path}: {exc}") from None
    return data


def import_flame(pkl_path: str | os.PathLike, out_npz: str | os.PathLike, **options) -> HeadModelData:
    """Convert and write atomically; returns the converted data."""
    data = convert_flame(pkl_path, **options)
    data.save(out_npz)
    return data


def _array(raw: dict, key: str, path: Path) -> np.ndarray:
    if key not in raw:
        raise FlameFormatError(f"{path}: missing key {key!r} (a FLAME model has {', '.join(REQUIRED_KEYS)})")
    value = raw[key]
    if isinstance(value, ChumpyStandIn):
        value = value.value()
    elif isinstance(value, SparseStandIn):
        value = value.dense()
    value = np.asarray(value)
    if value.dtype.kind not in "biuf":
        raise FlameFormatError(f"{path}: key {key!r} is not numeric (dtype {value.dtype})")
    if not np.isfinite(value).all():
        raise FlameFormatError(f"{path}: key {key!r} contains NaN or Inf")
    return value


def _expect(path: Path, key: str, value: np.ndarray, shape: tuple[int, ...]) -> None:
    if value.shape != shape:
        raise FlameFormatError(f"{path}: key {key!r} has shape {value.shape}; expected {shape}")


class _Teeth:
    def __init__(self, vertices, faces, shape_dirs, weights, parts):
        self.vertices, self.faces, self.shape_dirs, self.weights, self.parts = vertices, faces, shape_dirs, weights, parts


def _teeth(v_template: np.ndarray, shape_dirs: np.ndarray) -> _Teeth:
    """GaussianAvatars' teeth: 8 rows of 15 vertices built from the outer lip rings, 168 triangles."""
    upper = v_template[list(LIP_OUTSIDE_RING_UPPER)]
    lower = v_template[list(LIP_OUTSIDE_RING_LOWER)]
    gap = np.linalg.norm(upper - lower, axis=1).mean()
    middle = (upper + lower) / 2
    middle[:, 1] = middle[:, 1].mean()
    middle[:, 2] -= 1.5 * gap
    up, back = np.array([0.0, gap, 0.0]), np.array([0.0, 0.0, gap])
    upper_edge = middle + 0.1 * up
    upper_root = upper_edge + 2 * up
    lower_edge = middle - 0.1 * up - 0.4 * back
    lower_root = lower_edge - 2 * up
    rows = [upper_root, lower_root, upper_edge, lower_edge,
            upper_root - back, upper_edge - back, lower_root - back, lower_edge - back]  # thickness = gap
    vertices = np.concatenate(rows)
    r = {name: np.arange(15) + 15 * i for i, name in enumerate(
        ["upper_root", "lower_root", "upper_edge", "lower_edge", "upper_root_back", "upper_edge_back", "lower_root_back", "lower_edge_back"])}
    strips = [  # (row A, row B, diagonal before the middle column, after it, flip winding)
        ("upper_root", "upper_edge", "P", "Q", False),
        ("upper_root_back", "upper_edge_back", "P", "Q", True),
        ("upper_edge_back", "upper_edge", "Q", "P", True),
        ("lower_edge", "lower_root", "Q", "P", False),
        ("lower_root_back", "lower_edge_back", "P", "Q", False),
        ("lower_edge_back", "lower_edge", "Q", "P", False),
    ]
    faces = np.concatenate([_strip(r[a], r[b], first, second, flip) for a, b, first, second, flip in strips])
    upper_ids = np.concatenate([r["upper_root"], r["upper_edge"], r["upper_root_back"], r["upper_edge_back"]])
    lower_ids = np.concatenate([r["lower_root"], r["lower_edge"], r["lower_root_back"], r["lower_edge_back"]])
    weights = np.zeros((TEETH_VERTICES, len(JOINT_NAMES)))
    weights[upper_ids, JOINT_NAMES.index("neck")] = 1.0
    weights[lower_ids, JOINT_NAMES.index("jaw")] = 1.0
    lip_shape = (shape_dirs[list(LIP_OUTSIDE_RING_UPPER)] + shape_dirs[list(LIP_OUTSIDE_RING_LOWER)]) / 2
    teeth_shape = np.concatenate([lip_shape] * 8)
    parts = np.array([1] * (TEETH_FACES // 2) + [2] * (TEETH_FACES // 2), dtype=np.int16)
    return _Teeth(vertices, faces, teeth_shape, weights, parts)


def _strip(a: np.ndarray, b: np.ndarray, first: str, second: str, flip: bool) -> np.ndarray:
    """Two triangles per quad between rows a and b; the diagonal turns at the middle column (7)."""
    tris = []
    for i in range(len(a) - 1):
        kind = first if i < 7 else second
        if kind == "P":
            quad = [(a[i], b[i + 1], b[i]), (a[i], a[i + 1], b[i + 1])]
        else:
            quad = [(a[i], a[i + 1], b[i]), (a[i + 1], b[i + 1], b[i])]
        tris += [(t[0], t[2], t[1]) if flip else t for t in quad]
    return np.array(tris, dtype=np.int64)
