"""Faces that are not a person's are refused; hands are found where they are, and nowhere else.

The refusals use pictures scikit-image ships: its cat (Chelsea, doubled so her face is large enough to mesh)
and its cup of coffee, both of which MediaPipe's face mesh reads as a face."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image
from pointillist.preprocess.decode import PortraitError
from pointillist.preprocess.hands import hand_mask
from pointillist.preprocess.portrait import understand_portrait

from .images import astronaut, encode


def _cat() -> np.ndarray:
    cat = Image.fromarray(skimage.data.chelsea())
    return np.asarray(cat.resize((cat.width * 2, cat.height * 2), Image.LANCZOS))


@pytest.mark.parametrize("picture", ["cat", "coffee"])
def test_a_face_mediapipe_meshes_but_no_person_owns_is_refused(picture):
    image = encode(_cat() if picture == "cat" else skimage.data.coffee(), "PNG")
    understand_portrait(image, require_person=False)  # the face mesh alone accepts it
    with pytest.raises(PortraitError, match="no human face found"):
        understand_portrait(image)


def test_a_person_passes_and_has_no_hands_where_there_are_none():
    inputs = understand_portrait(encode(astronaut(), "PNG"))
    assert "person" in inputs.timings
    assert inputs.hands is not None and inputs.hands.shape == (512, 512) and not inputs.hands.any()
    assert inputs.photo is not None and inputs.photo.mean() > 0.99  # the crop lies inside her photo but for a corner


def test_a_hand_becomes_its_grown_hull(monkeypatch):
    """The mask is the hull of the 21 landmarks grown by a quarter of the hand's size; a blank image has none."""
    from pointillist.preprocess import hands

    assert not hand_mask(np.full((256, 256, 3), 200, np.uint8)).any()
    palm = np.array([[100.0, 150.0]] + [[80.0 + 10 * (i % 5), 140.0 - 10 * (i // 5)] for i in range(20)])
    palm[12] = (100.0, 60.0)  # middle fingertip: the hand is 90 px from wrist to tip
    monkeypatch.setattr(hands, "hand_landmarks", lambda rgb: [palm])
    mask = hand_mask(np.zeros((256, 256, 3), np.uint8))
    assert mask[100, 100] and mask[150, 100] and mask[60, 100]  # inside the hull, at its landmarks
    assert mask[150 + 15, 100]  # within the margin below the wrist
    assert not mask[150 + 45, 100] and not mask[100, 200] and not mask[10, 10]
