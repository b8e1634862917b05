"""GaussianAvatars (Qian et al., CVPR 2024) format <-> our canonical avatar.

GaussianAvatars (GA) saves `point_cloud.ply` + `flame_param.npz` side by side. The PLY is Inria's layout
plus a float `binding_0`, and every Gaussian is stored in its bound triangle's local frame. With the frame
(centre c, rotation R, scale s) of that triangle on a mesh (`binding.triangle_frames`), GA's
`FlameGaussianModel` poses a Gaussian as

    xyz   = R @ xyz_local * s + c                       (get_xyz: bmm(R, xyz) * s + c)
    scale = exp(log_scale_local) * s                    (get_scaling)
    rot   = quat(R) ⊗ normalize(rot_local)              (get_rotation, w-first Hamilton product)

`flame_param.npz` holds FLAME `shape` (300,), per-timestep `expr` (T, 100), `rotation`, `neck_pose`,
`jaw_pose` (T, 3), `eyes_pose` (T, 6), `translation` (T, 3), `static_offset` (1, V, 3) and
`dynamic_offset` (T, V, 3). Our canonical form is the identity's neutral mesh: template + shape +
static_offset with zero expression and pose, which is exactly GA's FLAME `v_shaped` at rest.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..head.lbs import matrix_to_quaternion, quaternion_multiply
from ..head.model import HeadModel
from .binding import closest_point_barycentrics, triangle_frames
from .gaussians import Avatar, AvatarFormatError, Binding, Gaussians, HeadIdentity, validate_avatar
from .ply import atomic_write_files, read_gaussian_ply, vertex_rows, write_ply_rows

#: GA's FlameGaussianModel defaults (n_shape=300, n_expr=100); its FLAME forward needs exactly these widths.
GA_SHAPE_PARAMS = 300
GA_EXPR_PARAMS = 100
#: FLAME 2020/2023 has 9,976 triangles; GA adds 168 for its teeth.
GA_NUM_FACES = 10144


# ---------------------------------------------------------------------------------------- frames
def canonical_vertices(head: HeadModel, shape: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """Identity-shaped neutral vertices (V, 3) float64: template + shape blendshapes + offsets."""
    with torch.no_grad():
        v = head.identity_vertices(torch.as_tensor(np.asarray(shape), dtype=torch.float32)[None],
                                   None if offsets is None else torch.as_tensor(np.asarray(offsets), dtype=torch.float32)[None])
    return v[0].double().numpy()


def _frames_for(triangles: np.ndarray, vertices: np.ndarray, faces: np.ndarray, what: str):
    centres, rotations, scales = triangle_frames(vertices, faces)
    c, R, s = centres[triangles], rotations[triangles], scales[triangles]
    if (s <= 1e-12).any():
        bad = int(triangles[np.argmax(s <= 1e-12)])
        raise AvatarFormatError(f"{what}: triangle {bad} is degenerate on the canonical mesh (zero scale)")
    q = matrix_to_quaternion(torch.from_numpy(R)).numpy()  # unit, w-first, like GA's face_orien_quat
    return c, R, s, q


def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return quaternion_multiply(torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))).numpy()


def local_to_canonical(local: Gaussians, triangles: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> Gaussians:
    """GA's triangle-local Gaussians -> world (canonical) Gaussians on `vertices`."""
    c, R, s, q = _frames_for(triangles, vertices, faces, "binding_0")
    means = np.einsum("nij,nj->ni", R, local.means.astype(np.float64)) * s[:, None] + c
    rot = local.quats.astype(np.float64)
    rot = rot / np.maximum(np.linalg.norm(rot, axis=1, keepdims=True), 1e-12)
    return Gaussians(
        means=means.astype(np.float32),
        log_scales=(local.log_scales.astype(np.float64) + np.log(s)[:, None]).astype(np.float32),
        quats=_qmul(q, rot).astype(np.float32),
        opacity_logits=local.opacity_logits, sh_dc=local.sh_dc, sh_rest=local.sh_rest,
    )


