"""Camera helpers: OpenCV conventions, orbit cameras, Blender conversions (numpy only)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from pointillist.render.camera import (K_from_focal, blender_intrinsics,
                                       blender_matrix_world_to_viewmat, camera_center, fov_to_K,
                                       head_to_blender_matrix, look_at, orbit_viewmat,
                                       project_points)


def _assert_rigid(viewmat: np.ndarray) -> None:
    R = viewmat[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_array_equal(viewmat[3], [0, 0, 0, 1])


def test_camera_module_does_not_import_torch():
    code = ("import sys; sys.path.insert(0, 'backend'); "
            "from pointillist.render import camera, look_at; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))


def test_look_at_puts_target_on_axis_in_front():
    eye, target = np.array([0.3, 0.2, 1.0]), np.array([0.05, -0.02, 0.01])
    V = look_at(eye, target)
    _assert_rigid(V)
    K = fov_to_K(40.0, 64, 48)
    uv, z = project_points(target[None], V, K)
    np.testing.assert_allclose(uv[0], [32.0, 24.0], atol=1e-9)
    assert z[0] == pytest.approx(np.linalg.norm(target - eye))
    np.testing.assert_allclose(camera_center(V), eye, atol=1e-12)


def test_look_at_image_y_goes_down_when_point_goes_up_and_x_right():
    V = look_at((0, 0, 1), (0, 0, 0))
    K = fov_to_K(40.0, 64, 48)
    uv, _ = project_points(np.array([[0, 0, 0], [0, 0.1, 0], [0.1, 0, 0]]), V, K)
    assert uv[1, 1] < uv[0, 1]  # world up -> smaller image row
    assert uv[2, 0] > uv[0, 0]  # camera on +Z looking at -Z: world +X is image right


def test_look_at_rejects_parallel_up():
    with pytest.raises(ValueError):
        look_at((0, 1, 0), (0, 0, 0))


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (35, 10), (-120, -40), (180, 60), (10, 89.9)])
def test_orbit_matches_look_at_and_looks_at_target(yaw, pitch):
    target = np.array([0.01, 0.02, -0.03])
    V = orbit_viewmat(yaw, pitch, 0.6, target)
    _assert_rigid(V)
    eye = camera_center(V)
    assert np.linalg.norm(eye - target) == pytest.approx(0.6)
    np.testing.assert_allclose(V, look_at(eye, target), atol=1e-6)


def test_orbit_directions():
    np.testing.assert_allclose(camera_center(orbit_viewmat(0, 0, 2.0)), [0, 0, 2.0], atol=1e-12)
    np.testing.assert_allclose(camera_center(orbit_viewmat(90, 0, 2.0)), [2.0, 0, 0], atol=1e-12)
    assert camera_center(orbit_viewmat(0, 30, 2.0))[1] > 0
    # Straight above the head is still well defined, and the face (+Z) is at the image bottom.
    V = orbit_viewmat(0, 90, 1.0)
    _assert_rigid(V)
    uv, z = project_points(np.array([[0, 0, 0.1]]), V, fov_to_K(30, 64, 64))
    assert z[0] > 0 and uv[0, 1] > 32


def test_fov_to_K_edges():
    W, H, fov = 80, 60, 50.0
    K = fov_to_K(fov, W, H)
    assert K[0, 0] == K[1, 1]
    np.testing.assert_allclose(K[:2, 2], [W / 2, H / 2])
    V = look_at((0, 0, 1), (0, 0, 0))
    top = np.array([[0.0, math.tan(math.radians(fov / 2)), 0.0]])  # 1 m in front of the camera
    uv, _ = project_points(top, V, K)
    assert uv[0, 1] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(K_from_focal(1, 2, 3, 4), [[1, 0, 3], [0, 2, 4], [0, 0, 1]])


def _blender_rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _blender_camera(location, rot3) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = rot3
    M[:3, 3] = location
    return M


def test_blender_camera_facing_plus_y():
    # Camera at (0, -1, 0) rotated 90 deg about X looks toward +Y with +Z up.
    V = blender_matrix_world_to_viewmat(_blender_camera((0, -1, 0), _blender_rot_x(90)))
    _assert_rigid(V)
    K = fov_to_K(40, 64, 48)
    pts = np.array([[0, 0, 0], [0, 0, 0.2], [0.2, 0, 0]])
    uv, z = project_points(pts, V, K)
    np.testing.assert_allclose(uv[0], [32, 24], atol=1e-9)
    assert z[0] == pytest.approx(1.0)
    assert uv[1, 1] < 24 and uv[1, 0] == pytest.approx(32)  # Blender +Z is up in the image
    assert uv[2, 0] > 32  # Blender +X is to the right when looking along +Y
    np.testing.assert_allclose(camera_center(V), [0, -1, 0], atol=1e-12)


def test_blender_matrix_world_scale_is_ignored():
    R = _blender_rot_x(90)
    V1 = blender_matrix_world_to_viewmat(_blender_camera((0, -1, 0), R))
    V2 = blender_matrix_world_to_viewmat(_blender_camera((0, -1, 0), R * 2.5))
    np.testing.assert_allclose(V1, V2, atol=1e-12)


def test_head_to_blender():
    M = head_to_blender_matrix()
    _assert_rigid(M)
    np.testing.assert_allclose(M[:3, :3] @ [0, 1, 0], [0, 0, 1])  # head up -> Blender up
    np.testing.assert_allclose(M[:3, :3] @ [0, 0, 1], [0, -1, 0])  # face direction -> -Y
    np.testing.assert_allclose(M[:3, :3] @ [1, 0, 0], [1, 0, 0])
    # A Blender camera in front of the face sees the nose tip (head +Z) closer than the centre.
    V = blender_matrix_world_to_viewmat(_blender_camera((0, -1, 0), _blender_rot_x(90)))
    pts = np.array([[0, 0, 0], [0, 0, 0.1], [0, 0.1, 0]])
    uv, z = project_points(pts, V @ M, fov_to_K(40, 64, 48))
    np.testing.assert_allclose(z, [1.0, 0.9, 1.0], atol=1e-12)
    assert uv[2, 1] < uv[0, 1]  # head up is image up


def test_blender_intrinsics_sensor_fit():
    # Default Blender camera: 50 mm lens, 36 mm sensor, AUTO fit, 1920x1080.
    K = blender_intrinsics(50, 36, 24, "AUTO", 0, 0, 1920, 1080)
    np.testing.assert_allclose(K, K_from_focal(50 * 1920 / 36, 50 * 1920 / 36, 960, 540))
    # AUTO fits the sensor width to the larger dimension, also in portrait.
    K = blender_intrinsics(50, 36, 24, "AUTO", 0, 0, 1080, 1920)
    assert K[1, 1] == pytest.approx(50 * 1920 / 36) and K[0, 0] == pytest.approx(K[1, 1])
    K = blender_intrinsics(50, 36, 24, "HORIZONTAL", 0, 0, 1080, 1920)
    assert K[0, 0] == pytest.approx(50 * 1080 / 36)
    K = blender_intrinsics(50, 36, 24, "VERTICAL", 0, 0, 1920, 1080)
    assert K[1, 1] == pytest.approx(50 * 1080 / 24)
    with pytest.raises(ValueError):
        blender_intrinsics(50, 36, 24, "DIAGONAL", 0, 0, 10, 10)


def test_blender_intrinsics_horizontal_fov():
    lens, sensor, W, H = 35.0, 36.0, 640, 480
    K = blender_intrinsics(lens, sensor, 24.0, "AUTO", 0, 0, W, H)
    half_fov = math.atan(0.5 * sensor / lens)  # Blender's horizontal angle for this setup
    V = look_at((0, 0, 0), (0, 0, -1))
    edge = np.array([[math.tan(half_fov), 0, -1.0]])
    uv, _ = project_points(edge, V, K)
    assert uv[0, 0] == pytest.approx(W, abs=1e-9)


def test_blender_intrinsics_shift_and_pixel_aspect():
    # Shift is in units of the larger dimension; +x moves the frame right (principal point left),
    # +y moves it up (principal point down in OpenCV rows).
    K = blender_intrinsics(50, 36, 24, "AUTO", 0.1, 0.1, 1920, 1080)
    np.testing.assert_allclose(K[:2, 2], [960 - 192, 540 + 192])
    K = blender_intrinsics(50, 36, 24, "AUTO", 0.1, -0.2, 1080, 1920)
    np.testing.assert_allclose(K[:2, 2], [540 - 192, 960 - 384])
    # Pixels twice as wide as tall: twice as many rows per unit angle as columns.
    K = blender_intrinsics(50, 36, 24, "HORIZONTAL", 0, 0, 960, 1080, pixel_aspect=2.0)
    assert K[1, 1] == pytest.approx(2 * K[0, 0])
    assert K[0, 0] == pytest.approx(50 * 960 / 36)
