"""Our Gaussian PLY: exact Inria layout seen by plyfile, bit-exact round trips, foreign PLYs, atomic writes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from plyfile import PlyData

from pointillist.avatar import ply as ply_module
from pointillist.avatar.gaussians import SH_C0, AvatarFormatError, Binding, Gaussians
from pointillist.avatar.ply import gaussians_from_ply_bytes, gaussians_to_ply_bytes, property_names, read_gaussian_ply, write_gaussian_ply

from .synthetic import INRIA_BASE, INRIA_TAIL, make_avatar, make_gaussians, write_inria_ply


def test_plyfile_sees_exactly_the_inria_layout(tmp_path):
    avatar = make_avatar(n=50, sh_degree=3)
    g = avatar.gaussians
    write_gaussian_ply(tmp_path / "a.ply", g, avatar.binding)
    ply = PlyData.read(str(tmp_path / "a.ply"))
    assert [e.name for e in ply.elements] == ["vertex"] and not ply.text and ply.byte_order == "<"
    v = ply["vertex"]
    names = [p.name for p in v.properties]
    expected = INRIA_BASE + [f"f_rest_{i}" for i in range(45)] + INRIA_TAIL + ["binding_0", "bary_0", "bary_1", "bary_2"]
    assert names == expected == property_names(15, True)
    assert all(v[p].dtype == np.dtype("<f4") for p in names if p != "binding_0")
    assert v["binding_0"].dtype == np.dtype("<i4")
    # values land in the right columns: raw parameters, channel-major f_rest (f_rest_{c*K + k})
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), g.means)
    assert v["f_rest_16"][3] == g.sh_rest[3, 1, 1]  # c=1, k=1 -> 1*15 + 1
    assert v["f_rest_44"][7] == g.sh_rest[7, 14, 2]
    np.testing.assert_array_equal(v["opacity"], g.opacity_logits)
    np.testing.assert_array_equal(np.stack([v[f"rot_{i}"] for i in range(4)], 1), g.quats)
    np.testing.assert_array_equal(np.stack([v[f"scale_{i}"] for i in range(3)], 1), g.log_scales)
    np.testing.assert_array_equal(v["binding_0"], avatar.binding.triangles)
    assert not np.any(v["nx"]) and not np.any(v["ny"]) and not np.any(v["nz"])


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
@pytest.mark.parametrize("bound", [True, False])
def test_round_trip_is_bit_exact(tmp_path, sh_degree, bound):
    avatar = make_avatar(n=64, sh_degree=sh_degree, seed=sh_degree)
    write_gaussian_ply(tmp_path / "a.ply", avatar.gaussians, avatar.binding if bound else None)
    g, binding = read_gaussian_ply(tmp_path / "a.ply")
    for field in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        got = getattr(g, field)
        assert got.dtype == np.float32 and np.array_equal(got, getattr(avatar.gaussians, field)), field
    assert g.sh_degree == sh_degree
    if bound:
        assert binding.triangles.dtype == np.int64 and np.array_equal(binding.triangles, avatar.binding.triangles)
        assert np.array_equal(binding.barycentrics, avatar.binding.barycentrics)
    else:
        assert binding is None
    # in-memory bytes (zip members) are the same bytes as the file
    assert gaussians_to_ply_bytes(avatar.gaussians, avatar.binding if bound else None) == (tmp_path / "a.ply").read_bytes()


def test_empty_point_cloud_round_trips(tmp_path):
    g = make_gaussians(0, sh_degree=2)
    write_gaussian_ply(tmp_path / "empty.ply", g, Binding(np.zeros(0, np.int64), np.zeros((0, 3), np.float32)))
    back, binding = read_gaussian_ply(tmp_path / "empty.ply")
    assert back.num == 0 and back.sh_rest.shape == (0, 8, 3) and binding.triangles.shape == (0,)


@pytest.mark.parametrize("sh_rest_props, degree", [(0, 0), (9, 1), (24, 2), (45, 3)])
def test_plain_inria_ply_from_an_independent_writer_loads(tmp_path, sh_rest_props, degree):
    cols = write_inria_ply(tmp_path / "plain.ply", 20, sh_rest_props=sh_rest_props)
    g, binding = read_gaussian_ply(tmp_path / "plain.ply")
    assert binding is None and g.num == 20 and g.sh_degree == degree
    np.testing.assert_array_equal(g.means[:, 1], cols["y"])
    np.testing.assert_array_equal(g.opacity_logits, cols["opacity"])
    if degree:
        k = sh_rest_props // 3
        np.testing.assert_array_equal(g.sh_rest[:, k - 1, 2], cols[f"f_rest_{3 * k - 1}"])  # last coeff, blue


def test_foreign_variants_load(tmp_path):
    # GaussianAvatars: float binding_0 after the Inria properties, no barycentrics
    write_inria_ply(tmp_path / "ga.ply", 20, extra={"binding_0": np.arange(20, dtype=np.float32) * 3})
    g, binding = read_gaussian_ply(tmp_path / "ga.ply")
    assert binding.triangles.tolist() == list(range(0, 60, 3)) and binding.triangles.dtype == np.int64
    assert binding.barycentrics is None
    # no normals, ASCII, big endian, double precision
    for kwargs in ({"normals": False}, {"text": True}, {"byte_order": ">"}):
        cols = write_inria_ply(tmp_path / "v.ply", 7, **kwargs)
        g, _ = read_gaussian_ply(tmp_path / "v.ply")
        np.testing.assert_array_equal(g.means[:, 0], cols["x"]), kwargs
    avatar = make_avatar(n=5, sh_degree=0)
    rows = ply_module.vertex_rows(avatar.gaussians)
    doubles = rows.astype([(name, "<f8") for name in rows.dtype.names])
    from plyfile import PlyElement

    PlyData([PlyElement.describe(doubles, "vertex")]).write(str(tmp_path / "f8.ply"))
    g, _ = read_gaussian_ply(tmp_path / "f8.ply")
    np.testing.assert_array_equal(g.means, avatar.gaussians.means)


def test_gaussian_avatars_layout_writer(tmp_path):
    avatar = make_avatar(n=10, sh_degree=1)
    write_gaussian_ply(tmp_path / "ga.ply", avatar.gaussians, avatar.binding, layout="gaussian_avatars")
    v = PlyData.read(str(tmp_path / "ga.ply"))["vertex"]
    assert [p.name for p in v.properties][-2:] == ["rot_3", "binding_0"] and v["binding_0"].dtype == np.dtype("<f4")
    _, binding = read_gaussian_ply(tmp_path / "ga.ply")
    assert np.array_equal(binding.triangles, avatar.binding.triangles) and binding.barycentrics is None


def test_writing_a_binding_without_barycentrics_is_refused(tmp_path):
    g = make_gaussians(4)
    with pytest.raises(AvatarFormatError, match="bary"):
        write_gaussian_ply(tmp_path / "a.ply", g, Binding(np.arange(4), None))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.ply"
    first = make_avatar(n=20, seed=1)
    write_gaussian_ply(path, first.gaussians, first.binding)
    before = path.read_bytes()

    def broken(stream, rows):
        stream.write(b"ply\nformat binary_little_endian 1.0\n")  # half a file...
        raise OSError("disk full")

    monkeypatch.setattr(ply_module, "write_ply_rows", broken)
    with pytest.raises(OSError, match="disk full"):
        write_gaussian_ply(path, make_gaussians(30))
    assert [p.name for p in tmp_path.iterdir()] == ["a.ply"] and path.read_bytes() == before


def test_activations_live_on_gaussians():
    g = Gaussians(means=np.zeros((2, 3), np.float32), log_scales=np.log(np.array([[0.01, 0.02, 0.03]] * 2, np.float32)),
                  quats=np.array([[2, 0, 0, 0], [0, 0, 0, 0]], np.float32), opacity_logits=np.array([0.0, 100.0], np.float32),
                  sh_dc=np.array([[0.0, 1.0, -10.0]] * 2, np.float32), sh_rest=np.zeros((2, 0, 3), np.float32))
    np.testing.assert_allclose(g.scales()[0], [0.01, 0.02, 0.03], rtol=1e-6)
    np.testing.assert_allclose(g.opacities(), [0.5, 1.0])
    np.testing.assert_allclose(g.normalized_quats(), [[1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(g.colors()[0], [0.5, 0.5 + SH_C0, 0.0], rtol=1e-6)
    assert g.num == 2 and g.sh_degree == 0


def test_package_and_ply_module_do_not_import_torch():
    code = ("import sys; import pointillist.avatar, pointillist.avatar.ply, pointillist.avatar.gaussians; "
            "bad = [m for m in ('torch', 'scipy', 'PIL') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(ply_module.Path(ply_module.__file__).parents[2])})


def test_bytes_reader_names_the_member():
    with pytest.raises(AvatarFormatError, match="bundle.zip/avatar.ply: not a PLY"):
        gaussians_from_ply_bytes(b"solid ascii stl", "bundle.zip/avatar.ply")
