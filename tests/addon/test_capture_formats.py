"""Capture files -> rig channels, without Blender: Live Link Face CSV and FLAME .npz sequences."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pointillist.avatar.face_angles import ARKIT_52

from addon import capture_formats as cf
from addon.face_motion import PITCH, ROLL, YAW

EYE_COLS = ["LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]


def write_llf_csv(path: Path, frames: int = 5, fps: float = 60.0, seed: int = 0) -> dict[str, np.ndarray]:
    """A CSV laid out as Live Link Face writes it (capitalised ARKit names, timecode HH:MM:SS:FF.sub)."""
    rng = np.random.default_rng(seed)
    names = [n[0].upper() + n[1:] for n in ARKIT_52] + ["HeadYaw", "HeadPitch", "HeadRoll"] + EYE_COLS
    values = {n: rng.uniform(0, 1, frames) for n in names}
    lines = ["Timecode,BlendShapeCount," + ",".join(names)]
    for f in range(frames):
        frame = 17 + f
        tc = f"13:42:21:{frame:02d}.{f * 37 % 1000:03d}"
        lines.append(f"{tc},61," + ",".join(f"{values[n][f]:.6f}" for n in names))
    path.write_text("\n".join(lines) + "\n")
    return values


def test_live_link_csv_maps_to_shape_keys_jaw_eyes_and_neck(tmp_path):
    from pointillist.avatar.controls import FaceControls
    from pointillist.head.lbs import axis_angle_to_matrix

    values = write_llf_csv(tmp_path / "take.csv")
    take = cf.read_live_link_csv(tmp_path / "take.csv", fps=60.0)
    assert take.frames == 5
    np.testing.assert_allclose(take.times[1], 1 / 60 + 0.037 / 60, rtol=1e-9)  # FF.sub: sub-frames count
    assert take.times[0] == 0.0
    # plain blendshapes keep their ARKit names; jawOpen and eyeLook* are bones, as in the backend's controls
    assert "mouthSmileLeft" in take.shapes and "jawOpen" not in take.shapes and "eyeLookUpLeft" not in take.shapes
    np.testing.assert_allclose(take.shapes["mouthSmileLeft"], np.round(values["MouthSmileLeft"], 6))
    np.testing.assert_allclose(take.bones[("neck", YAW)], np.round(values["HeadYaw"], 6))
    np.testing.assert_allclose(take.bones[("neck", ROLL)], np.round(values["HeadRoll"], 6))
    assert len([u for u in take.unused if "eyeLook" in u]) == 6  # the per-eye rotation columns are reported
    f = 2
    expr = {n: float(np.round(values[n[0].upper() + n[1:]][f], 6)) for n in ARKIT_52
            if n == "jawOpen" or n.startswith("eyeLook")}
    _, pose = FaceControls(expressions=expr).to_model([])
    for j, bone in ((2, "jaw"), (3, "left_eye"), (4, "right_eye")):
        euler = [take.bones.get((bone, axis), np.zeros(5))[f] for axis in range(3)]
        want = axis_angle_to_matrix(pose[j][None]).numpy()[0]
        np.testing.assert_allclose(euler_zxy_matrix(*cf.matrix_to_zxy_euler(want)), want, atol=1e-6)
        got = euler_zxy_matrix(*euler)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=bone)


def euler_zxy_matrix(x: float, y: float, z: float) -> np.ndarray:
    """Blender's rotation mode 'ZXY' (Z applied first): R = Ry Rx Rz."""
    cx, sx, cy, sy, cz, sz = math.cos(x), math.sin(x), math.cos(y), math.sin(y), math.cos(z), math.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return ry @ rx @ rz


def test_euler_conversion_round_trips():
    rng = np.random.default_rng(1)
    aa = rng.normal(0, 0.6, (200, 3))
    euler = cf.axis_angle_to_zxy_euler(aa)
    for a, e in zip(aa, euler):
        np.testing.assert_allclose(euler_zxy_matrix(*e), cf.axis_angle_to_matrix(a), atol=1e-9)


def test_head_rotation_in_degrees_option(tmp_path):
    values = write_llf_csv(tmp_path / "take.csv")
    take = cf.read_live_link_csv(tmp_path / "take.csv", head_degrees=True)
    np.testing.assert_allclose(take.bones[("neck", PITCH)], np.radians(np.round(values["HeadPitch"], 6)))


