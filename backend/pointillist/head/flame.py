"""Convert a FLAME model file (2020 / 2023 `.pkl`) into our head-model `.npz`, once.

Licence: FLAME is free for research but its files may only be downloaded after registering at
https://flame.is.tue.mpg.de and accepting its licence. Pointillist therefore never ships, bundles or
downloads a FLAME file. A user who has `generic_model.pkl` (FLAME 2020) or `flame2023.pkl` converts it
once on their own machine:

    pointillist head import-flame generic_model.pkl -o flame.npz

and from then on everything loads the `.npz` with `np.load(..., allow_pickle=False)`. The `.npz` is a
derived copy of the FLAME model and falls under FLAME's licence like the original: keep it private.

Reading the pickle: FLAME files are Python 2 pickles whose arrays sit in chumpy objects (`v_template`,
`shapedirs`, `posedirs`, `J`, `weights`), with a scipy sparse `J_regressor` and numpy `f`/`kintree_table`.
They are read by `safe_unpickle`, an allow-list unpickler that executes nothing and needs neither chumpy
nor scipy; any other global in the file is refused with `FlameFormatError` naming it.

Mapping: shape_dirs = shapedirs[..., :n_shape], expr_dirs = shapedirs[..., 300:300+n_expr] (FLAME stores
300 identity then 100 expression components), pose_dirs = posedirs.reshape(-1, 36).T (smplx's layout:
row 9*(j-1)+3*r+c multiplies (R_j - I)[r, c]), joint_regressor = J_regressor densified, lbs_weights =
weights. Joints are FLAME's: global, neck, jaw, left eye, right eye.

Teeth (`add_teeth=True`): the converter appends the teeth GaussianAvatars' `FlameHead.add_teeth`
(flame_model/flame.py in ShenhanQian/GaussianAvatars) adds: 120 vertices after FLAME's 5,023 and
168 triangles after FLAME's 9,976, in the same vertex order, triangle order and winding (verified
triangle by triangle against that file), because that order is what a GaussianAvatars `binding_0`
indexes. The construction is reimplemented here from its description:

* two rings of 15 FLAME vertices on the outside of the upper and lower lip (ids below, left to right)
  give a middle curve (their mean, flattened to the mean height, pushed back by 1.5x the mean lip gap d);
* eight rows of 15 vertices: upper root, lower root, upper edge, lower edge, upper root back, upper
  edge back, lower root back, lower edge back. Edges sit 0.1 d above/below the middle (the lower edge
  also 0.4 d further back), roots 2 d beyond the edges, and back rows d behind their front rows;
* triangles: upper front, upper back, upper biting edge (84), then the same three for the lower teeth;
* identity shape: the mean of the two lip rings' shape directions; no expression directions, no pose
  correctives, no weight in the joint regressor; upper teeth skin to the neck joint, lower to the jaw.

GaussianAvatars also gives the teeth UVs in FLAME's texture atlas; our schema's `uvs` are per vertex
and FLAME's UVs live in a separate `.obj`, so no UVs are stored. FLAME's eyeball faces are not labelled
(the `skin` part is everything that is not teeth).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import JOINT_NAMES, HeadModelData, HeadModelError
from .safe_unpickle import ChumpyStandIn, RefusedGlobal, SparseStandIn, StandInError, safe_load

__all__ = ["FlameFormatError", "convert_flame", "import_flame"]

FLAME_VERTICES = 5023
FLAME_FACES = 9976
FLAME_SHAPE = 300  # identity components first in `shapedirs`, then expression components
TEETH_VERTICES = 120
TEETH_FACES = 168
#: FLAME's outer lip rings, left to right (GaussianAvatars' `lip_outside_ring_upper/lower` masks).
LIP_OUTSIDE_RING_UPPER = (1713, 1715, 1716, 1735, 1696, 1694, 1657, 3543, 2774, 2811, 2813, 2850, 2833, 2832, 2830)
LIP_OUTSIDE_RING_LOWER = (1576, 1577, 1773, 1774, 1795, 1802, 1865, 3503, 2948, 2905, 2898, 2881, 2880, 2713, 2712)
#: The eight rows of 15 teeth vertices, in GaussianAvatars' vertex order.
TEETH_ROWS = ("upper_root", "lower_root", "upper_edge", "lower_edge",
              "upper_root_back", "upper_edge_back", "lower_root_back", "lower_edge_back")
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
PART_NAMES = ["skin", "teeth_upper", "teeth_lower"]


class FlameFormatError(HeadModelError):
    """The FLAME file is missing, unreadable, unsafe or not a FLAME model; the message says which."""


def convert_flame(pkl_path: str | os.PathLike, *, add_teeth: bool = True, n_shape: int = 300, n_expr: int = 100) -> HeadModelData:
    """Read a FLAME `.pkl` safely and return it as `HeadModelData` (optionally with GaussianAvatars' teeth)."""
    if not 0 <= n_shape <= FLAME_SHAPE:
        raise ValueError(f"n_shape must be in 0..{FLAME_SHAPE}, got {n_shape}")
    if n_expr < 0:
        raise ValueError(f"n_expr must be >= 0, got {n_expr}")
    path = Path(pkl_path)
    payload = _read(path)
    raw = _unpickle(path, payload)
    arrays = {key: _array(raw, key, path) for key in REQUIRED_KEYS}
    _check_blend_style(raw, path)

    v_template = arrays["v_template"].astype(np.float64)
    _expect(path, "v_template", v_template, (FLAME_VERTICES, 3))
    V = FLAME_VERTICES
    faces = arrays["f"]
    _expect(path, "f", faces, (FLAME_FACES, 3))
    if faces.dtype.kind not in "iu" or faces.min() < 0 or faces.max() >= V:
        raise FlameFormatError(f"{path}: key 'f' must hold vertex indices in 0..{V - 1}")
    faces = faces.astype(np.int64)
    shapedirs = arrays["shapedirs"]
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (V, 3) or shapedirs.shape[2] < FLAME_SHAPE:
        raise FlameFormatError(f"{path}: key 'shapedirs' has shape {shapedirs.shape}; expected ({V}, 3, 400) "
                               f"({FLAME_SHAPE} shape + 100 expression components)")
    available_expr = shapedirs.shape[2] - FLAME_SHAPE
    if n_expr > available_expr:
        raise FlameFormatError(f"{path}: key 'shapedirs' holds {available_expr} expression components; n_expr={n_expr} requested")
    posedirs = arrays["posedirs"]
    _expect(path, "posedirs", posedirs, (V, 3, 36))
    regressor = arrays["J_regressor"].astype(np.float64)
    _expect(path, "J_regressor", regressor, (len(JOINT_NAMES), V))
    weights = arrays["weights"].astype(np.float64)
    _expect(path, "weights", weights, (V, len(JOINT_NAMES)))
    _check_kintree(arrays["kintree_table"], path)

    shape_dirs = shapedirs[:, :, :n_shape].astype(np.float64)
    expr_dirs = shapedirs[:, :, FLAME_SHAPE:FLAME_SHAPE + n_expr].astype(np.float64)
    pose_dirs = posedirs.reshape(-1, 36).T.astype(np.float64)  # (36, V*3)
    face_parts = np.zeros(FLAME_FACES, dtype=np.int16)
    vertex_regions = np.zeros(V, dtype=np.int16)
    version, basis = _guess_version(path)
    model_id = version
    if add_teeth:
        teeth = gaussian_avatars_teeth(v_template, shape_dirs)
        v_template = np.concatenate([v_template, teeth.vertices])
        faces = np.concatenate([faces, teeth.faces + V])
        shape_dirs = np.concatenate([shape_dirs, teeth.shape_dirs])
        expr_dirs = np.concatenate([expr_dirs, np.zeros((TEETH_VERTICES, 3, n_expr))])
        pose_dirs = np.concatenate([pose_dirs.reshape(36, V, 3), np.zeros((36, TEETH_VERTICES, 3))], axis=1).reshape(36, -1)
        regressor = np.concatenate([regressor, np.zeros((len(JOINT_NAMES), TEETH_VERTICES))], axis=1)
        weights = np.concatenate([weights, teeth.lbs_weights])
        face_parts = np.concatenate([face_parts, teeth.face_parts])
        vertex_regions = np.concatenate([vertex_regions, teeth.vertex_regions])
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
        vertex_regions=vertex_regions,
        region_names=list(PART_NAMES),
        face_parts=face_parts,
        part_names=list(PART_NAMES),
        meta={
            "source": "FLAME",
            "source_file": path.name,
            "source_sha256": hashlib.sha256(payload).hexdigest(),
            "flame_version": version,
            "flame_version_basis": basis,
            "teeth": "GaussianAvatars add_teeth layout (faces 9976..10143)" if add_teeth else None,
            "licence": "derived from FLAME: see https://flame.is.tue.mpg.de; do not redistribute",
        },
    )
    try:
        data.validate()
    except HeadModelError as exc:
        raise FlameFormatError(f"{path}: {exc}") from None
    return data


