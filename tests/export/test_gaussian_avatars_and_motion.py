"""GaussianAvatars export (FLAME heads only) and motion files (FaceControls JSON, FLAME parameters)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pointillist.avatar.gaussian_avatars import read_gaussian_avatars
from pointillist.avatar.gaussians import AvatarFormatError
from pointillist.export.gaussian_avatars_export import export_gaussian_avatars, is_flame
from pointillist.export.motion import MotionError, load_motion
from pointillist.head.data import JOINT_NAMES
from pointillist.head.flame import convert_flame
from pointillist.head.model import HeadModel
from tests.avatar.synthetic import make_bound_avatar
from tests.head.flame_fixture import flame_arrays, write_chumpy_pickle


@pytest.fixture(scope="module")
def flame_head(tmp_path_factory) -> HeadModel:
    pkl = write_chumpy_pickle(tmp_path_factory.mktemp("flame") / "generic_model.pkl", flame_arrays(seed=5))
    return HeadModel(convert_flame(pkl, n_shape=300, n_expr=100))


def test_gaussian_avatars_export_round_trips_on_a_flame_head(flame_head, tmp_path):
    assert is_flame(flame_head)
    avatar = make_bound_avatar(flame_head, n=300)
    ply, npz = export_gaussian_avatars(avatar, flame_head, tmp_path / "ga")
    assert (ply.name, npz.name) == ("point_cloud.ply", "flame_param.npz")
    back = read_gaussian_avatars(ply, npz, flame_head)
    np.testing.assert_allclose(back.gaussians.means, avatar.gaussians.means, atol=1e-5)


def test_gaussian_avatars_export_refuses_other_head_models_by_name(procedural_avatar, head, tmp_path):
    with pytest.raises(AvatarFormatError, match=f"needs a FLAME head model; this avatar uses head model '{head.model_id}'"):
        export_gaussian_avatars(procedural_avatar, head, tmp_path / "ga")
    assert not (tmp_path / "ga").exists()


def test_controls_json_motion(head, tmp_path):
    path = tmp_path / "motion.json"
    path.write_text(json.dumps({"fps": 30, "frames": [{"jaw_deg": 10.0}, {"expressions": {"mouthSmileLeft": 0.5}, "gaze_deg": [5, 0]}]}))
    motion = load_motion(str(path), head.expr_names, head_is_flame=False)
    assert motion.fps == 30 and motion.num_frames == 2
    assert np.isclose(np.degrees(motion.frame(1).pose[JOINT_NAMES.index("jaw"), 0]), 10.0)
    assert motion.frame(2).expression[head.expr_names.index("mouthSmileLeft")] == pytest.approx(0.5)
    with pytest.raises(MotionError, match="has 2 frames"):
        motion.frame(3)
    path.write_text(json.dumps({"frames": [{"jaw": 3}]}))
    with pytest.raises(MotionError, match="unknown \\['jaw'\\]"):
        load_motion(str(path), head.expr_names, head_is_flame=False)
    path.write_text(json.dumps({"frames": [{"expressions": {"noSuchShape": 1}}]}))
    with pytest.raises(MotionError, match="frame 1: unknown expression 'noSuchShape'"):
        load_motion(str(path), head.expr_names, head_is_flame=False)


def test_flame_parameter_motion(flame_head, head, tmp_path):
    T = 4
    rng = np.random.default_rng(0)
    params = {"expr": rng.normal(size=(T, 100)), "jaw_pose": rng.normal(0, 0.1, (T, 3)), "neck_pose": np.zeros((T, 3)),
              "rotation": np.zeros((T, 3)), "eyes_pose": rng.normal(0, 0.1, (T, 6)), "translation": rng.normal(0, 0.01, (T, 3)),
              "shape": np.zeros(300), "static_offset": np.zeros((1, 10, 3))}
    np.savez(tmp_path / "seq.npz", **params)
    motion = load_motion(str(tmp_path / "seq.npz"), flame_head.expr_names, head_is_flame=True)
    assert motion.num_frames == T
    f = motion.frame(3)
    np.testing.assert_allclose(f.expression, params["expr"][2], rtol=1e-6)
    np.testing.assert_allclose(f.pose[JOINT_NAMES.index("jaw")], params["jaw_pose"][2], rtol=1e-6)
    np.testing.assert_allclose(f.pose[JOINT_NAMES.index("right_eye")], params["eyes_pose"][2, 3:], rtol=1e-6)
    np.testing.assert_allclose(f.translation, params["translation"][2], rtol=1e-6)
    # FLAME expression coefficients mean nothing to the procedural head: refused by name, not silently dropped.
    with pytest.raises(MotionError, match="need a FLAME head model"):
        load_motion(str(tmp_path / "seq.npz"), head.expr_names, head_is_flame=False)
    np.savez(tmp_path / "bad.npz", jaw_pose=np.zeros((3, 3)), neck_pose=np.zeros((4, 3)))
    with pytest.raises(MotionError, match="disagree on the frame count"):
        load_motion(str(tmp_path / "bad.npz"), head.expr_names, head_is_flame=False)


def test_unknown_motion_source_is_refused(head):
    with pytest.raises(MotionError, match="not 'talk' and no such file"):
        load_motion("dance", head.expr_names, head_is_flame=False)
