"""FLAME conversion: Python-2 chumpy pickles without chumpy, equivalence with smplx, GaussianAvatars' teeth,
refusing unsafe pickles, and clear errors for broken files."""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from pointillist.head import safe_unpickle
from pointillist.head.data import JOINT_NAMES, HeadModelData, HeadModelError
from pointillist.head.flame import (
    LIP_OUTSIDE_RING_LOWER,
    LIP_OUTSIDE_RING_UPPER,
    FlameFormatError,
    _guess_version,
    convert_flame,
    import_flame,
)
from pointillist.head.model import HeadModel

from .flame_fixture import F, V, Ch, Select, dumps_python2, flame_arrays, flame_payload, write_chumpy_pickle, write_numpy_pickle

#: sha256 of GaussianAvatars' 168 teeth triangles (local ids, int64 little-endian, their order), checked
#: triangle by triangle against `FlameHead.add_teeth` in ShenhanQian/GaussianAvatars flame_model/flame.py.
GA_TEETH_FACES_SHA256 = "c68158e59906bf9dd28654a0058caa7b60d8ee7561590de4b405aa78ec6dbd13"
#: A few of those triangles, by position in the teeth block (local vertex ids).
GA_TEETH_FACES_SAMPLE = {
    0: [0, 31, 30], 14: [7, 8, 37], 27: [14, 44, 43], 28: [60, 75, 76], 56: [75, 30, 76], 70: [82, 37, 38],
    83: [88, 44, 89], 84: [45, 46, 15], 98: [52, 23, 22], 112: [90, 106, 105], 140: [105, 106, 45], 167: [118, 119, 59],
}


@pytest.fixture(scope="module")
def flame(tmp_path_factory):
    root = tmp_path_factory.mktemp("flame")
    arrays = flame_arrays()
    pkl = write_chumpy_pickle(root / "generic_model.pkl", arrays)
    return arrays, pkl, convert_flame(pkl, add_teeth=False), convert_flame(pkl)


# ---------------------------------------------------------------------------------------- conversion
def test_fixture_is_a_python2_chumpy_pickle(flame):
    _, pkl, _, _ = flame
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pkl.read_bytes())]
    names = {arg for op, arg in ops if op == "GLOBAL"}
    assert {"chumpy.ch Ch", "scipy.sparse.csc csc_matrix", "numpy.core.multiarray _reconstruct", "__builtin__ set"} <= names
    assert "BINSTRING" in {op for op, _ in ops} and not any(n.startswith("_codecs") for n in names)
    assert not any(m == "chumpy" or m.startswith("chumpy.") for m in sys.modules)


@pytest.mark.parametrize("protocol", [1, 2])
def test_converts_without_chumpy_and_round_trips(flame, tmp_path, protocol, capsys):
    arrays, pkl, _, _ = flame
    if protocol != 2:  # protocol 1 rebuilds objects through copy_reg._reconstructor
        pkl = write_chumpy_pickle(tmp_path / "generic_model.pkl", arrays, protocol=protocol)
    out = tmp_path / "out" / "flame.npz"
    data = import_flame(pkl, out, add_teeth=False)
    assert capsys.readouterr() == ("", "")
    assert sorted(p.name for p in out.parent.iterdir()) == ["flame.npz"]  # atomic: no temp file left
    loaded = HeadModelData.load(out)
    assert loaded.model_id == data.model_id == "flame2020"
    assert (loaded.num_vertices, loaded.num_faces, loaded.num_shape, loaded.num_expr) == (V, F, 300, 100)
    np.testing.assert_array_equal(loaded.faces, arrays["f"].astype(np.int64))
    np.testing.assert_array_equal(loaded.vertices, arrays["v_template"].astype(np.float32))
    np.testing.assert_array_equal(loaded.shape_dirs, arrays["shapedirs"][:, :, :300].astype(np.float32))
    np.testing.assert_array_equal(loaded.expr_dirs, arrays["shapedirs"][:, :, 300:].astype(np.float32))
    np.testing.assert_array_equal(loaded.joint_regressor, arrays["J_regressor"].astype(np.float32))
    np.testing.assert_array_equal(loaded.lbs_weights, arrays["weights"].astype(np.float32))
    # pose_dirs[9*(j-1) + 3*r + c, 3*v + k] multiplies (R_j - I)[r, c] for vertex v, coordinate k
    v, k, m = 1234, 2, 17
    assert loaded.pose_dirs[m, 3 * v + k] == np.float32(arrays["posedirs"][v, k, m])
    assert loaded.shape_names[:2] == ["Shape000", "Shape001"] and loaded.expr_names[-1] == "Exp099"
    assert loaded.meta["source_sha256"] == hashlib.sha256(pkl.read_bytes()).hexdigest()
    assert loaded.meta["flame_version"] == "flame2020" and loaded.part_names == ["skin", "teeth_upper", "teeth_lower"]
    assert (loaded.face_parts == 0).all()


