"""Checklist items 11, 23 and the render bridge: object registration (binary and PLY), frames, 404 on
unknown objects, and a parser that rejects wrong sizes and counts. The service's pixels are compared
with calling the rasterizer directly."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from pointillist.avatar.gaussians import Gaussians
from pointillist.avatar.ply import gaussians_to_ply_bytes
from pointillist.render.camera import fov_to_K, orbit_viewmat
from pointillist.render.rasterize import rasterize
from pointillist.server.render_payload import (
    FILM,
    RAW,
    TRANSPARENT,
    WANT_DEPTH,
    FrameObject,
    ObjectAttributes,
    PayloadError,
    PayloadLimits,
    RenderRequest,
    decode_film_image,
    decode_raw_image,
    encode_object,
    encode_render,
    parse_object,
    parse_render,
)

from .conftest import InProcess

OCTET = {"Content-Type": "application/octet-stream"}


def scene(n: int, seed: int = 0, sh_degree: int | None = None):
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(n, 3))
    means = (dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * [0.1, 0.12, 0.1]).astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    attrs = ObjectAttributes(opacities=rng.uniform(0.3, 0.95, n).astype(np.float32),
                             scales=rng.uniform(0.002, 0.006, (n, 3)).astype(np.float32),
                             colors=None if sh_degree is not None else rng.uniform(0, 1, (n, 3)).astype(np.float32),
                             sh=None if sh_degree is None else
                             rng.normal(0, 0.3, (n, (sh_degree + 1) ** 2, 3)).astype(np.float32))
    return attrs, means, quats


def camera(size=(64, 48)):
    w, h = size
    return {"viewmat": orbit_viewmat(15.0, 5.0, 0.6).astype(np.float32), "K": fov_to_K(30.0, w, h).astype(np.float32),
            "width": w, "height": h}


def frame(objects, size=(64, 48), raw=True, depth=True, background=(0, 0, 0)) -> RenderRequest:
    cam = camera(size)
    return RenderRequest(width=cam["width"], height=cam["height"], near=0.01, far=100.0,
                         background=np.asarray(background, np.float32), viewmat=cam["viewmat"], K=cam["K"],
                         objects=[FrameObject(i, m, q) for i, m, q in objects], want_depth=depth, raw=raw)


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_checkpoint):
    with InProcess(tmp_path_factory.mktemp("render-data"), checkpoint=tiny_checkpoint) as app:
        yield app


# ------------------------------------------------------------------------------- the bridge
def test_render_matches_the_rasterizer_called_directly(app):
    attrs, means, quats = scene(400)
    r = app.request("PUT", "/v1/objects/head", content=encode_object(attrs), headers=OCTET)
    assert r.status_code == 200 and r.json()["count"] == 400 and r.json()["colors"] == "rgb"
    r = app.request("POST", "/v1/render", content=encode_render(frame([("head", means, quats)])), headers=OCTET)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert [e.split(";dur=")[0] for e in r.headers["server-timing"].split(", ")] == ["parse", "render", "skin", "rasterize", "output"]
    rgba, depth = decode_raw_image(r.content)
    cam = camera()
    direct = rasterize(torch.from_numpy(means), torch.from_numpy(quats), torch.from_numpy(attrs.scales),
                       torch.from_numpy(attrs.opacities), torch.from_numpy(attrs.colors), viewmat=cam["viewmat"],
                       K=cam["K"], width=64, height=48, background=torch.zeros(3))
    assert rgba.shape == (48, 64, 4) and depth.shape == (48, 64)
    assert rgba[..., 3].max() > 0.5  # the head is in view
    np.testing.assert_allclose(rgba[..., :3], direct.rgb.numpy(), atol=1e-5)
    np.testing.assert_allclose(rgba[..., 3], direct.alpha.numpy(), atol=1e-5)
    np.testing.assert_allclose(depth, direct.depth.numpy(), atol=1e-5)


@pytest.mark.parametrize("background", [None, (0.2, 0.4, 0.6)])
def test_film_layout_is_the_film_conversion_of_the_plain_render(app, background):
    """What Blender writes to its passes as received: the plain answer run through `render.film`."""
    from dataclasses import replace

    from pointillist.render.film import film_passes

    attrs, means, quats = scene(300, seed=7)
    assert app.request("PUT", "/v1/objects/film", content=encode_object(attrs), headers=OCTET).status_code == 200
    plain = frame([("film", means, quats)], background=background or (0, 0, 0))
    r = app.request("POST", "/v1/render", content=encode_render(plain), headers=OCTET)
    rgba, depth = decode_raw_image(r.content)
    r = app.request("POST", "/v1/render", content=encode_render(replace(plain, film=True, transparent=background is None)),
                    headers=OCTET)
    assert r.status_code == 200
    film_rgba, film_depth = decode_film_image(r.content)
    expected, expected_depth = np.empty_like(film_rgba), np.empty_like(film_depth)
    film_passes(rgba[..., :3], rgba[..., 3], depth, background is None, expected, expected_depth)
    np.testing.assert_array_equal(film_rgba, expected)  # the block and the fill around it, exactly
    np.testing.assert_array_equal(film_depth, expected_depth)
    assert film_rgba[..., 3].max() > 0.5 and (film_rgba[..., 3].min() == 1.0) == (background is not None)
    covered = (rgba[..., 3] > 0).any(axis=1).sum() * (rgba[..., 3] > 0).any(axis=0).sum()
    assert len(r.content) == 64 + 20 * covered < 16 + 20 * rgba[..., 3].size  # only the covered block travels
    with pytest.raises(PayloadError, match="film layout"):
        decode_raw_image(r.content)  # a client that did not ask for it never misreads it
    with pytest.raises(PayloadError, match="bytes do not match"):
        decode_film_image(r.content[:-4])


def test_a_frame_with_nothing_in_view_is_the_empty_film(app):
    from dataclasses import replace

    attrs, means, quats = scene(50, seed=8)
    assert app.request("PUT", "/v1/objects/away", content=encode_object(attrs), headers=OCTET).status_code == 200
    beyond_far = replace(frame([("away", means, quats)], background=(0.5, 0.5, 0.5)), far=0.02, film=True)
    r = app.request("POST", "/v1/render", content=encode_render(beyond_far), headers=OCTET)
    rgba, depth = decode_film_image(r.content)
    assert len(r.content) == 64 and (depth == 1e10).all() and (rgba[..., 3] == 1).all()
    np.testing.assert_allclose(rgba[..., :3], 0.21404, atol=3e-5)  # sRGB 0.5, linearised


def test_render_png_and_several_objects(app):
    a, ma, qa = scene(200, seed=1)
    b, mb, qb = scene(150, seed=2, sh_degree=1)
    assert app.request("PUT", "/v1/objects/a", content=encode_object(a), headers=OCTET).status_code == 200
    assert app.request("PUT", "/v1/objects/b-2", content=encode_object(b), headers=OCTET).status_code == 200
    body = encode_render(frame([("a", ma, qa), ("b-2", mb + [0.05, 0, 0], qb)], raw=False, depth=False))
    r = app.request("POST", "/v1/render", content=body, headers=OCTET)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    assert image.mode == "RGBA" and image.size == (64, 48) and np.asarray(image)[..., 3].max() > 100


def test_unknown_object_is_404_so_the_client_registers_again(app):
    attrs, means, quats = scene(50, seed=3)
    r = app.request("POST", "/v1/render", content=encode_render(frame([("never-registered", means, quats)])),
                    headers=OCTET)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_object"
    assert "never-registered" in r.json()["error"]["message"]
    assert app.request("PUT", "/v1/objects/never-registered", content=encode_object(attrs), headers=OCTET).status_code == 200
    r = app.request("POST", "/v1/render", content=encode_render(frame([("never-registered", means, quats)])),
                    headers=OCTET)
    assert r.status_code == 200
    assert app.request("DELETE", "/v1/objects/never-registered").status_code == 200
    r = app.request("POST", "/v1/render", content=encode_render(frame([("never-registered", means, quats)])),
                    headers=OCTET)
    assert r.status_code == 404


def test_object_store_drops_least_recently_used_objects(tmp_path, tiny_checkpoint):
    from pointillist.server.config import Limits

    with InProcess(tmp_path, checkpoint=tiny_checkpoint, limits=Limits(max_registered_gaussians=250)) as small:
        for name in ("one", "two", "three"):
            attrs, _, _ = scene(100, seed=len(name))
            assert small.request("PUT", f"/v1/objects/{name}", content=encode_object(attrs), headers=OCTET).status_code == 200
        assert len(small.service.objects) == 2 and small.service.objects.get("one") is None


# ------------------------------------------------------------------------------- item 23: sizes and counts
def test_item23_count_mismatch_with_the_registered_object_is_400(app):
    attrs, means, quats = scene(100, seed=4)
    app.request("PUT", "/v1/objects/mismatch", content=encode_object(attrs), headers=OCTET)
    r = app.request("POST", "/v1/render", content=encode_render(frame([("mismatch", means[:99], quats[:99])])),
                    headers=OCTET)
    assert r.status_code == 400 and r.json()["error"]["code"] == "count_mismatch"


def _valid_render() -> bytes:
    _, means, quats = scene(10, seed=5)
    return encode_render(frame([("obj", means, quats)]))


@pytest.mark.parametrize("mutate,needle", [
    (lambda b: b[:-1], "the body ends"),
    (lambda b: b + b"\0", "unexpected bytes"),
    (lambda b: b[:100], "shorter than its 144-byte header"),
    (lambda b: b"XXXX" + b[4:], "magic"),
    (lambda b: b[:4] + struct.pack("<H", 2) + b[6:], "version"),
    (lambda b: b[:6] + struct.pack("<H", 32) + b[8:], "unknown flag"),
    (lambda b: b[:6] + struct.pack("<H", FILM) + b[8:], "FILM layout is float32"),
    (lambda b: b[:6] + struct.pack("<H", RAW | TRANSPARENT) + b[8:], "TRANSPARENT needs the FILM"),
    (lambda b: b[:6] + struct.pack("<H", RAW | FILM | TRANSPARENT) + b[8:28] + struct.pack("<f", 0.5) + b[32:],
     "zero"),
    (lambda b: b[:6] + struct.pack("<H", WANT_DEPTH) + b[8:], "RAW"),
    (lambda b: b[:8] + struct.pack("<I", 0) + b[12:], "size"),
    (lambda b: b[:8] + struct.pack("<I", 100_000) + b[12:], "size"),
    (lambda b: b[:8] + struct.pack("<II", 8192, 8192) + b[16:], "pixel"),
    (lambda b: b[:16] + struct.pack("<I", 0) + b[20:], "object count"),
    (lambda b: b[:16] + struct.pack("<I", 2) + b[20:], "object record 1"),
    (lambda b: b[:16] + struct.pack("<I", 1000) + b[20:], "object count"),
    (lambda b: b[:20] + struct.pack("<ff", 1.0, 0.5) + b[28:], "near"),
    (lambda b: b[:20] + struct.pack("<f", float("nan")) + b[24:], "near"),
    (lambda b: b[:40] + struct.pack("<f", float("inf")) + b[44:], "viewmat"),
    (lambda b: b[:104] + struct.pack("<f", -1.0) + b[108:], "K"),
    (lambda b: b[:140] + struct.pack("<I", 7) + b[144:], "reserved"),
    (lambda b: b[:144] + struct.pack("<I", 11) + b[148:], "object record 0"),
    (lambda b: b[:144] + struct.pack("<I", 9) + b[148:], "unexpected bytes"),
    (lambda b: b[:144] + struct.pack("<I", 0) + b[148:], "count 0"),
    (lambda b: b[:148] + struct.pack("<H", 0) + b[150:], "id length"),
    (lambda b: b[:148] + struct.pack("<H", 65) + b[150:], "id length"),
    (lambda b: b[:152] + b"o/j" + b[155:], "id must be"),
    (lambda b: b[:155] + b"\x01" + b[156:], "padding"),
    (lambda b: b[:156] + struct.pack("<f", float("nan")) + b[160:], "NaN"),
    (lambda b: b[:156 + 120] + b"\0" * 16 + b[156 + 136:], "quaternion is zero"),
])
def test_item23_render_parser_rejects_wrong_sizes_counts_and_values(mutate, needle):
    body = _valid_render()
    assert len(parse_render(body).objects[0].means) == 10
    with pytest.raises(PayloadError, match=needle):
        parse_render(mutate(body))


def test_item23_duplicate_objects_and_limits():
    _, means, quats = scene(10, seed=6)
    body = encode_render(frame([("x", means, quats), ("x", means, quats)]))
    with pytest.raises(PayloadError, match="appears twice"):
        parse_render(body)
    with pytest.raises(PayloadError, match="count 10 must be between 1 and 5"):
        parse_render(encode_render(frame([("x", means, quats)])), PayloadLimits(max_gaussians_per_object=5))


@pytest.mark.parametrize("mutate,needle", [
    (lambda b: b[:-4], "needs exactly"),
    (lambda b: b + b"\0" * 4, "needs exactly"),
    (lambda b: b[:8] + struct.pack("<I", 0) + b[12:], "count 0"),
    (lambda b: b[:8] + struct.pack("<I", 11) + b[12:], "needs exactly"),
    (lambda b: b[:12] + b"\x04" + b[13:], "sh_degree"),
    (lambda b: b[:12] + b"\x01" + b[13:], "COLORS_RGB"),
    (lambda b: b[:13] + b"\x01" + b[14:], "reserved"),
    (lambda b: b[:16] + struct.pack("<f", float("inf")) + b[20:], "NaN or Inf"),
    (lambda b: b[:16 + 120] + struct.pack("<f", 1.5) + b[16 + 124:], "opacities"),
    (lambda b: b[:16 + 160] + struct.pack("<f", 0.0) + b[16 + 164:], "scales"),
])
def test_item23_object_parser_rejects_wrong_sizes_and_values(mutate, needle):
    attrs, _, _ = scene(10, seed=7)
    body = encode_object(attrs)
    assert parse_object(body).count == 10
    with pytest.raises(PayloadError, match=needle):
        parse_object(mutate(body))


def test_item23_malformed_payloads_answer_400_over_http(app):
    for path, method in (("/v1/render", "POST"), ("/v1/objects/bad", "PUT")):
        for body in (b"", b"PTRF", b"\0" * 300):
            r = app.request(method, path, content=body, headers=OCTET)
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_payload", (path, body[:8], r.text)
    r = app.request("POST", "/v1/render", content=_valid_render(), headers={"Content-Type": "image/png"})
    assert r.status_code == 415


# ------------------------------------------------------------------------------- item 11: PLY checks
def _ply(n: int = 20, seed: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    g = Gaussians(means=rng.normal(0, 0.1, (n, 3)).astype(np.float32),
                  log_scales=np.log(rng.uniform(0.002, 0.005, (n, 3))).astype(np.float32),
                  quats=rng.normal(size=(n, 4)).astype(np.float32), opacity_logits=rng.normal(size=n).astype(np.float32),
                  sh_dc=rng.normal(0, 0.5, (n, 3)).astype(np.float32),
                  sh_rest=rng.normal(0, 0.3, (n, 3, 3)).astype(np.float32))
    return gaussians_to_ply_bytes(g)


def test_item11_ply_registration_is_checked_before_parsing(app, monkeypatch):
    ply = {"Content-Type": "application/x-ply"}
    r = app.request("PUT", "/v1/objects/from-ply", content=_ply(), headers=ply)
    assert r.status_code == 200 and r.json() == {"object_id": "from-ply", "count": 20, "sh_degree": 1, "colors": "sh",
                                                 "rest_rotations": True, "bones": 0}
    good = _ply()
    # a header claiming more vertices than the maximum never reaches the parser
    import pointillist.avatar.ply as plymod

    calls = []
    real = plymod.gaussians_from_ply_bytes
    monkeypatch.setattr(plymod, "gaussians_from_ply_bytes", lambda *a, **k: calls.append(1) or real(*a, **k))
    huge = good.replace(b"element vertex 20", b"element vertex 999999999999")
    r = app.request("PUT", "/v1/objects/p", content=huge, headers=ply)
    assert r.status_code == 400 and "vertex count" in r.json()["error"]["message"] and not calls
    # a header claiming more vertices than the body holds: refused by the size check
    lying = good.replace(b"element vertex 20", b"element vertex 21")
    r = app.request("PUT", "/v1/objects/p", content=lying, headers=ply)
    assert r.status_code == 400 and "truncated" in r.json()["error"]["message"]
    # a NaN anywhere is refused, naming the property
    header_end = good.index(b"end_header\n") + len(b"end_header\n")
    nan = good[:header_end] + struct.pack("<f", float("nan")) + good[header_end + 4:]
    r = app.request("PUT", "/v1/objects/p", content=nan, headers=ply)
    assert r.status_code == 400 and "NaN" in r.json()["error"]["message"]
    for bad in (b"not a ply", b"ply\nformat ascii 1.0\n", good[:-8]):
        r = app.request("PUT", "/v1/objects/p", content=bad, headers=ply)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_payload"


def test_render_of_a_ply_object_follows_each_gaussians_rotation_for_sh(app):
    """SH bands >= 1 are evaluated in each Gaussian's canonical frame: R(posed) R(rest)^T, as DESIGN §3 says."""
    from pointillist.avatar.ply import gaussians_from_ply_bytes
    from pointillist.render.rasterize import quat_to_rotmat

    ply = _ply(40, seed=9)
    assert app.request("PUT", "/v1/objects/shobj", content=ply,
                       headers={"Content-Type": "application/x-ply"}).status_code == 200
    g, _ = gaussians_from_ply_bytes(ply)
    rest = torch.nn.functional.normalize(torch.from_numpy(g.quats), dim=-1)
    turn = torch.tensor([np.cos(np.pi / 6), 0.0, np.sin(np.pi / 6), 0.0], dtype=torch.float32)  # 60 degrees about +Y, w-first
    w1, v1 = turn[0], turn[1:]
    w2, v2 = rest[:, :1], rest[:, 1:]
    posed = torch.cat([w1 * w2 - (v2 * v1).sum(-1, keepdim=True), w1 * v2 + w2 * v1 + torch.cross(v1.expand_as(v2), v2, dim=-1)], -1)
    body = encode_render(frame([("shobj", g.means, posed.numpy())], depth=False))
    rgba, _ = decode_raw_image(app.request("POST", "/v1/render", headers=OCTET, content=body).content)
    cam = camera()
    sh = torch.from_numpy(np.concatenate([g.sh_dc[:, None], g.sh_rest], 1))
    common = {"viewmat": cam["viewmat"], "K": cam["K"], "width": 64, "height": 48, "background": torch.zeros(3)}
    args = (torch.from_numpy(g.means), posed, torch.from_numpy(g.scales()), torch.from_numpy(g.opacities()))
    frames = quat_to_rotmat(posed) @ quat_to_rotmat(rest).transpose(1, 2)
    with_frames = rasterize(*args, sh=sh, sh_frames=frames, **common)
    without = rasterize(*args, sh=sh, **common)
    assert rgba[..., 3].max() > 0.1
    np.testing.assert_allclose(rgba[..., :3], with_frames.rgb.numpy(), atol=1e-5)
    assert np.abs(with_frames.rgb.numpy() - without.rgb.numpy()).max() > 1e-3  # the frames matter here


