"""Every kind of bad input raises `AvatarFormatError` with a message that names the problem."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from pointillist.avatar.bundle import ZipLimits, read_bundle, write_bundle
from pointillist.avatar.gaussians import AvatarFormatError
from pointillist.avatar.ply import read_gaussian_ply, write_gaussian_ply

from .synthetic import make_avatar, write_inria_ply


# ---------------------------------------------------------------------------------------- PLY
@pytest.fixture
def good_ply(tmp_path) -> Path:
    avatar = make_avatar(n=100, sh_degree=1)
    return write_gaussian_ply(tmp_path / "good.ply", avatar.gaussians, avatar.binding)


def test_truncated_ply(good_ply):
    data = good_ply.read_bytes()
    good_ply.write_bytes(data[: len(data) - 1000])  # cut mid-data
    with pytest.raises(AvatarFormatError, match=r"good.ply: truncated: header declares 100 vertices \(\d+ bytes of data\) but the file holds"):
        read_gaussian_ply(good_ply)
    good_ply.write_bytes(data[:60])  # cut inside the header
    with pytest.raises(AvatarFormatError, match="header is truncated"):
        read_gaussian_ply(good_ply)
    good_ply.write_bytes(b"")
    with pytest.raises(AvatarFormatError, match="not a PLY"):
        read_gaussian_ply(good_ply)


def test_header_claims_more_vertices_than_present(good_ply):
    data = good_ply.read_bytes()
    good_ply.write_bytes(data.replace(b"element vertex 100", b"element vertex 900", 1))
    with pytest.raises(AvatarFormatError, match="header declares 900 vertices"):
        read_gaussian_ply(good_ply)
    good_ply.write_bytes(data.replace(b"element vertex 100", b"element vertex 99999999999999", 1))
    with pytest.raises(AvatarFormatError, match="header declares 99999999999999 vertices"):
        read_gaussian_ply(good_ply)
    good_ply.write_bytes(data + b"\0" * 12)
    with pytest.raises(AvatarFormatError, match="12 unexpected bytes after the 100 vertices"):
        read_gaussian_ply(good_ply)


def test_truncated_ascii_ply(tmp_path):
    write_inria_ply(tmp_path / "a.ply", 10, text=True)
    lines = (tmp_path / "a.ply").read_bytes().splitlines(keepends=True)
    (tmp_path / "a.ply").write_bytes(b"".join(lines[:-3]))
    with pytest.raises(AvatarFormatError, match="corrupt or truncated"):
        read_gaussian_ply(tmp_path / "a.ply")


def test_missing_property(tmp_path):
    for prop in ("opacity", "x", "rot_3", "f_dc_1", "f_rest_4"):
        write_inria_ply(tmp_path / "m.ply", 10, drop=prop)
        expected = "8 f_rest" if prop.startswith("f_rest") else f"missing property {prop}"
        with pytest.raises(AvatarFormatError, match=expected):
            read_gaussian_ply(tmp_path / "m.ply")


def test_unexpected_properties_are_listed(tmp_path):
    write_inria_ply(tmp_path / "e.ply", 10, extra={"red": np.zeros(10, np.uint8), "semantic_id": np.zeros(10, np.int32)})
    with pytest.raises(AvatarFormatError, match="unexpected properties red, semantic_id"):
        read_gaussian_ply(tmp_path / "e.ply")
    write_inria_ply(tmp_path / "e.ply", 10, extra={"binding_1": np.zeros(10, np.float32)})
    with pytest.raises(AvatarFormatError, match="unexpected property binding_1"):
        read_gaussian_ply(tmp_path / "e.ply")


@pytest.mark.parametrize("count", [3, 7, 27, 48])
def test_wrong_f_rest_count(tmp_path, count):
    write_inria_ply(tmp_path / "sh.ply", 5, sh_rest_props=count)
    with pytest.raises(AvatarFormatError, match=f"{count} f_rest properties; expected 0, 9, 24 or 45"):
        read_gaussian_ply(tmp_path / "sh.ply")


def test_structural_problems(tmp_path):
    rows = np.zeros(3, dtype=[("x", "f4")])
    faces = np.zeros(1, dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(rows, "vertex"), PlyElement.describe(faces, "face")]).write(str(tmp_path / "mesh.ply"))
    with pytest.raises(AvatarFormatError, match="unexpected element"):
        read_gaussian_ply(tmp_path / "mesh.ply")
    write_inria_ply(tmp_path / "int.ply", 4, extra={"bary_0": np.zeros(4, np.float32)})
    with pytest.raises(AvatarFormatError, match="bary_0, bary_1, bary_2 must appear together"):
        read_gaussian_ply(tmp_path / "int.ply")
    text = (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nproperty float x\nend_header\n" + b"\0" * 8)
    (tmp_path / "dup.ply").write_bytes(text)
    with pytest.raises(AvatarFormatError, match="duplicate property x"):
        read_gaussian_ply(tmp_path / "dup.ply")
    (tmp_path / "fmt.ply").write_bytes(b"ply\nformat binary_middle_endian 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(AvatarFormatError, match="unknown PLY format"):
        read_gaussian_ply(tmp_path / "fmt.ply")
    with pytest.raises(AvatarFormatError, match="file not found"):
        read_gaussian_ply(tmp_path / "nope.ply")
    with pytest.raises(AvatarFormatError, match="is a folder"):
        read_gaussian_ply(tmp_path)


def test_integer_typed_gaussian_property_is_refused(tmp_path):
    cols = write_inria_ply(tmp_path / "a.ply", 4)
    rows = np.zeros(4, dtype=[(k, "i4" if k == "opacity" else "f4") for k in cols])
    PlyData([PlyElement.describe(rows, "vertex")]).write(str(tmp_path / "a.ply"))
    with pytest.raises(AvatarFormatError, match="property 'opacity' has type int"):
        read_gaussian_ply(tmp_path / "a.ply")


@pytest.mark.parametrize("prop", ["x", "nz", "f_dc_2", "f_rest_8", "opacity", "scale_1", "rot_0", "bary_2", "binding_0"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_the_property(tmp_path, prop, value):
    n = 20
    extra = {"binding_0": np.arange(n, dtype=np.float32)} if prop == "binding_0" else \
        {"binding_0": np.arange(n, dtype=np.int32), **{f"bary_{i}": np.full(n, 1 / 3, np.float32) for i in range(3)}}
    write_inria_ply(tmp_path / "a.ply", n, extra=extra)
    ply = PlyData.read(str(tmp_path / "a.ply"), mmap=False)
    ply["vertex"][prop][4] = value
    ply.write(str(tmp_path / "a.ply"))
    with pytest.raises(AvatarFormatError, match=f"property '{prop}' contains NaN or Inf"):
        read_gaussian_ply(tmp_path / "a.ply")


def test_bad_float_binding(tmp_path):
    for values, message in (([0, 1, -2, 3, 4], "negative triangle index -2"),
                            ([0, 1.5, 2, 3, 4], r"whole triangle indices \(found 1.5\)"),
                            ([0, 1, 2, 3, 4e12], "impossibly large")):
        write_inria_ply(tmp_path / "b.ply", 5, extra={"binding_0": np.array(values, np.float32)})
        with pytest.raises(AvatarFormatError, match=message):
            read_gaussian_ply(tmp_path / "b.ply")
    write_inria_ply(tmp_path / "b.ply", 5, extra={"binding_0": np.array([0, 1, 2, -3, 4], np.int32)})
    with pytest.raises(AvatarFormatError, match="negative triangle index -3"):
        read_gaussian_ply(tmp_path / "b.ply")


# ---------------------------------------------------------------------------------------- bundles
@pytest.fixture
def bundle(tmp_path) -> Path:
    return write_bundle(make_avatar(n=30, with_source=False), tmp_path / "b")


def _patch_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "avatar.json").read_text())
    (path / "avatar.json").write_text(json.dumps({**manifest, **changes}))


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 99}, "'format_version': unknown bundle format version 99"),
    ({"format_version": "1"}, "unknown bundle format version '1'"),
    ({"format_version": None}, "unknown bundle format version None"),
    ({"num_gaussians": 31}, "'num_gaussians' says 31 but avatar.ply holds 30"),
    ({"num_gaussians": None}, "'num_gaussians' says None"),
    ({"bound": False}, "'bound' disagrees"),
    ({"head": {"model_id": "x"}}, "field 'head' is malformed"),
    ({"head": {"model_id": "x", "shape": [1.0], "vertex_offsets": "identity_offsets.npy"}, "meta": []}, "'meta' must be an object"),
    ({"meta": {"source_sha256": "zz"}}, "'meta.source_sha256'"),
])
def test_manifest_problems(bundle, changes, message):
    _patch_manifest(bundle, **changes)
    with pytest.raises(AvatarFormatError, match=message):
        read_bundle(bundle)


def test_missing_or_broken_members(bundle, tmp_path):
    (bundle / "identity_offsets.npy").unlink()
    with pytest.raises(AvatarFormatError, match="promises identity_offsets.npy but it is missing"):
        read_bundle(bundle)
    np.save(bundle / "identity_offsets.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(AvatarFormatError, match="identity_offsets.npy is unreadable"):
        read_bundle(bundle)  # a pickled .npy is never loaded
    np.save(bundle / "identity_offsets.npy", np.zeros((50, 3)))
    with pytest.raises(AvatarFormatError, match="float32"):
        read_bundle(bundle)
    (bundle / "source").mkdir()
    (bundle / "source" / "input.png").write_bytes(b"not a png")
    np.save(bundle / "identity_offsets.npy", np.zeros((50, 3), np.float32))
    with pytest.raises(AvatarFormatError, match="unreadable source/ member"):
        read_bundle(bundle)
    (bundle / "source" / "input.png").unlink()
    (bundle / "avatar.ply").write_bytes((bundle / "avatar.ply").read_bytes()[:-7])
    with pytest.raises(AvatarFormatError, match="b/avatar.ply: truncated"):
        read_bundle(bundle)
    (bundle / "avatar.json").write_text("{not json")
    with pytest.raises(AvatarFormatError, match="avatar.json is not valid JSON"):
        read_bundle(bundle)
    (bundle / "avatar.json").write_text("[1, 2]")
    with pytest.raises(AvatarFormatError, match="must hold a JSON object"):
        read_bundle(bundle)
    (bundle / "avatar.json").unlink()
    with pytest.raises(AvatarFormatError, match="missing avatar.json"):
        read_bundle(bundle)
    with pytest.raises(AvatarFormatError, match="no such bundle"):
        read_bundle(tmp_path / "nowhere")


def test_bundle_ply_without_barycentrics(bundle):
    write_inria_ply(bundle / "avatar.ply", 30, extra={"binding_0": np.zeros(30, np.float32)})
    with pytest.raises(AvatarFormatError, match="binding_0 without bary_0..2"):
        read_bundle(bundle)


def test_binding_out_of_range_for_the_head(bundle):
    from pointillist.avatar.bundle import validate_avatar

    avatar = read_bundle(bundle)
    with pytest.raises(AvatarFormatError, match="'binding': triangle index \\d+ out of range"):
        validate_avatar(avatar, num_faces=int(avatar.binding.triangles.max()))


def test_symlinked_member_in_a_folder_is_refused(bundle, tmp_path):
    (tmp_path / "secret").write_text("{}")
    (bundle / "avatar.json").unlink()
    (bundle / "avatar.json").symlink_to(tmp_path / "secret")
    with pytest.raises(AvatarFormatError, match="avatar.json is a symbolic link"):
        read_bundle(bundle)


# ---------------------------------------------------------------------------------------- zips
@pytest.fixture
def good_zip(tmp_path) -> tuple[Path, dict[str, bytes]]:
    path = write_bundle(make_avatar(n=30, with_source=False), tmp_path / "good.zip")
    with zipfile.ZipFile(path) as zf:
        return path, {i.filename: zf.read(i) for i in zf.infolist()}


def _zip_with(path: Path, members: dict[str, bytes], extra: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
        for info, payload in extra:
            zf.writestr(info, payload)
    return path


@pytest.mark.parametrize("evil", ["../evil.txt", "/etc/evil", "a/../../x", "source/../../x", "C:/evil", "..\\evil", "\\evil"])
def test_zip_slip_paths_are_refused(good_zip, tmp_path, evil):
    _, members = good_zip
    path = _zip_with(tmp_path / "evil.zip", members, [(evil, b"x")])
    with pytest.raises(AvatarFormatError, match="unsafe path"):
        read_bundle(path)
    assert not (tmp_path.parent / "evil.txt").exists() and not (tmp_path.parent / "x").exists()


def test_links_duplicates_encryption_and_entry_count(good_zip, tmp_path):
    _, members = good_zip
    link = zipfile.ZipInfo("avatar.ply")
    link.external_attr = 0o120777 << 16
    with pytest.raises(AvatarFormatError, match="'avatar.ply' is a symbolic link"):
        read_bundle(_zip_with(tmp_path / "link.zip", {}, [(link, b"/etc/passwd")]))
    with pytest.warns(UserWarning, match="Duplicate name"):
        dup = _zip_with(tmp_path / "dup.zip", members, [("avatar.json", b"{}")])
    with pytest.raises(AvatarFormatError, match="'avatar.json' appears twice"):
        read_bundle(dup)
    locked = bytearray(_zip_with(tmp_path / "enc.zip", members, [("preview.png", b"x")]).read_bytes())
    entry = locked.rindex(b"PK\x01\x02")  # central directory record of the last entry, preview.png
    locked[entry + 8] |= 0x1  # general purpose flag bit 0: encrypted
    (tmp_path / "enc.zip").write_bytes(bytes(locked))
    with pytest.raises(AvatarFormatError, match="'preview.png' is encrypted"):
        read_bundle(tmp_path / "enc.zip")
    many = [(f"junk/{i}.txt", b"") for i in range(70)]
    with pytest.raises(AvatarFormatError, match="73 zip entries \\(a bundle has at most 64\\)"):
        read_bundle(_zip_with(tmp_path / "many.zip", members, many))


def test_corrupt_zips(good_zip, tmp_path):
    path, _ = good_zip
    data = path.read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(AvatarFormatError, match="not a readable zip"):
        read_bundle(tmp_path / "cut.zip")
    (tmp_path / "noise.zip").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(AvatarFormatError, match="not a readable zip"):
        read_bundle(tmp_path / "noise.zip")
    # damage the compressed data of avatar.ply but keep the directory intact
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("avatar.ply")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    damaged = bytearray(data)
    damaged[start + 100: start + 400] = bytes(300)
    (tmp_path / "damaged.zip").write_bytes(bytes(damaged))
    with pytest.raises(AvatarFormatError, match="corrupt zip entry 'avatar.ply'"):
        read_bundle(tmp_path / "damaged.zip")


def test_zip_bomb_is_refused_without_inflating_it(tmp_path, monkeypatch):
    """300 MB of zeros deflate to ~300 KB; built streaming, refused from the central directory alone."""
    bomb = tmp_path / "bomb.zip"
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("avatar.json", json.dumps({"format_version": 1}))
        with zf.open("avatar.ply", "w", force_zip64=True) as fh:
            for _ in range(300):
                fh.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    with pytest.raises(AvatarFormatError, match="'avatar.ply' expands \\d+:1 .*zip bomb"):
        read_bundle(bomb)
    assert "avatar.ply" not in opened  # refused from the central directory: nothing was inflated
    monkeypatch.setattr(zipfile.ZipFile, "open", real_open)
    # the size limits, with lower limits passed to the reader
    with pytest.raises(AvatarFormatError, match="'avatar.ply' is 314572800 bytes uncompressed \\(limit 1048576\\)"):
        read_bundle(bomb, limits=ZipLimits(max_entry_bytes=1 << 20, max_ratio=1e9))
    with pytest.raises(AvatarFormatError, match="more than 104857600 bytes uncompressed"):
        read_bundle(bomb, limits=ZipLimits(max_total_bytes=100 << 20, max_ratio=1e9))
