"""Bundles: bit-exact round trips (folder and zip), manifest contents, validation, atomic writes."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pointillist.avatar import bundle as bundle_module
from pointillist.avatar.bundle import read_bundle, validate_avatar, write_bundle
from pointillist.avatar.gaussians import FORMAT_VERSION, Avatar, AvatarFormatError, Binding, HeadIdentity, SourceInfo

from .synthetic import make_avatar, make_gaussians

FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")


def assert_same(a: Avatar, b: Avatar) -> None:
    """Every array bit-identical (dtype included), every record equal."""
    def same(x, y, what):
        assert (x is None) == (y is None), what
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), what

    for field in FIELDS:
        same(getattr(a.gaussians, field), getattr(b.gaussians, field), field)
    assert (a.binding is None) == (b.binding is None)
    if a.binding is not None:
        same(a.binding.triangles, b.binding.triangles, "triangles")
        same(a.binding.barycentrics, b.binding.barycentrics, "barycentrics")
    assert (a.identity is None) == (b.identity is None)
    if a.identity is not None:
        assert a.identity.model_id == b.identity.model_id
        same(a.identity.shape, b.identity.shape, "shape")
        same(a.identity.vertex_offsets, b.identity.vertex_offsets, "vertex_offsets")
    assert (a.source is None) == (b.source is None)
    if a.source is not None:
        for field in ("image", "matte", "expression", "pose"):
            same(getattr(a.source, field), getattr(b.source, field), field)
        assert a.source.camera == b.source.camera
    assert {**a.meta, "format_version": FORMAT_VERSION} == b.meta


@pytest.mark.parametrize("suffix", ["", ".zip"])
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_round_trip_is_bit_exact(tmp_path, suffix, sh_degree):
    avatar = make_avatar(sh_degree=sh_degree, seed=sh_degree)
    path = write_bundle(avatar, tmp_path / f"avatar{suffix}", preview=np.full((8, 8, 3), 77, np.uint8))
    back = read_bundle(path)
    assert_same(avatar, back)
    assert_same(back, read_bundle(write_bundle(back, tmp_path / f"again{suffix}")))  # a fixed point


def test_minimal_avatar_round_trips(tmp_path):
    avatar = Avatar(gaussians=make_gaussians(10, sh_degree=2))  # plain 3DGS: no binding, identity or source
    for name in ("plain", "plain.zip"):
        back = read_bundle(write_bundle(avatar, tmp_path / name))
        assert_same(avatar, back)
        assert back.binding is None and back.identity is None and back.source is None


def test_partial_source_round_trips(tmp_path):
    avatar = replace(make_avatar(n=20), source=SourceInfo(image=None, matte=None, camera=None,
                                                          expression=np.arange(4, dtype=np.float32), pose=None))
    assert_same(avatar, read_bundle(write_bundle(avatar, tmp_path / "b")))


def test_folder_layout_and_manifest_are_readable_without_us(tmp_path):
    avatar = make_avatar(n=30)
    path = write_bundle(avatar, tmp_path / "b", preview=np.zeros((4, 6, 3), np.uint8))
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    assert files == ["avatar.json", "avatar.ply", "identity_offsets.npy", "preview.png", "source/camera.json",
                     "source/expression.json", "source/input.png", "source/matte.png"]
    manifest = json.loads((path / "avatar.json").read_text())
    assert manifest["format_version"] == 1 and manifest["num_gaussians"] == 30 and manifest["sh_degree"] == 3
    assert manifest["head"]["model_id"] == "test-head" and len(manifest["head"]["shape"]) == 20
    assert manifest["model_version"] == "test-0.1" and manifest["creation_options"] == {"quality": "draft", "refine_steps": 0}
    assert manifest["source_sha256"] == "ab" * 32 and manifest["meta"] == {"seed": 0, "notes": ["a", 1, None]}
    offsets = np.load(path / "identity_offsets.npy", allow_pickle=False)
    assert offsets.dtype == np.float32 and np.array_equal(offsets, avatar.identity.vertex_offsets)
    assert np.array_equal(np.asarray(Image.open(path / "source" / "input.png")), avatar.source.image)
    assert Image.open(path / "preview.png").size == (6, 4)
    camera = json.loads((path / "source" / "camera.json").read_text())
    assert camera["width"] == 24 and np.asarray(camera["K"]).shape == (3, 3)


def test_zip_with_a_top_level_folder_reads(tmp_path):
    avatar = make_avatar(n=12, with_source=False)
    folder = write_bundle(avatar, tmp_path / "b")
    with zipfile.ZipFile(tmp_path / "nested.zip", "w") as zf:
        zf.writestr("my_avatar/", b"")  # a directory entry, as zip tools write them
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, f"my_avatar/{file.relative_to(folder)}")
    assert_same(avatar, read_bundle(tmp_path / "nested.zip"))


def test_overwrite_rules(tmp_path):
    first, second = make_avatar(n=10, seed=1, with_source=False), make_avatar(n=25, seed=2, with_source=False)
    for name in ("b", "b.zip"):
        path = write_bundle(first, tmp_path / name)
        with pytest.raises(FileExistsError, match="overwrite"):
            write_bundle(second, path)
        assert_same(first, read_bundle(path))
        write_bundle(second, path, overwrite=True)
        assert_same(second, read_bundle(path))
    # a zip over an old folder of the same name, and a folder over an old file
    (tmp_path / "odd.zip").mkdir()
    write_bundle(first, tmp_path / "odd.zip", overwrite=True)
    assert (tmp_path / "odd.zip").is_file()
    (tmp_path / "file").write_bytes(b"x")
    write_bundle(first, tmp_path / "file", overwrite=True)
    assert (tmp_path / "file").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.zip", "file", "odd.zip"]  # nothing left aside


@pytest.mark.parametrize("fail_at", [1, 4, 7])  # 7 files: the first, a middle one, the last
def test_failed_folder_write_leaves_nothing_and_keeps_the_old_bundle(tmp_path, monkeypatch, fail_at):
    avatar = make_avatar(n=30)
    real_fsync = bundle_module.os.fsync
    calls = {"n": 0}

    def flaky_fsync(fd):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise OSError("disk full")
        return real_fsync(fd)

    monkeypatch.setattr(bundle_module.os, "fsync", flaky_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(avatar, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # no half bundle, no temp folder

    monkeypatch.setattr(bundle_module.os, "fsync", real_fsync)
    old = write_bundle(make_avatar(n=5, seed=9, with_source=False), tmp_path / "old")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    calls["n"] = 0
    monkeypatch.setattr(bundle_module.os, "fsync", flaky_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(avatar, old, overwrite=True)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_failed_rename_into_place_restores_the_old_bundle(tmp_path, monkeypatch):
    old = write_bundle(make_avatar(n=5, with_source=False), tmp_path / "b")
    before = (old / "avatar.ply").read_bytes()
    real_rename = bundle_module.os.rename

    def rename(src, dst):
        if ".tmp" in str(src):  # the staged new bundle
            raise OSError("rename failed")
        return real_rename(src, dst)

    monkeypatch.setattr(bundle_module.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        write_bundle(make_avatar(n=8), old, overwrite=True)
    assert (old / "avatar.ply").read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["b"]


def test_failed_zip_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(fh, members):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "_write_zip_stream", broken)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(make_avatar(n=5), tmp_path / "b.zip")
    assert list(tmp_path.iterdir()) == []


def test_invalid_avatar_is_refused_before_touching_disk(tmp_path):
    avatar = make_avatar(n=10)
    bad = replace(avatar, gaussians=replace(avatar.gaussians, means=avatar.gaussians.means * np.nan))
    for name in ("b", "b.zip"):
        with pytest.raises(AvatarFormatError, match="'means'"):
            write_bundle(bad, tmp_path / name)
    with pytest.raises(AvatarFormatError, match="'meta'"):
        write_bundle(replace(avatar, meta={"when": object()}), tmp_path / "b")
    with pytest.raises(AvatarFormatError, match="preview"):
        write_bundle(avatar, tmp_path / "b", preview=np.zeros((4, 4, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def _bad(avatar: Avatar, **changes) -> Avatar:
    g = replace(avatar.gaussians, **{k: v for k, v in changes.items() if hasattr(avatar.gaussians, k)})
    return replace(avatar, gaussians=g)


@pytest.mark.parametrize("mutate, field", [
    (lambda a: _bad(a, means=a.gaussians.means[:-1]), "'log_scales'"),
    (lambda a: _bad(a, quats=a.gaussians.quats[:, :3]), "'quats'"),
    (lambda a: _bad(a, opacity_logits=np.where(np.arange(a.gaussians.num) == 3, np.inf, a.gaussians.opacity_logits).astype(np.float32)), "'opacity_logits'"),
    (lambda a: _bad(a, sh_rest=np.zeros((a.gaussians.num, 5, 3), np.float32)), "'sh_rest'"),
    (lambda a: _bad(a, sh_dc=a.gaussians.sh_dc.astype(np.int32)), "'sh_dc'"),
    (lambda a: _bad(a, quats=np.zeros_like(a.gaussians.quats)), "'quats'"),
    (lambda a: replace(a, binding=Binding(a.binding.triangles[:-1], a.binding.barycentrics)), "'binding'"),
    (lambda a: replace(a, binding=Binding(a.binding.triangles - 5000, a.binding.barycentrics)), "'binding'"),
    (lambda a: replace(a, binding=Binding(a.binding.triangles.astype(np.float32), a.binding.barycentrics)), "'binding'"),
    (lambda a: replace(a, binding=Binding(a.binding.triangles, a.binding.barycentrics * 2)), "'bary'"),
    (lambda a: replace(a, binding=Binding(a.binding.triangles, a.binding.barycentrics[:, [0, 0, 1]])), "'bary'"),
    (lambda a: replace(a, binding=Binding(a.binding.triangles, None)), "'bary'"),
    (lambda a: replace(a, identity=HeadIdentity("h", np.array([np.nan], np.float32))), "'identity.shape'"),
    (lambda a: replace(a, identity=HeadIdentity("h", np.zeros(3, np.float32), np.zeros((4, 2), np.float32))), "'identity.vertex_offsets'"),
    (lambda a: replace(a, source=SourceInfo(image=np.zeros((4, 4), np.uint8))), "'source.image'"),
    (lambda a: replace(a, source=SourceInfo(matte=np.zeros((4, 4), np.float32))), "'source.matte'"),
    (lambda a: replace(a, source=SourceInfo(camera={"viewmat": np.eye(4).tolist(), "K": [[1, 0], [0, 1]], "width": 4, "height": 4})), "'source.camera.K'"),
    (lambda a: replace(a, source=SourceInfo(camera={"viewmat": np.eye(4).tolist(), "K": np.eye(3).tolist(), "width": 0, "height": 4})), "'source.camera.width'"),
    (lambda a: replace(a, source=SourceInfo(pose=np.zeros((4, 3), np.float32))), "'source.pose'"),
    (lambda a: replace(a, meta={"format_version": 2}), "'meta.format_version'"),
    (lambda a: replace(a, meta={"source_sha256": "not-a-hash"}), "'meta.source_sha256'"),
])
def test_validate_avatar_names_the_field(mutate, field):
    avatar = make_avatar(n=12, with_source=False)
    validate_avatar(avatar)
    with pytest.raises(AvatarFormatError, match=field):
        validate_avatar(mutate(avatar))


def test_validate_against_the_head(tmp_path):
    avatar = make_avatar(n=40, num_faces=1000, num_vertices=50)
    validate_avatar(avatar, num_faces=1000, num_vertices=50)
    with pytest.raises(AvatarFormatError, match="'binding': triangle index .* out of range .* 10 triangles"):
        validate_avatar(avatar, num_faces=10)
    with pytest.raises(AvatarFormatError, match="'identity.vertex_offsets': expected \\(51, 3\\)"):
        validate_avatar(avatar, num_vertices=51)
