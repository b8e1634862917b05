"""FLAME conversion: chumpy pickles without chumpy, equivalence with smplx, teeth, refusing unsafe pickles."""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pointillist.head.data import JOINT_NAMES, HeadModelData
from pointillist.head.flame import LIP_OUTSIDE_RING_LOWER, LIP_OUTSIDE_RING_UPPER, FlameFormatError, convert_flame, import_flame
from pointillist.head.model import HeadModel

from .flame_fixture import F, V, flame_arrays, write_chumpy_pickle, write_numpy_pickle


@pytest.fixture(scope="module")
def flame_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("flame")
    arrays = flame_arrays()
    chumpy_pkl = write_chumpy_pickle(root / "generic_model.pkl", arrays)
    smplx_dir = root / "smplx" / "flame"
    smplx_dir.mkdir(parents=True)
    write_numpy_pickle(smplx_dir / "FLAME_NEUTRAL.pkl", arrays)
    with open(smplx_dir / "flame_static_embedding.pkl", "wb") as fh:
        pickle.dump({"lmk_face_idx": np.arange(51, dtype=np.int64), "lmk_b_coords": np.full((51, 3), 1 / 3)}, fh)
    return arrays, chumpy_pkl, root / "smplx"


def test_converts_without_chumpy_and_round_trips(flame_files, tmp_path):
    arrays, pkl, _ = flame_files
    import sys

    assert "chumpy" not in sys.modules
    data = import_flame(pkl, tmp_path / "flame.npz", add_teeth=False)
    loaded = HeadModelData.load(tmp_path / "flame.npz")
    assert loaded.model_id == "flame2020" and loaded.num_vertices == V and loaded.num_faces == F
    np.testing.assert_allclose(loaded.vertices, arrays["v_template"], atol=1e-7)
    np.testing.assert_allclose(loaded.expr_dirs, arrays["shapedirs"][:, :, 300:], atol=1e-9)
    np.testing.assert_allclose(loaded.joint_regressor, arrays["J_regressor"], atol=1e-7)
    assert loaded.expr_names[0] == "Exp000" and loaded.num_expr == 100 and loaded.num_shape == 300
    assert data.meta["source_sha256"] == loaded.meta["source_sha256"]


def test_matches_smplx_flame_at_zero_expression(flame_files):
    smplx = pytest.importorskip("smplx")
    arrays, pkl, smplx_root = flame_files
    head = HeadModel(convert_flame(pkl, add_teeth=False)).double()
    ref = smplx.create(str(smplx_root), model_type="flame", gender="neutral", num_betas=300, num_expression_coeffs=100,
                       use_face_contour=False, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    betas = torch.randn(2, 300, generator=g, dtype=torch.float64)
    pose = torch.randn(2, 5, 3, generator=g, dtype=torch.float64) * 0.3
    transl = torch.randn(2, 3, generator=g, dtype=torch.float64) * 0.05
    out = ref(betas=betas, expression=torch.zeros(2, 100, dtype=torch.float64), global_orient=pose[:, 0], neck_pose=pose[:, 1],
              jaw_pose=pose[:, 2], leye_pose=pose[:, 3], reye_pose=pose[:, 4], transl=transl)
    ours = head(shape=betas, pose=pose, translation=transl)
    torch.testing.assert_close(ours.vertices, out.vertices, atol=1e-6, rtol=0)  # float32 storage: µm


def test_teeth_follow_gaussian_avatars_layout(flame_files):
    arrays, pkl, _ = flame_files
    data = convert_flame(pkl)
    assert data.model_id == "flame2020-teeth"
    assert data.num_vertices == V + 120 and data.num_faces == F + 168
    teeth_faces = data.faces[F:]
    assert teeth_faces.min() >= V and len(np.unique(teeth_faces)) == 120
    assert data.part_mask("teeth_upper").sum() == 84 and data.part_mask("teeth_lower").sum() == 84
    # first teeth triangle and vertex rows in GaussianAvatars' order
    assert teeth_faces[0].tolist() == [V + 0, V + 31, V + 30]
    assert teeth_faces[84].tolist() == [V + 45, V + 46, V + 15]
    lips = (arrays["v_template"][list(LIP_OUTSIDE_RING_UPPER)] + arrays["v_template"][list(LIP_OUTSIDE_RING_LOWER)]) / 2
    np.testing.assert_allclose(data.vertices[V:V + 15, 0], lips[:, 0], atol=1e-6)  # rows follow the lip rings
    head = HeadModel(data)
    pose = torch.zeros(1, 5, 3)
    pose[0, JOINT_NAMES.index("jaw"), 0] = 0.3
    moved = (head(pose=pose).vertices[0] - head.v_template).norm(dim=1)
    upper = np.unique(data.faces[F:F + 84])
    lower = np.unique(data.faces[F + 84:])
    assert moved[upper].max() == 0 and (moved[lower] > 0).all()


@pytest.mark.parametrize("payload_kind", ["os.system", "posix.system", "subprocess.Popen", "builtins.eval", "builtins.exec", "nested"])
def test_malicious_pickles_never_run(tmp_path, payload_kind):
    sentinel = tmp_path / "SENTINEL"
    command = f"touch {sentinel}"

    class Exploit:
        def __reduce__(self):
            if payload_kind in ("os.system", "posix.system", "nested"):
                return (os.system, (command,))
            if payload_kind == "subprocess.Popen":
                return (subprocess.Popen, ([ "touch", str(sentinel)],))
            return (eval if payload_kind == "builtins.eval" else exec, (f"open({str(sentinel)!r}, 'w').close()",))

    obj = {"v_template": {"x": Exploit()}} if payload_kind == "nested" else Exploit()
    data = pickle.dumps(obj, protocol=2)
    if payload_kind == "posix.system":
        data = data.replace(os.system.__module__.encode(), b"posix")
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(data)
    with pytest.raises(FlameFormatError, match="unsafe pickle: refused"):
        convert_flame(bad)
    assert not sentinel.exists()


def test_unreadable_files_give_clear_errors(tmp_path, flame_files):
    _, pkl, _ = flame_files
    cases = {
        "empty.pkl": (b"", "empty"),
        "truncated.pkl": (pkl.read_bytes()[:5000], "not a readable FLAME pickle"),
        "text.pkl": (b"hello, this is not a pickle", "not a readable FLAME pickle"),
        "list.pkl": (pickle.dumps([1, 2, 3], protocol=2), "expected a dict"),
        "missing.pkl": (pickle.dumps({"v_template": np.zeros((V, 3))}, protocol=2), "missing key 'f'"),
    }
    for name, (payload, message) in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(FlameFormatError, match=message):
            convert_flame(tmp_path / name)
    wrong = flame_arrays()
    wrong["posedirs"] = wrong["posedirs"][:, :, :30]
    write_numpy_pickle(tmp_path / "wrong.pkl", wrong)
    with pytest.raises(FlameFormatError, match="'posedirs' has shape"):
        convert_flame(tmp_path / "wrong.pkl")
    with pytest.raises(FlameFormatError, match="not found"):
        convert_flame(tmp_path / "nope.pkl")
    assert not any(Path(tmp_path).glob("*.npz"))
