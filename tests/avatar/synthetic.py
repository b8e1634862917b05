"""Small synthetic avatars and head models for the avatar-format tests (numpy only; torch where a HeadModel is built)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from pointillist.avatar.binding import closest_point_barycentrics
from pointillist.avatar.gaussians import Avatar, Binding, Gaussians, HeadIdentity, SourceInfo
from pointillist.head.data import JOINT_NAMES, HeadModelData

SH_REST = {0: 0, 1: 3, 2: 8, 3: 15}
INRIA_BASE = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
INRIA_TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def make_gaussians(n: int, sh_degree: int = 3, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    return Gaussians(means=f32(n, 3) * 0.1, log_scales=f32(n, 3) - 6, quats=f32(n, 4), opacity_logits=f32(n),
                     sh_dc=f32(n, 3), sh_rest=f32(n, SH_REST[sh_degree], 3) * 0.1)


def make_avatar(n: int = 300, sh_degree: int = 3, seed: int = 0, with_source: bool = True,
                num_faces: int = 1000, num_vertices: int = 50) -> Avatar:
    """A random but valid avatar: every field filled, values that exercise float32 exactly."""
    rng = np.random.default_rng(seed + 100)
    bary = rng.dirichlet(np.ones(3), n).astype(np.float32)
    source = None
    if with_source:
        source = SourceInfo(
            image=rng.integers(0, 256, (32, 24, 3), dtype=np.uint8),
            matte=rng.integers(0, 256, (32, 24), dtype=np.uint8),
            camera={"viewmat": np.eye(4).tolist(), "K": [[500.0, 0.0, 12.0], [0.0, 500.0, 16.0], [0.0, 0.0, 1.0]],
                    "width": 24, "height": 32},
            expression=rng.normal(size=10).astype(np.float32),
            pose=rng.normal(size=(5, 3)).astype(np.float32),
        )
    return Avatar(
        gaussians=make_gaussians(n, sh_degree, seed),
        binding=Binding(triangles=rng.integers(0, num_faces, n).astype(np.int64), barycentrics=bary),
        identity=HeadIdentity(model_id="test-head", shape=rng.normal(size=20).astype(np.float32),
                              vertex_offsets=(rng.normal(size=(num_vertices, 3)) * 1e-3).astype(np.float32)),
        source=source,
        meta={"seed": seed, "model_version": "test-0.1", "creation_options": {"quality": "draft", "refine_steps": 0},
              "source_sha256": "ab" * 32, "notes": ["a", 1, None]},
    )


def write_inria_ply(path: Path, n: int, sh_rest_props: int = 9, extra: dict[str, np.ndarray] | None = None,
                    drop: str | None = None, text: bool = False, byte_order: str = "<", normals: bool = True) -> dict[str, np.ndarray]:
    """A minimal Inria-style writer that shares no code with ours (structured array + plyfile)."""
    rng = np.random.default_rng(1)
    names = INRIA_BASE + [f"f_rest_{i}" for i in range(sh_rest_props)] + INRIA_TAIL
    names = [p for p in names if p != drop and (normals or p not in ("nx", "ny", "nz"))]
    fields = [(p, "f4") for p in names] + [(k, v.dtype.str) for k, v in (extra or {}).items()]
    rows = np.zeros(n, dtype=fields)
    for p in names:
        rows[p] = rng.normal(size=n)
    for k, v in (extra or {}).items():
        rows[k] = v
    PlyData([PlyElement.describe(rows, "vertex")], text=text, byte_order=byte_order).write(str(path))
    return {p: rows[p] for p in rows.dtype.names}


# ---------------------------------------------------------------------------------------- head model
def icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: 12 -> 42 -> 162 -> 642 vertices."""
    t = (1 + 5 ** 0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6),
             (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10),
             (8, 6, 7), (9, 8, 1)]
    v = [np.array(p, float) / np.linalg.norm(p) for p in verts]
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = v[a] + v[b]
                v.append(m / np.linalg.norm(m))
                cache[key] = len(v) - 1
            return cache[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    return np.array(v), np.array(faces, dtype=np.int64)


def make_head_data(seed: int = 0, subdivisions: int = 3, n_shape: int = 12, n_expr: int = 6) -> HeadModelData:
    """A random-but-valid head model on an ellipsoidal icosphere (642 vertices, 1280 triangles)."""
    rng = np.random.default_rng(seed)
    unit, faces = icosphere(subdivisions)
    verts = unit * np.array([0.075, 0.1, 0.09]) + rng.normal(0, 0.002, unit.shape)
    V = len(verts)
    J = len(JOINT_NAMES)
    regressor = rng.random((J, V)) * (rng.random((J, V)) < 0.05)
    regressor[:, 0] += 1e-3
    weights = rng.random((V, J)) ** 3
    return HeadModelData(
        model_id=f"synthetic-ico-{seed}",
        vertices=verts.astype(np.float32),
        faces=faces,
        joint_regressor=(regressor / regressor.sum(1, keepdims=True)).astype(np.float32),
        lbs_weights=(weights / weights.sum(1, keepdims=True)).astype(np.float32),
        shape_dirs=rng.normal(0, 0.003, (V, 3, n_shape)).astype(np.float32),
        shape_names=[f"shape{i:03d}" for i in range(n_shape)],
        expr_dirs=rng.normal(0, 0.002, (V, 3, n_expr)).astype(np.float32),
        expr_names=[f"expr{i:03d}" for i in range(n_expr)],
    )


def make_bound_avatar(head, n: int = 400, seed: int = 4, with_offsets: bool = True) -> Avatar:
    """Gaussians scattered near the identity mesh of a torch `HeadModel`, bound with exact barycentrics."""
    import torch

    rng = np.random.default_rng(seed)
    shape = (rng.normal(size=head.num_shape) * 0.8).astype(np.float32)
    offsets = rng.normal(0, 0.001, (head.num_vertices, 3)).astype(np.float32) if with_offsets else None
    with torch.no_grad():
        verts = head.identity_vertices(torch.as_tensor(shape)[None],
                                       None if offsets is None else torch.as_tensor(offsets)[None])[0].double().numpy()
    tri = rng.integers(0, head.num_faces, n)
    corners = verts[head.data.faces[tri]]
    means = np.einsum("nk,nkc->nc", rng.dirichlet(np.ones(3), n), corners) + rng.normal(0, 0.002, (n, 3))
    g = make_gaussians(n, sh_degree=1, seed=seed)
    g.means = means.astype(np.float32)
    return Avatar(gaussians=g,
                  binding=Binding(tri.astype(np.int64), closest_point_barycentrics(g.means, corners).astype(np.float32)),
                  identity=HeadIdentity(head.model_id, shape, offsets), meta={"seed": seed})
