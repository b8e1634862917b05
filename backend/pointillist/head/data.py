"""The head model as plain arrays: one schema for our procedural head and for converted FLAME files.

A head model is data (template, bases, weights) plus a small deformation function (`lbs.py`).
Keeping the data in one `.npz` schema means the procedural template, a converted FLAME file and
the Blender add-on all read the same thing, and loading never needs pickle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..atomic import atomic_write

#: Joint order shared by every head model (FLAME's: global, neck, jaw, eyes).
JOINT_NAMES: tuple[str, ...] = ("root", "neck", "jaw", "left_eye", "right_eye")
#: Parent of each joint in `JOINT_NAMES` (-1 = none).
JOINT_PARENTS: tuple[int, ...] = (-1, 0, 1, 1, 1)

SCHEMA_VERSION = 1


class HeadModelError(ValueError):
    """A head-model file is missing, malformed or inconsistent; the message names the field."""


@dataclass
class HeadModelData:
    """Arrays that define a head model. Shapes: V vertices, F triangles, S shape, E expression.

    `faces` is also the binding vocabulary: a Gaussian binds to a row of it. Joint locations are
    regressed from the *identity-shaped* vertices only (`joint_regressor @ (template + shape)`), so a
    fixed Blender armature built from one identity is exact under any expression.
    """

    model_id: str
    vertices: np.ndarray  # (V, 3) float32, neutral template in head space (metres, +Y up, +Z front)
    faces: np.ndarray  # (F, 3) int64
    joint_regressor: np.ndarray  # (5, V) float32, rows sum to 1
    lbs_weights: np.ndarray  # (V, 5) float32, rows sum to 1
    shape_dirs: np.ndarray  # (V, 3, S) float32
    shape_names: list[str]
    expr_dirs: np.ndarray  # (V, 3, E) float32
    expr_names: list[str]
    pose_dirs: np.ndarray | None = None  # (36, V*3) float32: FLAME pose correctives, or None
    #: Optional per-vertex region label (index into `region_names`); used for locality checks,
    #: landmark fitting weights and synthesis (skin vs scalp vs lips...).
    vertex_regions: np.ndarray | None = None  # (V,) int16
    region_names: list[str] = field(default_factory=list)
    #: Optional per-face part label (index into `part_names`): skin, eyeball, teeth, mouth...
    face_parts: np.ndarray | None = None  # (F,) int16
    part_names: list[str] = field(default_factory=list)
    #: Optional MediaPipe 478-landmark correspondence: triangle index + barycentrics per landmark.
    landmark_faces: np.ndarray | None = None  # (L,) int64
    landmark_barycentrics: np.ndarray | None = None  # (L, 3) float32
    #: Optional UV coordinates per vertex for procedural textures.
    uvs: np.ndarray | None = None  # (V, 2) float32
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shape_dirs.shape[2])

    @property
    def num_expr(self) -> int:
        return int(self.expr_dirs.shape[2])

    def expression_index(self, name: str) -> int:
        try:
            return self.expr_names.index(name)
        except ValueError:
            raise KeyError(f"unknown expression {name!r}; this head model has: {', '.join(self.expr_names)}") from None

    def region_mask(self, name: str) -> np.ndarray:
        """Boolean (V,) mask of vertices labelled `name`."""
        if self.vertex_regions is None or name not in self.region_names:
            raise KeyError(f"head model {self.model_id!r} has no vertex region {name!r}")
        return self.vertex_regions == self.region_names.index(name)

    def part_mask(self, name: str) -> np.ndarray:
        """Boolean (F,) mask of faces labelled `name`."""
        if self.face_parts is None or name not in self.part_names:
            raise KeyError(f"head model {self.model_id!r} has no face part {name!r}")
        return self.face_parts == self.part_names.index(name)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise `HeadModelError` naming the first inconsistent field."""
        V = self.num_vertices
        _check(self.vertices.ndim == 2 and self.vertices.shape[1] == 3, "vertices", "must be (V, 3)")
        _check(self.faces.ndim == 2 and self.faces.shape[1] == 3, "faces", "must be (F, 3)")
        _check(self.faces.size == 0 or (self.faces.min() >= 0 and self.faces.max() < V), "faces", "index out of range")
        _check(self.joint_regressor.shape == (len(JOINT_NAMES), V), "joint_regressor", f"must be (5, {V})")
        _check(self.lbs_weights.shape == (V, len(JOINT_NAMES)), "lbs_weights", f"must be ({V}, 5)")
        _check(self.shape_dirs.ndim == 3 and self.shape_dirs.shape[:2] == (V, 3), "shape_dirs", f"must be ({V}, 3, S)")
        _check(self.expr_dirs.ndim == 3 and self.expr_dirs.shape[:2] == (V, 3), "expr_dirs", f"must be ({V}, 3, E)")
        _check(len(self.shape_names) == self.num_shape, "shape_names", "length must equal shape_dirs.shape[2]")
        _check(len(self.expr_names) == self.num_expr, "expr_names", "length must equal expr_dirs.shape[2]")
        _check(len(set(self.expr_names)) == len(self.expr_names), "expr_names", "names must be unique")
        if self.pose_dirs is not None:
            _check(self.pose_dirs.shape == ((len(JOINT_NAMES) - 1) * 9, V * 3), "pose_dirs", f"must be (36, {V * 3})")
        if self.vertex_regions is not None:
            _check(self.vertex_regions.shape == (V,), "vertex_regions", f"must be ({V},)")
        if self.face_parts is not None:
            _check(self.face_parts.shape == (self.num_faces,), "face_parts", f"must be ({self.num_faces},)")
        if self.landmark_faces is not None:
            lb = self.landmark_barycentrics
            _check(lb is not None and lb.shape == (len(self.landmark_faces), 3), "landmark_barycentrics", "must be (L, 3)")
            _check(bool(np.all((self.landmark_faces >= 0) & (self.landmark_faces < self.num_faces))), "landmark_faces", "index out of range")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                _check(bool(np.isfinite(value).all()), f.name, "contains NaN or Inf")
        _check(bool(np.allclose(self.lbs_weights.sum(1), 1.0, atol=1e-4)), "lbs_weights", "rows must sum to 1")
        _check(bool(np.allclose(self.joint_regressor.sum(1), 1.0, atol=1e-4)), "joint_regressor", "rows must sum to 1")

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> None:
        """Write a pickle-free `.npz` atomically (temp file, fsync, then `os.replace`)."""
        self.validate()
        arrays: dict[str, np.ndarray] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                arrays[f.name] = value
        header = {
            "schema_version": SCHEMA_VERSION,
            "model_id": self.model_id,
            "shape_names": list(self.shape_names),
            "expr_names": list(self.expr_names),
            "region_names": list(self.region_names),
            "part_names": list(self.part_names),
            "joint_names": list(JOINT_NAMES),
            "joint_parents": list(JOINT_PARENTS),
            "meta": self.meta,
        }
        arrays["header_json"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadModelData":
        """Load a head-model `.npz` without ever unpickling (`allow_pickle=False`)."""
        path = Path(path)
        if not path.is_file():
            raise HeadModelError(f"head model file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:  # zipfile.BadZipFile, ValueError (object arrays), OSError...
            raise HeadModelError(f"{path}: not a readable head-model .npz ({exc})") from exc
        if "header_json" not in arrays:
            raise HeadModelError(f"{path}: missing field 'header_json' (not a Pointillist head model)")
        try:
            header = json.loads(arrays.pop("header_json").tobytes().decode("utf-8"))
        except ValueError as exc:
            raise HeadModelError(f"{path}: field 'header_json' is not valid JSON") from exc
        if header.get("schema_version") != SCHEMA_VERSION:
            raise HeadModelError(f"{path}: unsupported schema_version {header.get('schema_version')!r} (expected {SCHEMA_VERSION})")
        if tuple(header.get("joint_names", ())) != JOINT_NAMES:
            raise HeadModelError(f"{path}: field 'joint_names' must be {list(JOINT_NAMES)}")
        required = ("vertices", "faces", "joint_regressor", "lbs_weights", "shape_dirs", "expr_dirs")
        for name in required:
            if name not in arrays:
                raise HeadModelError(f"{path}: missing field {name!r}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in arrays.items() if k in known}
        for k in ("vertices", "joint_regressor", "lbs_weights", "shape_dirs", "expr_dirs", "pose_dirs",
                  "landmark_barycentrics", "uvs"):
            if k in kwargs:
                kwargs[k] = kwargs[k].astype(np.float32, copy=False)
        for k in ("faces", "landmark_faces"):
            if k in kwargs:
                kwargs[k] = kwargs[k].astype(np.int64, copy=False)
        data = cls(
            model_id=str(header["model_id"]),
            shape_names=list(header.get("shape_names", [])),
            expr_names=list(header.get("expr_names", [])),
            region_names=list(header.get("region_names", [])),
            part_names=list(header.get("part_names", [])),
            meta=dict(header.get("meta", {})),
            **kwargs,
        )
        try:
            data.validate()
        except HeadModelError as exc:
            raise HeadModelError(f"{path}: {exc}") from None
        return data


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise HeadModelError(f"field {name!r}: {message}")
