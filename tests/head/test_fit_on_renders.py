"""End to end on renders of procedural avatars with known camera: MediaPipe → fit → compare with truth.

Regression guard, not the issue's final bar: on these renders MediaPipe's landmarks disagree with the
template's own landmark positions by ~5 px (mean, 512²), so today the fit recovers head rotation within
~2–4° and lands ~5–8 px from the projected ground truth. Fitting the exact projected landmarks instead
(`test_fit.py`) recovers rotation within 1.5° and 1 px, so the remaining gap is the detector's, to be
closed by calibrating the template's landmark positions against MediaPipe (issue 3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointillist.avatar.animate import AvatarAnimator
from pointillist.avatar.controls import FaceControls
from pointillist.head.fit import fit_head, head_rotation, model_landmarks
from pointillist.preprocess.landmarks import detect_landmarks
from pointillist.preview import ViewSpec, render_frame
from pointillist.render.camera import fov_to_K, orbit_viewmat
from pointillist.synth.procedural import make_procedural_avatar


@pytest.mark.parametrize("seed,yaw,pitch", [(3, 0.0, 0.0), (2, 15.0, 5.0)])
def test_fit_on_a_render_of_a_known_avatar(head, seed, yaw, pitch):
    avatar = make_procedural_avatar(seed, head, hair_style="bald", beard=False)
    target = (0.0, 0.0, 0.03)
    view = ViewSpec(yaw_deg=yaw, pitch_deg=pitch, radius=0.55, fov_deg=26.0, width=512, height=512, target=target)
    image = render_frame(AvatarAnimator(avatar, head), FaceControls(), view)
    detected = detect_landmarks(image).points
    fit = fit_head(detected, head, 512, 512)
    truth_view = orbit_viewmat(yaw, pitch, 0.55, target)
    R = head_rotation(truth_view).T @ head_rotation(fit.viewmat)
    assert math.degrees(math.acos(np.clip((np.trace(R) - 1) / 2, -1, 1))) < 5.0
    with torch.no_grad():
        truth = model_landmarks(head, head.identity_vertices(torch.as_tensor(avatar.identity.shape)[None]))[0].numpy()
    cam = truth @ truth_view[:3, :3].T + truth_view[:3, 3]
    uv = cam[:, :2] / cam[:, 2:3] * fov_to_K(26.0, 512, 512)[0, 0] + 256
    assert np.linalg.norm(fit.landmarks_2d[:468] - uv[:468], axis=1).mean() < 10.0
    assert fit.error_px < 4.0  # the fit itself follows what was detected