def test_fewer_components_and_version_from_name(flame, tmp_path):
    arrays, pkl, _, _ = flame
    named = tmp_path / "flame2023.pkl"
    named.write_bytes(pkl.read_bytes())
    data = convert_flame(named, n_shape=100, n_expr=50)
    assert data.model_id == "flame2023-teeth" and (data.num_shape, data.num_expr) == (100, 50)
    np.testing.assert_array_equal(data.expr_dirs[:V], arrays["shapedirs"][:, :, 300:350].astype(np.float32))
    assert _guess_version(Path("FLAME2020/generic_model.pkl"))[0] == "flame2020"
    assert _guess_version(Path("downloads/FLAME_2023/flame2023_no_jaw.pkl"))[0] == "flame2023"
    assert _guess_version(Path("x/generic_model.pkl"))[0] == "flame2020"
    with pytest.raises(ValueError, match="n_shape"):
        convert_flame(pkl, n_shape=301)
    with pytest.raises(FlameFormatError, match="holds 100 expression components; n_expr=150"):
        convert_flame(pkl, n_expr=150)


@pytest.mark.parametrize("protocol", [2, 5])
def test_chumpy_free_python3_pickles_convert(flame, tmp_path, protocol):
    """FLAME files re-saved without chumpy (numpy arrays, today's scipy sparse) by Python 3, any protocol."""
    arrays, _, plain, _ = flame
    payload = {**arrays, "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]), "bs_style": "lbs", "bs_type": "lrotmin"}
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    data = convert_flame(path, add_teeth=False)
    for name in ("vertices", "faces", "shape_dirs", "expr_dirs", "pose_dirs", "joint_regressor", "lbs_weights"):
        np.testing.assert_array_equal(getattr(data, name), getattr(plain, name), err_msg=name)


def test_matches_smplx_flame_at_zero_expression(flame, tmp_path):
    smplx = pytest.importorskip("smplx")
    arrays, _, data, _ = flame
    model_dir = tmp_path / "models" / "flame"
    model_dir.mkdir(parents=True)
    write_numpy_pickle(model_dir / "FLAME_NEUTRAL.pkl", arrays)  # smplx reads plain pickles; this is the oracle's copy
    with open(model_dir / "flame_static_embedding.pkl", "wb") as fh:
        pickle.dump({"lmk_face_idx": np.arange(51, dtype=np.int64), "lmk_b_coords": np.full((51, 3), 1 / 3)}, fh)
    ref = smplx.create(str(model_dir.parent), model_type="flame", gender="neutral", num_betas=300, num_expression_coeffs=100,
                       use_face_contour=False, dtype=torch.float64)
    head = HeadModel(data).double()
    g = torch.Generator().manual_seed(0)
    betas = torch.randn(3, 300, generator=g, dtype=torch.float64)
    pose = torch.randn(3, 5, 3, generator=g, dtype=torch.float64) * 0.3  # global, neck, jaw, left eye, right eye
    transl = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.05
    out = ref(betas=betas, expression=torch.zeros(3, 100, dtype=torch.float64), global_orient=pose[:, 0], neck_pose=pose[:, 1],
              jaw_pose=pose[:, 2], leye_pose=pose[:, 3], reye_pose=pose[:, 4], transl=transl)
    ours = head(shape=betas, pose=pose, translation=transl)
    assert (out.vertices - out.vertices[:, :1]).abs().max() > 0.05  # a real deformation, not a trivial match
    torch.testing.assert_close(ours.vertices, out.vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.joints, out.joints[:, :5], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------- teeth
def test_teeth_follow_gaussian_avatars_layout(flame):
    arrays, _, plain, data = flame
    assert data.model_id == "flame2020-teeth"
    assert (data.num_vertices, data.num_faces) == (V + 120, F + 168) == (5143, 10144)
    np.testing.assert_array_equal(data.faces[:F], plain.faces)
    np.testing.assert_array_equal(data.vertices[:V], plain.vertices)
    teeth = data.faces[F:] - V
    assert hashlib.sha256(teeth.astype("<i8").tobytes()).hexdigest() == GA_TEETH_FACES_SHA256
    for i, tri in GA_TEETH_FACES_SAMPLE.items():
        assert teeth[i].tolist() == tri, i
    assert data.part_names == ["skin", "teeth_upper", "teeth_lower"]
    assert data.part_mask("teeth_upper")[F:F + 84].all() and data.part_mask("teeth_lower")[F + 84:].all()
    assert data.part_mask("skin").sum() == F
    rows = {name: V + 15 * i + np.arange(15) for i, name in enumerate(
        ["upper_root", "lower_root", "upper_edge", "lower_edge", "upper_root_back", "upper_edge_back", "lower_root_back", "lower_edge_back"])}
    upper = np.concatenate([rows[n] for n in rows if n.startswith("upper")])
    lower = np.concatenate([rows[n] for n in rows if n.startswith("lower")])
    assert set(np.flatnonzero(data.region_mask("teeth_upper"))) == set(upper) == set(np.unique(data.faces[F:F + 84]))
    assert set(np.flatnonzero(data.region_mask("teeth_lower"))) == set(lower) == set(np.unique(data.faces[F + 84:]))
    # geometry: rows follow the lip rings in x, offsets are multiples of the mean lip gap d
    up_lip, low_lip = arrays["v_template"][list(LIP_OUTSIDE_RING_UPPER)], arrays["v_template"][list(LIP_OUTSIDE_RING_LOWER)]
    d = np.linalg.norm(up_lip - low_lip, axis=1).mean()
    vt = data.vertices.astype(np.float64)
    np.testing.assert_allclose(vt[rows["upper_edge"], 0], (up_lip[:, 0] + low_lip[:, 0]) / 2, atol=1e-6)
    np.testing.assert_allclose(vt[rows["upper_edge"], 2], (up_lip[:, 2] + low_lip[:, 2]) / 2 - 1.5 * d, atol=1e-6)
    np.testing.assert_allclose(vt[rows["upper_edge"], 1], ((up_lip[:, 1] + low_lip[:, 1]) / 2).mean() + 0.1 * d, atol=1e-6)
    np.testing.assert_allclose(vt[rows["upper_root"]] - vt[rows["upper_edge"]], np.tile([0, 2 * d, 0], (15, 1)), atol=1e-6)
    np.testing.assert_allclose(vt[rows["lower_edge"]] - vt[rows["upper_edge"]], np.tile([0, -0.2 * d, -0.4 * d], (15, 1)), atol=1e-6)
    np.testing.assert_allclose(vt[rows["lower_root"]] - vt[rows["lower_edge"]], np.tile([0, -2 * d, 0], (15, 1)), atol=1e-6)
    for front in ("upper_root", "upper_edge", "lower_root", "lower_edge"):
        np.testing.assert_allclose(vt[rows[front + "_back"]] - vt[rows[front]], np.tile([0, 0, -d], (15, 1)), atol=1e-6)
    # bases: lips' mean identity shape, nothing else
    lip_shape = (arrays["shapedirs"][list(LIP_OUTSIDE_RING_UPPER), :, :300] + arrays["shapedirs"][list(LIP_OUTSIDE_RING_LOWER), :, :300]) / 2
    for row in rows.values():
        np.testing.assert_allclose(data.shape_dirs[row], lip_shape, atol=1e-7)
    assert not data.expr_dirs[V:].any() and not data.joint_regressor[:, V:].any()
    assert not data.pose_dirs.reshape(36, -1, 3)[:, V:].any()
    np.testing.assert_array_equal(data.pose_dirs.reshape(36, -1, 3)[:, :V], plain.pose_dirs.reshape(36, -1, 3))
    assert (data.lbs_weights[upper, JOINT_NAMES.index("neck")] == 1).all() and (data.lbs_weights[lower, JOINT_NAMES.index("jaw")] == 1).all()


def test_teeth_move_with_their_joints(flame):
    _, _, _, data = flame
    head = HeadModel(data)
    upper, lower = np.flatnonzero(data.region_mask("teeth_upper")), np.flatnonzero(data.region_mask("teeth_lower"))

    def moved(**kwargs):
        return (head(**kwargs).vertices[0] - head().vertices[0]).norm(dim=1).numpy()

    for joint, upper_moves in (("jaw", False), ("neck", True), ("root", True)):
        pose = torch.zeros(1, 5, 3)
        pose[0, JOINT_NAMES.index(joint), 0] = 0.3
        m = moved(pose=pose)
        assert (m[lower] > 1e-4).all(), joint
        assert (m[upper] > 1e-4).all() if upper_moves else (m[upper] == 0).all(), joint
    m = moved(expression=torch.ones(1, 100))
    assert (m[V:] == 0).all() and m[:V].max() > 0  # teeth have no expression directions
    m = moved(shape=torch.ones(1, 300))
    assert (m[V:] > 0).all()  # but follow the lips' identity shape


# ---------------------------------------------------------------------------------------- unsafe pickles
def _global(module: str, name: str, arg: str) -> bytes:
    """Protocol-0 pickle calling module.name(arg): the classic pickle exploit, names written verbatim."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


class _Exploit:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _malicious(kind: str, sentinel: Path) -> tuple[bytes, str]:
    """(pickle bytes, the global the refusal must name)."""
    touch = f"touch {sentinel}"
    code = f"open({str(sentinel)!r}, 'w').close()"
    if kind == "os.system":
        return _global("os", "system", touch), "os.system"
    if kind == "posix.system":
        return _global("posix", "system", touch), "posix.system"
    if kind == "builtins.eval":
        return _global("builtins", "eval", code), "builtins.eval"
    if kind == "__builtin__.exec":  # Python 2 spelling of the module
        return _global("__builtin__", "exec", code), "__builtin__.exec"
    if kind == "subprocess.Popen":
        return pickle.dumps(_Exploit(subprocess.Popen, ["touch", str(sentinel)]), protocol=4), "subprocess.Popen"
    if kind == "builtins.exec protocol 4":  # STACK_GLOBAL
        return pickle.dumps(_Exploit(exec, code), protocol=4), "builtins.exec"
    if kind == "nested in chumpy state":  # a well-formed FLAME file with one poisoned chumpy value
        payload = flame_payload(flame_arrays())
        payload["shapedirs"] = Ch(_Exploit(os.system, touch))
        return dumps_python2(payload), "posix.system"
    if kind == "nested in sparse state":
        payload = {"J_regressor": scipy.sparse.csc_matrix(np.eye(3))}
        payload["J_regressor"].maxprint = _Exploit(eval, code)
        return pickle.dumps(payload, protocol=2), "__builtin__.eval"  # protocol 2 writes Python 2 names
    if kind == "reconstructor of a real class":  # allowed helper, disallowed argument
        return b"ccopy_reg\n_reconstructor\n(cnumpy\nndarray\nc__builtin__\nobject\nNtR.", "copy_reg._reconstructor"
    if kind == "numpy object array":
        return pickle.dumps({"v_template": np.array([1, "x"], dtype=object)}, protocol=2), "numpy.dtype"
    raise AssertionError(kind)


MALICIOUS = ["os.system", "posix.system", "builtins.eval", "__builtin__.exec", "subprocess.Popen", "builtins.exec protocol 4",
             "nested in chumpy state", "nested in sparse state", "reconstructor of a real class", "numpy object array"]


@pytest.mark.parametrize("kind", MALICIOUS)
def test_malicious_pickles_never_run(tmp_path, kind):
    sentinel = tmp_path / "SENTINEL"
    payload, refused = _malicious(kind, sentinel)
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(payload)
    with pytest.raises(FlameFormatError, match="unsafe pickle: refused") as info:
        convert_flame(bad)
    assert refused in str(info.value)
    assert not sentinel.exists()
    assert not any(m == "chumpy" or m.startswith("chumpy.") for m in sys.modules)


def test_a_pickle_cannot_modify_the_unpickler(tmp_path, flame):
    _, pkl, _, _ = flame
    attempts = [  # BUILD with slot state: setattr on an allowed class or callable
        b"cscipy.sparse\ncsc_matrix\n(N}Vdense\nNstb.",
        b"cchumpy.ch\nCh\n(N}Vvalue\nNstb.",
        b"c_codecs\nencode\n(N}V_fn\nNstb.",
        b"ccopy_reg\n_reconstructor\n}V_fn\nNsb.",
        b"cnumpy\ndtype\n(N}V_fn\nNstb.",
    ]
    before = {cls: dict(vars(cls)) for cls in (safe_unpickle.SparseStandIn, safe_unpickle.ChumpyStandIn, safe_unpickle._Guarded)}
    for i, payload in enumerate(attempts):
        bad = tmp_path / f"tamper{i}.pkl"
        bad.write_bytes(payload)
        with pytest.raises(FlameFormatError):
            convert_flame(bad)
    assert {cls: dict(vars(cls)) for cls in before} == before
    assert convert_flame(pkl, add_teeth=False).num_vertices == V  # still works


def test_sparse_stand_in_matches_scipy():
    rng = np.random.default_rng(0)
    dense = np.where(rng.random((5, 40)) < 0.2, rng.random((5, 40)), 0.0)
    coo = scipy.sparse.coo_matrix((np.array([1.0, 2.0, 3.0]), (np.array([0, 0, 4]), np.array([3, 3, 39]))), shape=(5, 40))
    for m in (scipy.sparse.csc_matrix(dense), scipy.sparse.csr_matrix(dense), scipy.sparse.coo_matrix(dense), coo,
              scipy.sparse.csc_array(dense), scipy.sparse.csr_array(dense)):
        loaded = safe_unpickle.safe_load(pickle.dumps(m, protocol=2))
        np.testing.assert_array_equal(loaded.dense(), m.toarray())  # duplicates in coo add up, as in scipy
    broken = safe_unpickle.safe_load(pickle.dumps(scipy.sparse.csc_matrix(dense), protocol=2))
    broken.recorded()["indices"] = broken.recorded()["indices"] + 100
    with pytest.raises(safe_unpickle.StandInError, match="out-of-range"):
        broken.dense()


# ---------------------------------------------------------------------------------------- broken files
def test_unreadable_files_give_clear_errors(tmp_path, flame):
    _, pkl, _, _ = flame
    good = pkl.read_bytes()
    cases = {
        "empty.pkl": (b"", "file is empty"),
        "truncated_early.pkl": (good[:100], "truncated"),
        "truncated_mid.pkl": (good[: len(good) // 2], "truncated"),
        "truncated_end.pkl": (good[:-1], "truncated"),
        "text.pkl": (b"hello, this is not a pickle", "not a pickle file"),
        "zip.pkl": (b"PK\x03\x04" + bytes(60), r"not a pickle file \(it looks like a zip"),
        "list.pkl": (pickle.dumps([1, 2, 3], protocol=2), "expected a dict of FLAME arrays, got list"),
        "missing.pkl": (pickle.dumps({"v_template": np.zeros((V, 3))}, protocol=2), "missing key 'f'"),
        "string.pkl": (pickle.dumps({k: "x" for k in ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")}), "key 'v_template' is a str"),
    }
    for name, (payload, message) in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(FlameFormatError, match=message):
            convert_flame(tmp_path / name)
    with pytest.raises(FlameFormatError, match="file not found"):
        convert_flame(tmp_path / "nope.pkl")
    with pytest.raises(FlameFormatError, match="is a directory"):
        convert_flame(tmp_path)
    assert issubclass(FlameFormatError, HeadModelError)


def test_wrong_contents_name_the_key(tmp_path):
    base = flame_arrays(seed=1)
    edits = {
        "posedirs": (lambda a: a["posedirs"][:, :, :30], r"key 'posedirs' has shape \(5023, 3, 30\); expected \(5023, 3, 36\)"),
        "v_template": (lambda a: a["v_template"][:5000], r"key 'v_template' has shape \(5000, 3\)"),
        "shapedirs": (lambda a: a["shapedirs"][:, :, :200], r"key 'shapedirs' has shape \(5023, 3, 200\)"),
        "weights": (lambda a: np.full((V, 5), np.nan), "key 'weights' contains NaN"),
        "f": (lambda a: a["f"] + V, "key 'f' must hold vertex indices"),
        "kintree_table": (lambda a: np.array([[-1, 0, 0, 1, 1], [0, 1, 2, 3, 4]]), "key 'kintree_table' is not FLAME's joint tree"),
        "J_regressor": (lambda a: a["J_regressor"] * 2, "'joint_regressor': rows must sum to 1"),
    }
    for key, (edit, message) in edits.items():
        arrays = dict(base, **{key: edit(base)})
        path = write_numpy_pickle(tmp_path / f"{key}.pkl", arrays)
        with pytest.raises(FlameFormatError, match=message):
            convert_flame(path, add_teeth=False)
    payload = flame_payload(base)
    payload["shapedirs"] = Select(Ch(base["shapedirs"]), np.arange(10))
    (tmp_path / "expr.pkl").write_bytes(dumps_python2(payload))
    with pytest.raises(FlameFormatError, match=r"key 'shapedirs' is a chumpy.reordering.Select object without a stored 'x'"):
        convert_flame(tmp_path / "expr.pkl")
    payload = dict(flame_payload(base), bs_type="lrotmin_v2")
    (tmp_path / "bs.pkl").write_bytes(dumps_python2(payload))
    with pytest.raises(FlameFormatError, match="key 'bs_type' is 'lrotmin_v2'"):
        convert_flame(tmp_path / "bs.pkl")