@pytest.mark.parametrize("text, message", [
    ("", "no samples"),
    ("Frame,EyeBlinkLeft\n1,0.5\n", "no Timecode column"),
    ("Timecode,EyeBlinkLeft\n00:00:00:01.000,abc\n", "not a number"),
    ("Timecode,EyeBlinkLeft\n00:00:00:01.000,0.1,0.2\n", "different number of columns"),
    ("Timecode,EyeBlinkLeft\n00:00:00:05.000,0.1\n00:00:00:01.000,0.2\n", "backwards"),
    ("Timecode,EyeBlinkLeft\nnoon,0.1\n", "timecode"),
    ("Timecode,EyeBlinkLeft\n00:00:00:01.000,nan\n", "NaN"),
])
def test_bad_csv_names_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(cf.CaptureFormatError, match=message):
        cf.read_live_link_csv(path)


def test_unknown_columns_are_reported(tmp_path):
    path = tmp_path / "take.csv"
    path.write_text("Timecode,EyeBlinkLeft,SomethingElse\n00:00:00:00.000,0.1,3\n00:00:00:01.000,0.2,4\n")
    take = cf.read_live_link_csv(path, fps=30)
    assert take.unused == ["SomethingElse"] and list(take.shapes) == ["eyeBlinkLeft"]
    np.testing.assert_allclose(take.times, [0, 1 / 30])


def write_flame_npz(path: Path, frames: int = 6, n_expr: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Keys and shapes as VHAP / GaussianAvatars write flame_param.npz."""
    rng = np.random.default_rng(seed)
    arrays = {"expr": rng.normal(0, 1, (frames, n_expr)).astype(np.float32),
              "jaw_pose": rng.normal(0, 0.2, (frames, 3)).astype(np.float32),
              "neck_pose": rng.normal(0, 0.2, (frames, 3)).astype(np.float32),
              "eyes_pose": rng.normal(0, 0.2, (frames, 6)).astype(np.float32),
              "rotation": rng.normal(0, 0.2, (frames, 3)).astype(np.float32),
              "translation": rng.normal(0, 0.01, (frames, 3)).astype(np.float32),
              "shape": rng.normal(0, 1, 300).astype(np.float32),
              "static_offset": np.zeros((1, 10, 3), np.float32),
              "timestep_index": np.arange(frames)}
    np.savez(path, **arrays)
    return arrays


def test_flame_sequence_maps_to_exp_keys_and_bones(tmp_path):
    arrays = write_flame_npz(tmp_path / "seq.npz")
    take = cf.read_flame_npz(tmp_path / "seq.npz", fps=25)
    np.testing.assert_allclose(take.times, np.arange(6) / 25)
    assert sorted(take.shapes)[:2] == ["Exp000", "Exp001"] and len(take.shapes) == 10
    np.testing.assert_allclose(take.shapes["Exp003"], arrays["expr"][:, 3], rtol=1e-6)
    for key, bone, cols in (("jaw_pose", "jaw", slice(0, 3)), ("rotation", "root", slice(0, 3)),
                            ("eyes_pose", "left_eye", slice(0, 3)), ("eyes_pose", "right_eye", slice(3, 6))):
        for f in range(6):
            euler = [take.bones[(bone, axis)][f] for axis in range(3)]
            np.testing.assert_allclose(euler_zxy_matrix(*euler), cf.axis_angle_to_matrix(arrays[key][f, cols]), atol=1e-6)
    np.testing.assert_allclose(take.root_location, arrays["translation"], rtol=1e-6)
    assert take.unused == ["timestep_index"]


@pytest.mark.parametrize("arrays, message", [
    ({"foo": np.zeros(3)}, "no FLAME sequence keys"),
    ({"jaw_pose": np.zeros((4, 2))}, "jaw_pose"),
    ({"jaw_pose": np.zeros((4, 3)), "expr": np.zeros((5, 10))}, "must be \\(5, 3\\)"),
    ({"jaw_pose": np.full((2, 3), np.nan)}, "NaN"),
    ({"jaw_pose": np.zeros((0, 3))}, "no frames"),
])
def test_bad_flame_npz_names_the_problem(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(cf.CaptureFormatError, match=message):
        cf.read_flame_npz(tmp_path / "bad.npz")


def test_pickled_or_unknown_files_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "obj.npz").write_bytes((tmp_path / "obj.npy").read_bytes())
    with pytest.raises(cf.CaptureFormatError, match="not a readable"):
        cf.read_flame_npz(tmp_path / "obj.npz")
    with pytest.raises(cf.CaptureFormatError, match="unknown capture format"):
        cf.read_capture(tmp_path / "take.bvh")
