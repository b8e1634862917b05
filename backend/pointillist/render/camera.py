"""Camera helpers in numpy only, so the Blender add-on can carry this file without torch.

Conventions (shared with gsplat / OpenCV):

* ``viewmat`` is a 4x4 world->camera matrix; camera axes are x right, y down, z forward.
* ``K`` is a 3x3 pinhole intrinsic matrix in pixels; pixel ``(i, j)`` has its centre at
  ``(j + 0.5, i + 0.5)``, so an image of width ``W`` has its geometric centre at ``cx = W / 2``.
* Avatar "head space": metres, +Y up, the face looks toward +Z.
* Blender world: +Z up, the face looks toward -Y; Blender cameras look down their local -Z with
  local +Y up, hence ``viewmat = diag(1, -1, -1, 1) @ inverse(matrix_world)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ArrayLike3 = Sequence[float] | np.ndarray

# Flips Blender/OpenGL camera axes (x right, y up, looking down -z) to OpenCV (y down, z forward).
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n < 1e-12:
        raise ValueError("cannot normalise a zero-length vector")
    return v / n


def _viewmat_from_axes(right: np.ndarray, down: np.ndarray, forward: np.ndarray,
                       eye: np.ndarray) -> np.ndarray:
    """World->camera matrix whose rows are the camera axes expressed in world space."""
    R = np.stack([right, down, forward], axis=0)
    viewmat = np.eye(4)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = -R @ eye
    return viewmat


def look_at(eye: ArrayLike3, target: ArrayLike3, up: ArrayLike3 = (0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenCV world->camera matrix (4, 4) for a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear up in the image (image y points away
    from it). Raises ``ValueError`` when the viewing direction is parallel to ``up``.
    """
    eye = np.asarray(eye, dtype=np.float64)
    forward = _unit(np.asarray(target, dtype=np.float64) - eye)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to the up vector")
    right = _unit(right)
    down = np.cross(forward, right)
    return _viewmat_from_axes(right, down, forward, eye)


def orbit_viewmat(yaw_deg: float, pitch_deg: float, radius: float,
                  target: ArrayLike3 = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Camera on a sphere around ``target`` in head space, always looking at it.

    Yaw 0 / pitch 0 puts the camera on +Z facing the face; positive yaw moves the camera
    toward +X, positive pitch raises it (+Y). Built from the angles directly (not via
    ``look_at``) so it stays well defined straight above or below the head.
    """
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    target = np.asarray(target, dtype=np.float64)
    outward = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch),
                        math.cos(yaw) * math.cos(pitch)])
    eye = target + radius * outward
    forward = -outward
    right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    down = np.cross(forward, right)
    return _viewmat_from_axes(right, down, forward, eye)


def K_from_focal(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Pinhole intrinsics (3, 3) from focal lengths and principal point, all in pixels."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def fov_to_K(fov_y_deg: float, width: int, height: int) -> np.ndarray:
    """Intrinsics (3, 3) for a vertical field of view, square pixels, centred principal point."""
    fy = 0.5 * height / math.tan(0.5 * math.radians(fov_y_deg))
    return K_from_focal(fy, fy, 0.5 * width, 0.5 * height)


def camera_center(viewmat: np.ndarray) -> np.ndarray:
    """World position (3,) of the camera described by a world->camera matrix."""
    viewmat = np.asarray(viewmat, dtype=np.float64)
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    return -R.T @ t


def project_points(points: np.ndarray, viewmat: np.ndarray,
                   K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (N, 3) to pixel coordinates (N, 2); also returns camera z (N,)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    viewmat = np.asarray(viewmat, dtype=np.float64)
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ np.asarray(K, dtype=np.float64).T)[:, :2] / z[:, None]
    return uv, z


def blender_matrix_world_to_viewmat(matrix_world: np.ndarray) -> np.ndarray:
    """OpenCV world->camera matrix (4, 4) from a Blender camera's ``matrix_world`` (4, 4).

    The result maps *Blender* world coordinates; compose with ``head_to_blender_matrix()``
    (``viewmat @ head_to_blender_matrix()``) to render head-space Gaussians.
    Scale in ``matrix_world`` is removed so a scaled camera object still yields a rigid view.
    """
    M = np.asarray(matrix_world, dtype=np.float64).copy()
    axes = M[:3, :3]
    norms = np.linalg.norm(axes, axis=0)
    if np.any(norms < 1e-12):
        raise ValueError("camera matrix_world has a zero-length axis")
    M[:3, :3] = axes / norms
    return _GL_TO_CV @ np.linalg.inv(M)


def blender_intrinsics(lens_mm: float, sensor_width_mm: float, sensor_height_mm: float,
                       sensor_fit: str, shift_x: float, shift_y: float, width: int, height: int,
                       pixel_aspect: float = 1.0) -> np.ndarray:
    """Pinhole K (3, 3) matching a Blender perspective camera rendered at ``width`` x ``height``.

    Follows Blender's ``BKE_camera_params_compute_viewplane``:

    * ``sensor_fit`` 'AUTO' fits ``sensor_width_mm`` to the larger (aspect-corrected) image
      dimension; 'HORIZONTAL' fits ``sensor_width_mm`` to the width; 'VERTICAL' fits
      ``sensor_height_mm`` to the height. (In AUTO mode ``sensor_height_mm`` is ignored.)
    * ``shift_x`` / ``shift_y`` are in units of that fitted dimension ("view factor"); a
      positive shift moves the frame right/up, so the principal point moves left/down.
    * ``pixel_aspect`` is ``render.pixel_aspect_x / render.pixel_aspect_y`` (pixel width over
      pixel height); non-square pixels make ``fy = fx * pixel_aspect``.

    ``width``/``height`` are the final pixel resolution (resolution_x/y times the percentage).
    """
    fit = sensor_fit.upper()
    if fit not in ("AUTO", "HORIZONTAL", "VERTICAL"):
        raise ValueError(f"unknown sensor_fit {sensor_fit!r}")
    ycor = 1.0 / pixel_aspect  # Blender's aspy / aspx
    sensor_size = sensor_height_mm if fit == "VERTICAL" else sensor_width_mm
    if fit == "AUTO":
        fit = "HORIZONTAL" if pixel_aspect * width >= height else "VERTICAL"
    view_fac = float(width) if fit == "HORIZONTAL" else ycor * float(height)
    fx = lens_mm * view_fac / sensor_size
    fy = fx / ycor
    cx = 0.5 * width - shift_x * view_fac
    cy = 0.5 * height + shift_y * view_fac / ycor
    return K_from_focal(fx, fy, cx, cy)


def head_to_blender_matrix() -> np.ndarray:
    """Rigid 4x4 mapping head space (x, y, z) to Blender world (x, -z, y).

    Head +Y (up) becomes Blender +Z, and the face direction head +Z becomes Blender -Y.
    """
    M = np.zeros((4, 4))
    M[0, 0] = 1.0
    M[1, 2] = -1.0
    M[2, 1] = 1.0
    M[3, 3] = 1.0
    return M
