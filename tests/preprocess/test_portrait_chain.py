"""Portrait understanding on real and deliberately broken files the tests make themselves."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pointillist.head import mediapipe_topology as mpt
from pointillist.preprocess.align import CropTransform
from pointillist.preprocess.decode import PortraitError, decode_image
from pointillist.preprocess.landmarks import detect_landmarks, estimate_yaw
from pointillist.preprocess.portrait import understand_portrait

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


def save(image: np.ndarray | Image.Image, path: Path, **kwargs) -> Path:
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **kwargs)
    return path


def test_astronaut_crop_is_upright_and_centred(astronaut, tmp_path):
    inputs = understand_portrait(save(astronaut, tmp_path / "a.jpg", quality=95))
    assert inputs.crop.shape == (512, 512, 3) and inputs.matte.shape == (512, 512)
    lm = inputs.landmarks
    left = lm[list(mpt.LEFT_EYE_UPPER + mpt.LEFT_EYE_LOWER), :2].mean(0)
    right = lm[list(mpt.RIGHT_EYE_UPPER + mpt.RIGHT_EYE_LOWER), :2].mean(0)
    assert abs(left[1] - right[1]) < 2.0  # eyes level
    assert left[0] > right[0]  # the subject's left eye is on the image right
    assert abs((left[0] + right[0]) / 2 - 256) < 8
    # matte: face is foreground, top corners are background, hair edge is soft
    assert inputs.matte[240:300, 230:280].mean() > 240
    assert inputs.matte[:20, :20].mean() < 30 and inputs.matte[:20, -20:].mean() < 30
    assert ((inputs.matte > 10) & (inputs.matte < 245)).sum() > 500
    # the transform maps the original image's landmarks onto the crop's
    original = detect_landmarks(astronaut).points
    mapped = inputs.transform.apply(original)
    assert np.linalg.norm(mapped[:468] - lm[:468, :2], axis=1).mean() < 5.0  # two detections, ~2 px in the original


def test_crop_transform_round_trip():
    t = CropTransform(np.array([[0.8, -0.3, 12.0], [0.3, 0.8, -4.0]]), 512)
    pts = np.random.default_rng(0).random((20, 2)) * 500
    np.testing.assert_allclose(t.inverse().apply(t.apply(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(CropTransform.from_json(t.to_json()).matrix, t.matrix)


def test_downscaled_large_image_maps_back(astronaut, tmp_path):
    big = np.asarray(Image.fromarray(astronaut).resize((2600, 2600), Image.BICUBIC))
    inputs = understand_portrait(save(big, tmp_path / "big.png"))
    assert any("downscaled" in w for w in inputs.warnings)
    small = understand_portrait(save(astronaut, tmp_path / "small.png"))
    # the same face lands in the same place in both crops
    assert np.linalg.norm(inputs.landmarks[:468, :2] - small.landmarks[:468, :2], axis=1).mean() < 3.0
    # crop transform of the big image, applied to big-image coordinates, reaches the crop
    assert inputs.transform.scale < small.transform.scale


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "I;16", "RGBA"])
def test_colour_modes_decode_to_rgb8(astronaut, tmp_path, mode):
    image = Image.fromarray(astronaut)
    if mode == "I;16":
        converted = Image.fromarray((np.asarray(image.convert("L")).astype(np.uint16) * 257))
        path = save(converted, tmp_path / "a16.png")
    elif mode == "RGBA":
        rgba = image.convert("RGBA")
        a = np.full(astronaut.shape[:2], 255, np.uint8)
        a[:, :60] = 0
        rgba.putalpha(Image.fromarray(a))
        path = save(rgba, tmp_path / "a.png")
    elif mode == "CMYK":
        path = save(image.convert("CMYK"), tmp_path / "a.jpg", quality=95)
    else:
        path = save(image.convert(mode), tmp_path / f"a_{mode}.png")
    decoded = decode_image(path)
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == (512, 512, 3)
    if mode == "RGBA":
        assert decoded.alpha is not None and decoded.alpha[:, :60].max() == 0
        assert np.all(decoded.rgb[:, :60] == 128)  # composited on mid-grey
    understand_portrait(path)  # and the face is still found


def test_exif_rotated_jpeg_is_upright(astronaut, tmp_path):
    rotated = Image.fromarray(astronaut).rotate(90, expand=True)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with Orientation "rotate 90 CW to display"
    path = save(rotated, tmp_path / "rot.jpg", exif=exif, quality=95)
    decoded = decode_image(path)
    np.testing.assert_allclose(decoded.rgb.astype(float).mean(), astronaut.astype(float).mean(), atol=3)
    lm = understand_portrait(path).landmarks
    assert abs(lm[mpt.LEFT_EYE_OUTER, 1] - lm[mpt.RIGHT_EYE_OUTER, 1]) < 3


def huge_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_bad_inputs_are_named(astronaut, tmp_path):
    cases = []
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases.append((tmp_path / "empty.jpg", "empty"))
    (tmp_path / "text.png").write_bytes(b"just some text, not pixels")
    cases.append((tmp_path / "text.png", "not an image"))
    good = save(astronaut, tmp_path / "good.jpg", quality=90).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 3])
    cases.append((tmp_path / "cut.jpg", "truncated or corrupt"))
    save(Image.fromarray(astronaut).convert("P"), tmp_path / "anim.png", format="GIF")
    cases.append((tmp_path / "anim.png", "GIF images are not accepted"))
    (tmp_path / "huge.png").write_bytes(huge_png(60000, 60000))
    cases.append((tmp_path / "huge.png", "too large|limit"))
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    cases.append((save(noise, tmp_path / "noise.png"), "no face found"))
    tiny = np.full((400, 400, 3), 128, np.uint8)
    tiny[150:230, 150:230] = np.asarray(Image.fromarray(astronaut[20:300, 110:390]).resize((80, 80)))
    cases.append((save(tiny, tmp_path / "tiny.png"), "px tall|no face found"))
    cases.append((tmp_path / "missing.jpg", "not found"))
    for path, message in cases:
        with pytest.raises(PortraitError, match=message):
            understand_portrait(path)


def test_wrong_extension_is_read_by_content(astronaut, tmp_path):
    path = save(astronaut, tmp_path / "really_png.jpg", format="PNG")
    decoded = decode_image(path)
    assert any("PNG image despite its .jpg extension" in w for w in decoded.warnings)


def test_several_faces_use_the_largest(astronaut, tmp_path):
    face = astronaut[0:330, 60:420]
    canvas = np.full((420, 900, 3), 128, np.uint8)
    canvas[40:370, 20:380] = face
    small = np.asarray(Image.fromarray(face).resize((240, 220)))
    canvas[100:320, 600:840] = small
    inputs = understand_portrait(save(canvas, tmp_path / "two.png"))
    assert any("2 faces" in w for w in inputs.warnings)
    original = inputs.transform.inverse().apply(inputs.landmarks[:, :2])
    assert original[mpt.NOSE_TIP, 0] < 450  # the big face on the left


def test_yaw_estimate_refuses_profiles():
    pts = np.zeros((478, 3))
    pts[mpt.RIGHT_EYE_OUTER, :2] = (100, 100)
    pts[mpt.LEFT_EYE_OUTER, :2] = (200, 100)
    pts[mpt.NOSE_TIP, :2] = (150, 150)
    assert abs(estimate_yaw(pts)) < 1
    pts[mpt.NOSE_TIP, :2] = (205, 150)  # nose beyond the far eye corner: a profile
    assert estimate_yaw(pts) > 60
