"""Face controls → expression vector and joint pose."""

from __future__ import annotations

import math

import pytest
import torch

from pointillist.avatar.controls import ControlError, FaceControls, parse_expression_assignments, talk_controls
from pointillist.head.data import JOINT_NAMES
from pointillist.head.lbs import axis_angle_to_matrix

NAMES = ["eyeBlinkLeft", "mouthSmileLeft", "mouthSmileRight"]


def test_named_expressions_and_jaw():
    expr, pose = FaceControls(expressions={"mouthSmileLeft": 0.7, "jawOpen": 0.4}, jaw_deg=5.0).to_model(NAMES)
    assert expr.tolist() == pytest.approx([0.0, 0.7, 0.0])
    assert pose[JOINT_NAMES.index("jaw"), 0].item() == pytest.approx(math.radians(5.0 + 0.4 * 25.0))
    assert pose[[0, 1, 3, 4]].abs().max() == 0


def test_gaze_turns_eyes_toward_the_subjects_left_and_up():
    _, pose = FaceControls(gaze_deg=(20.0, 10.0)).to_model(NAMES)
    forward = torch.tensor([0.0, 0.0, 1.0])
    for side in ("left_eye", "right_eye"):
        d = axis_angle_to_matrix(pose[JOINT_NAMES.index(side)]) @ forward
        assert d[0] > 0.3 and d[1] > 0.1  # +X is the subject's left, +Y is up


def test_eye_look_out_is_mirrored():
    _, pose = FaceControls(expressions={"eyeLookOutLeft": 1.0, "eyeLookOutRight": 1.0}).to_model(NAMES)
    forward = torch.tensor([0.0, 0.0, 1.0])
    left = axis_angle_to_matrix(pose[JOINT_NAMES.index("left_eye")]) @ forward
    right = axis_angle_to_matrix(pose[JOINT_NAMES.index("right_eye")]) @ forward
    assert left[0] > 0.4 and right[0] < -0.4


def test_neck_yaw_turns_the_face_left():
    _, pose = FaceControls(neck_yaw_deg=30.0).to_model(NAMES)
    d = axis_angle_to_matrix(pose[JOINT_NAMES.index("neck")]) @ torch.tensor([0.0, 0.0, 1.0])
    assert d[0] == pytest.approx(math.sin(math.radians(30.0)), abs=1e-6)


def test_unknown_names_and_bad_values_are_clear_errors():
    with pytest.raises(ControlError, match="unknown expression 'smile'.*valid names: eyeBlinkLeft"):
        FaceControls(expressions={"smile": 1.0}).to_model(NAMES)
    assert FaceControls(expressions={"smile": 1.0}).to_model(NAMES, strict=False)[0].abs().sum() == 0
    with pytest.raises(ControlError, match="NAME=VALUE"):
        parse_expression_assignments(["mouthSmileLeft"])
    with pytest.raises(ControlError, match="not a number"):
        parse_expression_assignments(["mouthSmileLeft=lots"])
    with pytest.raises(ControlError, match="finite"):
        parse_expression_assignments(["mouthSmileLeft=nan"])
    assert parse_expression_assignments(["a=1", "b=-0.5"]) == {"a": 1.0, "b": -0.5}


def test_talk_motion_is_speech_like():
    jaws = [talk_controls(i / 30).jaw_deg for i in range(90)]
    assert min(jaws) >= 0 and max(jaws) > 8  # the jaw opens and closes at syllable rate
    crossings = sum((a - 5) * (b - 5) < 0 for a, b in zip(jaws, jaws[1:]))
    assert crossings >= 10
    blinks = [talk_controls(i / 30).expressions["eyeBlinkLeft"] for i in range(90)]
    assert max(blinks) > 0.5 and sum(b > 0.5 for b in blinks) < 10