def canonical_to_local(g: Gaussians, triangles: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> Gaussians:
    """World (canonical) Gaussians on `vertices` -> GA's triangle-local ones (the inverse of the above).

    The local quaternion keeps the canonical one's norm (conj(quat(R)) is a unit quaternion); GA
    normalises it before use, so the rotation is the same either way.
    """
    c, R, s, q = _frames_for(triangles, vertices, faces, "binding")
    local_means = np.einsum("nji,nj->ni", R, g.means.astype(np.float64) - c) / s[:, None]
    conj = q * np.array([1.0, -1.0, -1.0, -1.0])
    return Gaussians(
        means=local_means.astype(np.float32),
        log_scales=(g.log_scales.astype(np.float64) - np.log(s)[:, None]).astype(np.float32),
        quats=_qmul(conj, g.quats).astype(np.float32),
        opacity_logits=g.opacity_logits, sh_dc=g.sh_dc, sh_rest=g.sh_rest,
    )


# ---------------------------------------------------------------------------------------- read
def read_gaussian_avatars(ply_path: str | os.PathLike, flame_param_path: str | os.PathLike, head: HeadModel) -> Avatar:
    """Read GA's `point_cloud.ply` + `flame_param.npz` into a canonical, bound avatar for `head`.

    `head` must have GA's topology (FLAME with teeth) for the triangle indices to mean anything; its
    face count is checked against binding_0. Barycentrics are computed (closest point on the bound
    triangle); the identity is `shape` + `static_offset`; dynamic per-timestep parameters are not used.
    """
    ply_path, flame_param_path = Path(ply_path), Path(flame_param_path)
    local, binding = read_gaussian_ply(ply_path)
    if binding is None:
        raise AvatarFormatError(f"{ply_path}: no 'binding_0' property (a plain 3DGS PLY, not a GaussianAvatars point cloud)")
    t = binding.triangles
    if t.size and t.max() >= head.num_faces:
        raise AvatarFormatError(
            f"{ply_path}: binding_0 reaches triangle {int(t.max())} but head model {head.model_id!r} has "
            f"{head.num_faces} triangles; GaussianAvatars binds to FLAME with teeth ({GA_NUM_FACES:,} triangles), "
            f"so load a FLAME head model converted with teeth")
    params = _load_npz(flame_param_path)
    shape = _shape_coefficients(params, head, flame_param_path)
    offsets = _static_offset(params, head, flame_param_path)
    vertices = canonical_vertices(head, shape, offsets)
    faces = head.data.faces
    gaussians = local_to_canonical(local, t, vertices, faces)
    bary = closest_point_barycentrics(gaussians.means, vertices[faces[t]]).astype(np.float32)
    expr = params.get("expr")
    avatar = Avatar(
        gaussians=gaussians,
        binding=Binding(triangles=t, barycentrics=bary),
        identity=HeadIdentity(model_id=head.model_id, shape=shape.astype(np.float32),
                              vertex_offsets=None if offsets is None else offsets.astype(np.float32)),
        meta={"imported_from": "GaussianAvatars", "source_files": [ply_path.name, flame_param_path.name],
              "ga_timesteps": int(expr.shape[0]) if expr is not None and expr.ndim == 2 else None},
    )
    validate_avatar(avatar, num_faces=head.num_faces, num_vertices=head.num_vertices)
    return avatar


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            params = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise AvatarFormatError(f"{path}: flame_param.npz not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise AvatarFormatError(f"{path}: unreadable flame_param.npz ({exc})") from None
    if not isinstance(params, dict):  # np.load gave a plain .npy array
        raise AvatarFormatError(f"{path}: expected an .npz archive of FLAME parameters")
    return params


def _shape_coefficients(params: dict[str, np.ndarray], head: HeadModel, path: Path) -> np.ndarray:
    if "shape" not in params:
        raise AvatarFormatError(f"{path}: missing key 'shape'")
    shape = np.asarray(params["shape"], dtype=np.float64)
    if shape.ndim == 2 and shape.shape[0] == 1:
        shape = shape[0]
    if shape.ndim != 1:
        raise AvatarFormatError(f"{path}: key 'shape' must be (S,), got {shape.shape}")
    if not np.isfinite(shape).all():
        raise AvatarFormatError(f"{path}: key 'shape' contains NaN or Inf")
    n = head.num_shape
    if len(shape) > n and np.any(shape[n:] != 0):
        raise AvatarFormatError(f"{path}: key 'shape' uses {len(shape)} coefficients but head model {head.model_id!r} "
                                f"has {n}; convert FLAME with at least {int(np.flatnonzero(shape)[-1]) + 1} shape components")
    return np.pad(shape[:n], (0, max(0, n - len(shape))))


def _static_offset(params: dict[str, np.ndarray], head: HeadModel, path: Path) -> np.ndarray | None:
    """static_offset as (V, 3) float64, or None when absent or all zeros.

    GA stores (1, V, 3) (sometimes (V, 3)); offsets fitted on FLAME without teeth are shorter, and GA pads
    them with zeros for the teeth vertices, as we do.
    """
    if "static_offset" not in params:
        return None
    off = np.asarray(params["static_offset"], dtype=np.float64)
    if off.ndim == 3 and off.shape[0] == 1:
        off = off[0]
    if off.ndim != 2 or off.shape[1] != 3:
        raise AvatarFormatError(f"{path}: key 'static_offset' must be (1, V, 3), got {np.shape(params['static_offset'])}")
    if off.shape[0] > head.num_vertices:
        raise AvatarFormatError(f"{path}: key 'static_offset' has {off.shape[0]} vertices but head model "
                                f"{head.model_id!r} has {head.num_vertices}")
    if not np.isfinite(off).all():
        raise AvatarFormatError(f"{path}: key 'static_offset' contains NaN or Inf")
    if not off.any():
        return None
    return np.pad(off, ((0, head.num_vertices - off.shape[0]), (0, 0)))


# ---------------------------------------------------------------------------------------- write
def write_gaussian_avatars(avatar: Avatar, out_dir: str | os.PathLike, head: HeadModel) -> tuple[Path, Path]:
    """Write `point_cloud.ply` (triangle-local, float binding_0) + `flame_param.npz` (one neutral timestep).

    Both files are computed in memory, then written to temp files and renamed into place together
    (`ply.atomic_write_files`), so a failure leaves neither a partial file nor a mismatched pair.
    """
    if avatar.binding is None:
        raise AvatarFormatError("field 'binding': GaussianAvatars needs an avatar bound to the head's triangles")
    validate_avatar(avatar, num_faces=head.num_faces, num_vertices=head.num_vertices)
    ident = avatar.identity
    if ident is not None and ident.model_id != head.model_id:
        raise AvatarFormatError(f"field 'identity.model_id': avatar uses {ident.model_id!r}, head model is {head.model_id!r}")
    shape = np.zeros(head.num_shape) if ident is None else np.asarray(ident.shape, dtype=np.float64)
    if len(shape) > head.num_shape:
        raise AvatarFormatError(f"field 'identity.shape': {len(shape)} coefficients, head model has {head.num_shape}")
    if len(shape) > GA_SHAPE_PARAMS and np.any(shape[GA_SHAPE_PARAMS:] != 0):
        raise AvatarFormatError(f"field 'identity.shape': GaussianAvatars stores {GA_SHAPE_PARAMS} shape coefficients, "
                                f"this identity uses {len(shape)}")
    offsets = None if ident is None or ident.vertex_offsets is None else np.asarray(ident.vertex_offsets, np.float64)
    vertices = canonical_vertices(head, shape, offsets)
    local = canonical_to_local(avatar.gaussians, avatar.binding.triangles, vertices, head.data.faces)
    rows = vertex_rows(local, Binding(avatar.binding.triangles, None), layout="gaussian_avatars")
    V = head.num_vertices
    params = {
        "shape": np.pad(shape, (0, max(0, GA_SHAPE_PARAMS - len(shape))))[:GA_SHAPE_PARAMS].astype(np.float32),
        "expr": np.zeros((1, GA_EXPR_PARAMS), np.float32),
        "rotation": np.zeros((1, 3), np.float32),
        "neck_pose": np.zeros((1, 3), np.float32),
        "jaw_pose": np.zeros((1, 3), np.float32),
        "eyes_pose": np.zeros((1, 6), np.float32),
        "translation": np.zeros((1, 3), np.float32),
        "static_offset": (np.zeros((1, V, 3)) if offsets is None else offsets[None]).astype(np.float32),
        "dynamic_offset": np.zeros((1, V, 3), np.float32),  # GA's viewers index it per timestep
    }
    npz = io.BytesIO()
    np.savez(npz, **params)
    out = Path(out_dir)
    ply_path, npz_path = atomic_write_files({out / "point_cloud.ply": lambda fh: write_ply_rows(fh, rows),
                                             out / "flame_param.npz": lambda fh: fh.write(npz.getvalue())})
    return ply_path, npz_path