def import_flame(pkl_path: str | os.PathLike, out_npz: str | os.PathLike, *, add_teeth: bool = True,
                 n_shape: int = 300, n_expr: int = 100, landmarks: bool = False) -> HeadModelData:
    """Convert a FLAME `.pkl` and write it atomically as a head-model `.npz`; prints nothing, returns the data.

    With `landmarks` the MediaPipe landmark mapping is measured on the converted mesh and stored in the
    same file (`landmark_calibration.py`; ~10 s), which `pointillist fit` needs.
    """
    data = convert_flame(pkl_path, add_teeth=add_teeth, n_shape=n_shape, n_expr=n_expr)
    if landmarks:
        from .landmark_calibration import with_calibrated_landmarks

        data, _ = with_calibrated_landmarks(data)
    data.save(out_npz)
    return data


# ---------------------------------------------------------------------------------------- reading
def _read(path: Path) -> bytes:
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise FlameFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise FlameFormatError(f"{path}: is a directory, not a FLAME .pkl file") from None
    except OSError as exc:
        raise FlameFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not payload:
        raise FlameFormatError(f"{path}: file is empty (0 bytes), not a FLAME .pkl file")
    return payload


def _unpickle(path: Path, payload: bytes) -> dict:
    # Every pickle that can hold a dict starts with PROTO (protocol 2+), MARK, EMPTY_DICT or a global.
    if payload[:1] not in (b"\x80", b"(", b"}", b"c"):
        hint = " (it looks like a zip/.npz; already converted?)" if payload[:2] == b"PK" else ""
        raise FlameFormatError(f"{path}: not a pickle file{hint} (starts with {payload[:8]!r})")
    try:
        raw = safe_load(payload)
    except RefusedGlobal as exc:
        raise FlameFormatError(f"{path}: unsafe pickle: {exc}; a FLAME file never contains this, so nothing was loaded") from None
    except EOFError:
        raise FlameFormatError(f"{path}: file is truncated (the pickle ends early); download it again") from None
    except MemoryError:
        raise FlameFormatError(f"{path}: not a readable FLAME pickle (it asks for more memory than available)") from None
    except RecursionError:
        raise FlameFormatError(f"{path}: not a readable FLAME pickle (nested too deeply)") from None
    except Exception as exc:  # UnpicklingError, ValueError, TypeError...: nothing outside the allow-list ran
        message = str(exc)
        if "truncated" in message:
            raise FlameFormatError(f"{path}: file is truncated ({message}); download it again") from None
        if "invalid load key" in message:
            hint = " (it looks like a zip/.npz; already converted?)" if payload[:2] == b"PK" else ""
            raise FlameFormatError(f"{path}: not a pickle file{hint} ({message})") from None
        raise FlameFormatError(f"{path}: not a readable FLAME pickle ({type(exc).__name__}: {message})") from None
    if not isinstance(raw, dict):
        raise FlameFormatError(f"{path}: expected a dict of FLAME arrays, got {type(raw).__name__}")
    return raw


