"""Bundles and PLYs: bit-exact round trips, independent readers, and every kind of bad input."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from pointillist.avatar import bundle as bundle_module
from pointillist.avatar.binding import closest_point_barycentrics
from pointillist.avatar.bundle import ZipLimits, read_bundle, write_bundle
from pointillist.avatar.gaussians import Avatar, AvatarFormatError, Binding, Gaussians, HeadIdentity, SourceInfo, validate_avatar
from pointillist.avatar.ply import property_names, read_gaussian_ply, write_gaussian_ply

INRIA_ORDER = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]


def make_avatar(n: int = 300, sh_rest: int = 15, seed: int = 0, with_source: bool = True) -> Avatar:
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    g = Gaussians(means=f32(n, 3) * 0.1, log_scales=f32(n, 3) - 6, quats=f32(n, 4), opacity_logits=f32(n),
                  sh_dc=f32(n, 3), sh_rest=f32(n, sh_rest, 3) * 0.1)
    bary = rng.dirichlet(np.ones(3), n).astype(np.float32)
    source = SourceInfo(image=rng.integers(0, 255, (32, 24, 3), dtype=np.uint8), matte=rng.integers(0, 255, (32, 24), dtype=np.uint8),
                        camera={"viewmat": np.eye(4).tolist(), "K": np.eye(3).tolist(), "width": 24, "height": 32},
                        expression=f32(10), pose=f32(5, 3)) if with_source else None
    return Avatar(gaussians=g, binding=Binding(triangles=rng.integers(0, 1000, n).astype(np.int64), barycentrics=bary),
                  identity=HeadIdentity(model_id="test-head", shape=f32(20), vertex_offsets=f32(50, 3) * 0.001),
                  source=source, meta={"seed": seed, "options": {"quality": "draft"}})


def assert_same(a: Avatar, b: Avatar) -> None:
    for field in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        assert np.array_equal(getattr(a.gaussians, field), getattr(b.gaussians, field)), field
    assert np.array_equal(a.binding.triangles, b.binding.triangles)
    assert np.array_equal(a.binding.barycentrics, b.binding.barycentrics)
    assert a.identity.model_id == b.identity.model_id
    assert np.array_equal(a.identity.shape, b.identity.shape)
    assert np.array_equal(a.identity.vertex_offsets, b.identity.vertex_offsets)
    if a.source is not None:
        assert np.array_equal(a.source.image, b.source.image) and np.array_equal(a.source.matte, b.source.matte)
        assert np.array_equal(a.source.expression, b.source.expression) and np.array_equal(a.source.pose, b.source.pose)
        assert a.source.camera == b.source.camera
    assert a.meta == b.meta


@pytest.mark.parametrize("suffix", ["", ".zip"])
@pytest.mark.parametrize("sh_rest", [0, 15])
def test_round_trip_is_bit_exact(tmp_path, suffix, sh_rest):
    avatar = make_avatar(sh_rest=sh_rest)
    path = write_bundle(avatar, tmp_path / f"avatar{suffix}", preview=np.zeros((8, 8, 3), np.uint8))
    assert_same(avatar, read_bundle(path))


def test_plyfile_reads_exact_inria_layout(tmp_path):
    avatar = make_avatar(sh_rest=15)
    write_gaussian_ply(tmp_path / "a.ply", avatar.gaussians, avatar.binding)
    ply = PlyData.read(str(tmp_path / "a.ply"))
    names = [p.name for p in ply["vertex"].properties]
    expected = INRIA_ORDER + [f"f_rest_{i}" for i in range(45)] + ["opacity", "scale_0", "scale_1", "scale_2",
                                                                   "rot_0", "rot_1", "rot_2", "rot_3", "binding_0", "bary_0", "bary_1", "bary_2"]
    assert names == expected == property_names(15, True)
    assert not ply.text and ply.byte_order == "<"
    v = ply["vertex"]
    # channel-major f_rest: f_rest_{c*K + k} is coefficient k of channel c
    assert v["f_rest_16"][3] == avatar.gaussians.sh_rest[3, 1, 1]
    assert v["opacity"][5] == avatar.gaussians.opacity_logits[5]
    assert v["binding_0"].dtype.kind == "i"


def write_independent_ply(path: Path, n: int, extra: dict[str, np.ndarray] | None = None, drop: str | None = None, sh_rest: int = 9) -> None:
    """A minimal Inria-style writer that shares no code with ours."""
    rng = np.random.default_rng(1)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(sh_rest)] + \
        ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    names = [p for p in names if p != drop]
    fields = [(p, "f4") for p in names] + [(k, v.dtype.str) for k, v in (extra or {}).items()]
    rows = np.zeros(n, dtype=fields)
    for p in names:
        rows[p] = rng.normal(size=n)
    for k, v in (extra or {}).items():
        rows[k] = v
    PlyData([PlyElement.describe(rows, "vertex")]).write(str(path))


def test_plain_inria_and_gaussian_avatars_plys_load(tmp_path):
    write_independent_ply(tmp_path / "plain.ply", 20)
    g, binding = read_gaussian_ply(tmp_path / "plain.ply")
    assert g.num == 20 and g.sh_degree == 1 and binding is None
    write_independent_ply(tmp_path / "ga.ply", 20, extra={"binding_0": np.arange(20, dtype=np.float32) * 3})
    g, binding = read_gaussian_ply(tmp_path / "ga.ply")
    assert binding.triangles.tolist() == list(range(0, 60, 3))


def test_closest_point_barycentrics_against_brute_force():
    rng = np.random.default_rng(3)
    tri = rng.normal(size=(200, 3, 3))
    points = rng.normal(size=(200, 3)) * 1.5
    bary = closest_point_barycentrics(points, tri)
    assert np.allclose(bary.sum(1), 1) and (bary >= 0).all()
    found = np.linalg.norm((tri * bary[..., None]).sum(1) - points, axis=1)
    grid = np.array([(u, v, 1 - u - v) for u in np.linspace(0, 1, 81) for v in np.linspace(0, 1, 81) if u + v <= 1 + 1e-12])
    samples = np.einsum("gk,nkc->ngc", grid, tri)
    brute = np.linalg.norm(samples - points[:, None], axis=2).min(1)
    assert (found <= brute + 1e-9).all() and (found >= brute - 0.02).all()


# ---------------------------------------------------------------------------------------- bad input
@pytest.fixture
def good_ply(tmp_path) -> Path:
    avatar = make_avatar(n=100, sh_rest=3)
    write_gaussian_ply(tmp_path / "good.ply", avatar.gaussians, avatar.binding)
    return tmp_path / "good.ply"


def test_truncated_ply(good_ply):
    data = good_ply.read_bytes()
    good_ply.write_bytes(data[: len(data) - 200])
    with pytest.raises(AvatarFormatError, match="truncated"):
        read_gaussian_ply(good_ply)
    good_ply.write_bytes(data[:40])
    with pytest.raises(AvatarFormatError, match="header"):
        read_gaussian_ply(good_ply)


def test_header_claims_more_vertices_than_present(good_ply):
    data = good_ply.read_bytes()
    good_ply.write_bytes(data.replace(b"element vertex 100", b"element vertex 900", 1))
    with pytest.raises(AvatarFormatError, match="header declares 900 vertices"):
        read_gaussian_ply(good_ply)


def test_missing_and_extra_properties(tmp_path):
    write_independent_ply(tmp_path / "missing.ply", 10, drop="opacity")
    with pytest.raises(AvatarFormatError, match="missing property opacity"):
        read_gaussian_ply(tmp_path / "missing.ply")
    write_independent_ply(tmp_path / "extra.ply", 10, extra={"red": np.zeros(10, np.uint8)})
    with pytest.raises(AvatarFormatError, match="unexpected property red"):
        read_gaussian_ply(tmp_path / "extra.ply")
    write_independent_ply(tmp_path / "odd_sh.ply", 10, sh_rest=7)
    with pytest.raises(AvatarFormatError, match="7 f_rest"):
        read_gaussian_ply(tmp_path / "odd_sh.ply")
    (tmp_path / "not.ply").write_bytes(b"\x89PNG not a ply")
    with pytest.raises(AvatarFormatError, match="not a PLY"):
        read_gaussian_ply(tmp_path / "not.ply")


@pytest.mark.parametrize("prop", ["x", "opacity", "scale_1", "rot_0", "f_dc_2", "bary_0"])
def test_non_finite_values_name_the_property(tmp_path, prop):
    avatar = make_avatar(n=20, sh_rest=0, with_source=False)
    write_gaussian_ply(tmp_path / "a.ply", avatar.gaussians, avatar.binding)
    ply = PlyData.read(str(tmp_path / "a.ply"), mmap=False)
    ply["vertex"][prop][4] = np.inf if prop == "opacity" else np.nan
    ply.write(str(tmp_path / "a.ply"))
    with pytest.raises(AvatarFormatError, match=f"'{prop}' contains NaN or Inf"):
        read_gaussian_ply(tmp_path / "a.ply")


def test_binding_checks(tmp_path):
    avatar = make_avatar(n=20, sh_rest=0, with_source=False)
    with pytest.raises(AvatarFormatError, match="out of range"):
        validate_avatar(avatar, num_faces=10)
    bad = replace(avatar, binding=Binding(triangles=avatar.binding.triangles, barycentrics=avatar.binding.barycentrics * 2))
    with pytest.raises(AvatarFormatError, match="bary"):
        validate_avatar(bad)
    write_independent_ply(tmp_path / "neg.ply", 5, extra={"binding_0": np.array([0, 1, -2, 3, 4], np.float32)})
    with pytest.raises(AvatarFormatError, match="negative"):
        read_gaussian_ply(tmp_path / "neg.ply")
    write_independent_ply(tmp_path / "frac.ply", 5, extra={"binding_0": np.array([0, 1.5, 2, 3, 4], np.float32)})
    with pytest.raises(AvatarFormatError, match="whole triangle indices"):
        read_gaussian_ply(tmp_path / "frac.ply")


def test_manifest_checks(tmp_path):
    path = write_bundle(make_avatar(n=30, with_source=False), tmp_path / "b")
    manifest = json.loads((path / "avatar.json").read_text())
    for patch, message in (({"format_version": 99}, "unknown bundle format_version 99"),
                           ({"num_gaussians": 31}, "num_gaussians=31 but avatar.ply holds 30")):
        (path / "avatar.json").write_text(json.dumps({**manifest, **patch}))
        with pytest.raises(AvatarFormatError, match=message):
            read_bundle(path)
    (path / "avatar.json").write_text("{not json")
    with pytest.raises(AvatarFormatError, match="not valid JSON"):
        read_bundle(path)
    (path / "avatar.json").unlink()
    with pytest.raises(AvatarFormatError, match="missing avatar.json"):
        read_bundle(path)
    with pytest.raises(AvatarFormatError, match="no such bundle"):
        read_bundle(tmp_path / "nowhere")


def test_unsafe_zips_are_refused(tmp_path):
    good = write_bundle(make_avatar(n=30, with_source=False), tmp_path / "good.zip")
    members = {i.filename: zipfile.ZipFile(good).read(i) for i in zipfile.ZipFile(good).infolist()}
    for evil_name, message in (("../evil.txt", "unsafe path"), ("/etc/evil", "unsafe path"), ("a/../../x", "unsafe path")):
        evil = tmp_path / "evil.zip"
        with zipfile.ZipFile(evil, "w") as zf:
            for name, payload in members.items():
                zf.writestr(name, payload)
            zf.writestr(evil_name, b"x")
        with pytest.raises(AvatarFormatError, match=message):
            read_bundle(evil)
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("avatar.ply")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(AvatarFormatError, match="symbolic link"):
        read_bundle(link)
    (tmp_path / "corrupt.zip").write_bytes(good.read_bytes()[:100])
    with pytest.raises(AvatarFormatError, match="not a readable zip"):
        read_bundle(tmp_path / "corrupt.zip")


def test_zip_bomb_is_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    chunk = b"\0" * (1 << 20)
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("avatar.ply", "w") as fh:
            for _ in range(64):  # 64 MiB of zeros, ~64 KiB compressed
                fh.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(AvatarFormatError, match="zip bomb"):
        read_bundle(bomb)
    with pytest.raises(AvatarFormatError, match="uncompressed"):
        read_bundle(bomb, limits=ZipLimits(max_entry_bytes=1 << 20, max_ratio=1e9))


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    avatar = make_avatar(n=30, with_source=False)
    original = bundle_module.os.fsync
    calls = {"n": 0}

    def flaky_fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return original(fd)

    monkeypatch.setattr(bundle_module.os, "fsync", flaky_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(avatar, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(bundle_module.os, "fsync", original)
    first = write_bundle(avatar, tmp_path / "b")
    with pytest.raises(FileExistsError):
        write_bundle(avatar, first)
    bad = replace(avatar, gaussians=replace(avatar.gaussians, means=avatar.gaussians.means * np.nan))
    with pytest.raises(AvatarFormatError, match="means"):
        write_bundle(bad, tmp_path / "b", overwrite=True)
    assert_same(avatar, read_bundle(first))  # the old bundle survived the failed overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
