"""Head fit: recovers known parameters from consistent landmarks; converges on a real portrait."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointillist.head.fit import fit_head, fit_heads, head_rotation, model_landmarks
from pointillist.render.camera import fov_to_K, orbit_viewmat


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1)))


def synthetic_landmarks(head, yaw: float, pitch: float, seed: int = 0):
    """Landmarks of a known head (random identity, smile, blink, open jaw) seen by a known camera."""
    rng = np.random.default_rng(seed)
    shape = torch.as_tensor(rng.normal(0, 0.8, head.num_shape), dtype=torch.float32)
    expr = torch.zeros(head.num_expr)
    expr[head.expr_names.index("mouthSmileLeft")] = 0.6
    expr[head.expr_names.index("eyeBlinkRight")] = 0.5
    pose = torch.zeros(5, 3)
    pose[2, 0] = 0.15
    with torch.no_grad():
        verts = head(shape=shape[None], expression=expr[None], pose=pose[None]).vertices
        points = model_landmarks(head, verts)[0].double().numpy()
    view = orbit_viewmat(yaw, pitch, 0.6, (0.0, 0.0, 0.03))
    K = fov_to_K(24.0, 512, 512)
    cam = points @ view[:3, :3].T + view[:3, 3]
    uv = cam[:, :2] / cam[:, 2:3] * K[0, 0] + 256
    depth = (cam[:, 2] - cam[:468, 2].mean()) * K[0, 0] / cam[:468, 2].mean()  # MediaPipe-style relative z
    return np.concatenate([uv, depth[:, None]], 1), view, pose


@pytest.mark.parametrize("yaw,pitch", [(0.0, 0.0), (20.0, 5.0), (-30.0, -10.0)])
def test_recovers_pose_jaw_and_landmarks(head, yaw, pitch):
    landmarks, view, pose = synthetic_landmarks(head, yaw, pitch)
    fit = fit_head(landmarks, head, 512, 512)
    assert rotation_error_deg(head_rotation(view), head_rotation(fit.viewmat)) < 1.5
    assert fit.error_px < 1.0
    assert abs(fit.pose[2, 0] - pose[2, 0].item()) < math.radians(2.0)
    assert fit.expression[head.expr_names.index("mouthSmileLeft")] > 0.3
    assert np.allclose(fit.pose[:2], 0)  # the camera carries the head rotation


def test_batched_fit_matches_single(head):
    a, _, _ = synthetic_landmarks(head, 10.0, 0.0, seed=1)
    b, _, _ = synthetic_landmarks(head, -15.0, 5.0, seed=2)
    both = fit_heads(np.stack([a, b]), head, 512, 512)
    single = fit_head(b, head, 512, 512)
    assert rotation_error_deg(head_rotation(both[1].viewmat), head_rotation(single.viewmat)) < 0.5
    assert abs(both[1].error_px - single.error_px) < 0.3


def test_bad_landmarks_are_refused(head):
    landmarks, _, _ = synthetic_landmarks(head, 0.0, 0.0)
    landmarks[5, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fit_head(landmarks, head, 512, 512)
    with pytest.raises(ValueError, match="478"):
        fit_head(landmarks[:100], head, 512, 512)


def test_astronaut_converges(head):
    """The public-domain portrait inside scikit-image: landmark error under 2 % of the inter-ocular distance."""
    skimage = pytest.importorskip("skimage")
    mp = pytest.importorskip("mediapipe")
    from PIL import Image

    image = skimage.data.astronaut()
    crop = np.asarray(Image.fromarray(image[40:296, 100:356]).resize((512, 512), Image.BICUBIC))
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        found = mesh.process(crop).multi_face_landmarks
    assert found
    landmarks = np.array([[p.x * 512, p.y * 512, p.z * 512] for p in found[0].landmark])
    fit = fit_head(landmarks, head, 512, 512)
    assert fit.error_iod < 0.02
    assert abs(fit.head_angles_deg[0]) < 10 and abs(fit.head_angles_deg[2]) < 10