def _array(raw: dict, key: str, path: Path) -> np.ndarray:
    if key not in raw:
        raise FlameFormatError(f"{path}: missing key {key!r} (a FLAME model has {', '.join(REQUIRED_KEYS)})")
    value = raw[key]
    try:
        if isinstance(value, ChumpyStandIn):
            value = value.value()
        elif isinstance(value, SparseStandIn):
            value = value.dense()
    except StandInError as exc:
        raise FlameFormatError(f"{path}: key {key!r} is {exc}") from None
    if not isinstance(value, np.ndarray):
        raise FlameFormatError(f"{path}: key {key!r} is a {type(value).__name__}, not an array")
    if value.dtype.kind not in "biuf":
        raise FlameFormatError(f"{path}: key {key!r} is not numeric (dtype {value.dtype})")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise FlameFormatError(f"{path}: key {key!r} contains NaN or Inf")
    return value


def _expect(path: Path, key: str, value: np.ndarray, shape: tuple[int, ...]) -> None:
    if value.shape != shape:
        raise FlameFormatError(f"{path}: key {key!r} has shape {value.shape}; expected {shape}")


def _check_kintree(kintree: np.ndarray, path: Path) -> None:
    ok = kintree.shape == (2, 5)
    if ok:
        k = kintree.astype(np.int64)
        parents = np.where((k[0] == 2**32 - 1) | (k[0] == -1), -1, k[0])
        ok = parents.tolist() == [-1, 0, 1, 1, 1] and k[1].tolist() == [0, 1, 2, 3, 4]
    if not ok:
        raise FlameFormatError(f"{path}: key 'kintree_table' is not FLAME's joint tree "
                               f"[[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]] (global, neck, jaw, eyes): got {kintree.tolist()}")


