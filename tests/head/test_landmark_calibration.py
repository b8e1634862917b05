"""The measured MediaPipe landmark mapping (FLAME and any head model without one by construction)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pointillist.cli import main
from pointillist.head.data import HeadModelData
from pointillist.head.fit import fit_head, model_landmarks
from pointillist.head.landmark_calibration import (
    mesh_renderer,
    neutral_views,
    triangulate,
)
from pointillist.head.model import HeadModel
from pointillist.preprocess.landmarks import detect_landmarks

from .flame_fixture import F, V, flame_arrays, write_chumpy_pickle


def test_triangulation_recovers_points_and_drops_a_confused_view():
    rng = np.random.default_rng(0)
    X = rng.normal(0, 0.05, (40, 3))
    data = HeadModelData.load("blender_assets/head_template.npz")
    cams = neutral_views(data)
    P = np.stack([K @ view[:3, :] for view, K in cams])
    h = np.einsum("nij,lj->nli", P, np.concatenate([X, np.ones((40, 1))], 1))
    uv = h[..., :2] / h[..., 2:3] + rng.normal(0, 0.3, (len(P), 40, 2))
    uv[4, :10] += 40.0  # one view misreads a quarter of the points
    points, inliers = triangulate(P, uv)
    assert np.abs(points - X).max() < 1.5e-3
    assert not inliers[4, :10].any() and inliers[:, 10:].mean() > 0.9


def _template_as_flame(data: HeadModelData) -> dict[str, np.ndarray]:
    """FLAME's keys and sizes around the template's geometry: extra vertices hide inside the skull."""
    arrays = flame_arrays(0)
    n, f = data.num_vertices, data.num_faces
    pad = V - n
    inside = np.zeros((pad, 3)) + data.vertices.mean(0)
    arrays["v_template"] = np.concatenate([data.vertices.astype(np.float64), inside + np.random.default_rng(1).normal(0, 1e-3, (pad, 3))])
    extra = n + (np.arange((F - f) * 3) % pad).reshape(-1, 3)
    extra[:, 1] = n + (extra[:, 0] - n + 1) % pad
    extra[:, 2] = n + (extra[:, 0] - n + 2) % pad
    arrays["f"] = np.concatenate([data.faces, extra]).astype(np.uint32)
    arrays["shapedirs"] = np.zeros((V, 3, 400))
    arrays["posedirs"] = np.zeros((V, 3, 36))
    weights = np.zeros((V, 5))
    weights[:n] = data.lbs_weights
    weights[n:, 0] = 1
    arrays["weights"] = weights
    regressor = np.zeros((5, V))
    regressor[:, :n] = data.joint_regressor
    arrays["J_regressor"] = regressor
    arrays["J"] = regressor @ arrays["v_template"]
    return arrays


@pytest.mark.slow
def test_import_flame_measures_the_mapping_the_fit_uses(tmp_path, capsys):
    template = HeadModelData.load("blender_assets/head_template.npz")
    pkl = write_chumpy_pickle(tmp_path / "generic_model.pkl", _template_as_flame(template))
    out = tmp_path / "flame.npz"
    assert main(["head", "import-flame", str(pkl), "-o", str(out)]) == 0
    flame = HeadModelData.load(out)
    report = flame.meta["landmark_calibration"]
    assert report["views_used"] >= 12 and report["reprojection_px"] < 5.0
    assert flame.landmark_faces.shape == (478,)
    teeth = flame.part_mask("teeth_upper") | flame.part_mask("teeth_lower")
    assert not teeth[flame.landmark_faces].any()

    # the measured landmarks sit where the template has them by construction (same surface, same detector)
    with torch.no_grad():
        measured = model_landmarks(HeadModel(flame), torch.as_tensor(flame.vertices)[None].double())[0].numpy()
        built = model_landmarks(HeadModel(template), torch.as_tensor(template.vertices)[None].double())[0].numpy()
    shift_mm = np.linalg.norm(measured[:468] - built[:468], axis=1) * 1000
    assert np.median(shift_mm) < 4.0 and np.percentile(shift_mm, 90) < 10.0

    # and the fit runs on the imported model: a grey render of its mesh is fitted within a few pixels
    view, K = neutral_views(flame, views=[(10.0, 5.0)])[0]
    image = mesh_renderer(flame)(view, K, 512, 512)
    fit = fit_head(detect_landmarks(image).points, HeadModel(flame), 512, 512)
    assert fit.error_px < 4.0


def test_calibrate_landmarks_refuses_a_model_that_is_not_a_face(tmp_path, capsys):
    pkl = write_chumpy_pickle(tmp_path / "noise.pkl", flame_arrays(0))
    out = tmp_path / "noise.npz"
    assert main(["head", "import-flame", str(pkl), "-o", str(out), "--no-landmarks"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["head", "calibrate-landmarks", str(out)]) == 2  # CalibrationError is a user error
    assert "found the face in only 0 of 10 renders" in capsys.readouterr().err
    assert out.read_bytes() == before  # nothing rewritten