# ------------------------------------------------------------------------------- skinning on the backend
def _skinned_scene(n=300, bones=4, seed=11):
    """A SKIN object (weight patterns) and a frame's bones, plus the per-splat rotations the add-on's own
    numpy skinning (`addon.render_bridge.skin_rotations`) gives for the same pose: the oracle."""
    import sys
    from dataclasses import replace
    from pathlib import Path

    from scipy.spatial.transform import Rotation

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from addon import render_bridge as rb

    attrs, means, quats = scene(n, seed=seed, sh_degree=1)
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(bones) * 0.4, n).astype(np.float32)
    weights[:10] = 0.0  # unweighted splats keep their rest rotation
    weights[10:40] = np.eye(bones, dtype=np.float32)[rng.integers(0, bones, 30)]
    patterns = rb.weight_patterns(weights)
    rest_object = quats / np.linalg.norm(quats, axis=1, keepdims=True)  # rot_* in Blender object space
    head_rest = rb.rig_build.quat_multiply(rb._BLENDER_TO_HEAD_QUAT, rest_object).astype(np.float32)
    skinned = rb.with_skinning(replace(attrs, rest_quats=head_rest), patterns)
    mats = np.tile(np.eye(4), (bones, 1, 1))
    mats[:, :3, :3] = Rotation.random(bones, random_state=seed).as_matrix() * 0.4 + np.eye(3) * 0.6
    mats[:, :3, :3] = np.stack([Rotation.from_matrix(m).as_matrix() for m in mats[:, :3, :3]])
    obj_rot = Rotation.from_euler("xz", [20, -35], degrees=True).as_matrix()
    per_splat = rb.skin_rotations(patterns, mats, rest_object, obj_rot)
    return skinned, means, mats[:, :3, :3].astype(np.float32), rb.bone_frame_quat(obj_rot), per_splat