def _check_blend_style(raw: dict, path: Path) -> None:
    for key, expected in (("bs_style", "lbs"), ("bs_type", "lrotmin")):
        value = raw.get(key, expected)
        if isinstance(value, bytes):
            value = value.decode("latin1")
        if value != expected:
            raise FlameFormatError(f"{path}: key {key!r} is {value!r}; only FLAME's {expected!r} is supported")


def _guess_version(path: Path) -> tuple[str, str]:
    """FLAME version from the file or folder name; `generic_model.pkl` alone is assumed to be FLAME 2020."""
    for text in (path.name, path.parent.name):
        m = re.search(r"flame[ _-]?(2017|2019|2020|2023)", text.lower())
        if m:
            return f"flame{m.group(1)}", f"name {text!r}"
    return "flame2020", "assumed (generic_model.pkl ships with FLAME 2017/2019/2020; 2020 is current)"


# ---------------------------------------------------------------------------------------- teeth
@dataclass
class Teeth:
    vertices: np.ndarray  # (120, 3)
    faces: np.ndarray  # (168, 3) local vertex ids 0..119
    shape_dirs: np.ndarray  # (120, 3, S)
    lbs_weights: np.ndarray  # (120, 5)
    face_parts: np.ndarray  # (168,) 1 = teeth_upper, 2 = teeth_lower
    vertex_regions: np.ndarray  # (120,)


def gaussian_avatars_teeth(v_template: np.ndarray, shape_dirs: np.ndarray) -> Teeth:
    """The teeth GaussianAvatars adds to FLAME, built from FLAME's template and identity directions."""
    upper_lip = v_template[list(LIP_OUTSIDE_RING_UPPER)]
    lower_lip = v_template[list(LIP_OUTSIDE_RING_LOWER)]
    d = np.linalg.norm(upper_lip - lower_lip, axis=1).mean()  # mean lip gap: the unit of every offset
    up, back = np.array([0.0, d, 0.0]), np.array([0.0, 0.0, d])
    middle = (upper_lip + lower_lip) / 2
    middle[:, 1] = middle[:, 1].mean()
    middle = middle - 1.5 * back
    rows = {"upper_edge": middle + 0.1 * up, "lower_edge": middle - 0.1 * up - 0.4 * back}
    rows["upper_root"] = rows["upper_edge"] + 2 * up
    rows["lower_root"] = rows["lower_edge"] - 2 * up
    for name in ("upper_root", "upper_edge", "lower_root", "lower_edge"):
        rows[f"{name}_back"] = rows[name] - back
    vertices = np.concatenate([rows[name] for name in TEETH_ROWS])
    r = {name: 15 * i + np.arange(15) for i, name in enumerate(TEETH_ROWS)}

    # Six strips of 28 triangles. Each strip joins two rows quad by quad; the quad diagonal flips at the
    # middle column (7) so the strip is symmetric, and the winding keeps normals pointing out of the tooth.
    strips = [  # row a, row b, diagonal left of the middle, right of it, reversed winding
        ("upper_root", "upper_edge", "down", "up", False),  # upper front
        ("upper_root_back", "upper_edge_back", "down", "up", True),  # upper back
        ("upper_edge_back", "upper_edge", "up", "down", True),  # upper biting edge
        ("lower_edge", "lower_root", "up", "down", False),  # lower front
        ("lower_root_back", "lower_edge_back", "down", "up", False),  # lower back
        ("lower_edge_back", "lower_edge", "up", "down", False),  # lower biting edge
    ]
    faces = np.concatenate([_strip(r[a], r[b], left, right, flip) for a, b, left, right, flip in strips])

    upper_ids = np.concatenate([r[n] for n in TEETH_ROWS if n.startswith("upper")])
    lower_ids = np.concatenate([r[n] for n in TEETH_ROWS if n.startswith("lower")])
    lbs_weights = np.zeros((TEETH_VERTICES, len(JOINT_NAMES)))
    lbs_weights[upper_ids, JOINT_NAMES.index("neck")] = 1.0
    lbs_weights[lower_ids, JOINT_NAMES.index("jaw")] = 1.0
    lip_shape = (shape_dirs[list(LIP_OUTSIDE_RING_UPPER)] + shape_dirs[list(LIP_OUTSIDE_RING_LOWER)]) / 2
    vertex_regions = np.zeros(TEETH_VERTICES, dtype=np.int16)
    vertex_regions[upper_ids] = PART_NAMES.index("teeth_upper")
    vertex_regions[lower_ids] = PART_NAMES.index("teeth_lower")
    face_parts = np.repeat(np.array([PART_NAMES.index("teeth_upper"), PART_NAMES.index("teeth_lower")], dtype=np.int16), TEETH_FACES // 2)
    return Teeth(vertices, faces, np.tile(lip_shape, (len(TEETH_ROWS), 1, 1)), lbs_weights, face_parts, vertex_regions)


def _strip(a: np.ndarray, b: np.ndarray, left: str, right: str, flip: bool) -> np.ndarray:
    """Two triangles per quad (a[i], a[i+1], b[i+1], b[i]); `down` splits it a[i]-b[i+1], `up` a[i+1]-b[i]."""
    tris = []
    for i in range(len(a) - 1):
        if (left if i < 7 else right) == "down":
            quad = [(a[i], b[i + 1], b[i]), (a[i], a[i + 1], b[i + 1])]
        else:
            quad = [(a[i], a[i + 1], b[i]), (a[i + 1], b[i + 1], b[i])]
        tris += [(t[0], t[2], t[1]) if flip else t for t in quad]
    return np.array(tris, dtype=np.int64)