def test_skinned_objects_render_from_bones_as_from_per_splat_rotations(app):
    from pointillist.server.render_payload import FrameObject

    skinned, means, bones, post, per_splat = _skinned_scene()
    parsed = parse_object(encode_object(skinned))
    np.testing.assert_array_equal(parsed.pattern_weights, skinned.pattern_weights)
    np.testing.assert_array_equal(parsed.pattern_index, skinned.pattern_index)
    r = app.request("PUT", "/v1/objects/skinned", content=encode_object(skinned), headers=OCTET)
    assert r.status_code == 200 and r.json()["bones"] == 4
    by_bones = frame([("skinned", means, per_splat)])
    by_bones.objects = [FrameObject("skinned", means, bones=bones, post=post)]
    body = encode_render(by_bones)
    assert parse_render(body).objects[0].bones.shape == (4, 3, 3)
    a = decode_raw_image(app.request("POST", "/v1/render", content=body, headers=OCTET).content)
    b = decode_raw_image(app.request("POST", "/v1/render", content=encode_render(frame([("skinned", means, per_splat)])),
                                     headers=OCTET).content)
    assert a[0][..., 3].max() > 0.5
    np.testing.assert_allclose(a[0], b[0], atol=2e-5)  # SH degree 1: the rotation shows in the colour too
    np.testing.assert_allclose(a[1], b[1], atol=2e-5)
    wrong = frame([])
    wrong.objects = [FrameObject("skinned", means, bones=bones[:3], post=post)]
    r = app.request("POST", "/v1/render", content=encode_render(wrong), headers=OCTET)
    assert r.status_code == 400 and "3 bone rotations" in r.json()["error"]["message"]


def test_skinning_blocks_are_checked():
    from dataclasses import replace

    skinned, *_ = _skinned_scene(n=50, seed=3)
    body = encode_object(skinned)
    assert parse_object(body).pattern_index.max() < len(skinned.pattern_weights)
    with pytest.raises(PayloadError, match="sum to 1"):
        parse_object(encode_object(replace(skinned, pattern_weights=skinned.pattern_weights * 2)))
    with pytest.raises(PayloadError, match="not one of the"):
        bad = skinned.pattern_index.copy()
        bad[0] = len(skinned.pattern_weights)
        parse_object(encode_object(replace(skinned, pattern_index=bad)))
    with pytest.raises(PayloadError, match="SKIN needs REST_QUATS"):
        parse_object(body[:6] + struct.pack("<H", 4 | (body[6] & 1)) + body[8:])
    with pytest.raises(PayloadError, match="exactly"):
        parse_object(body[:-4])
