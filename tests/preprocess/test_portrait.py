"""The whole chain on the astronaut and its variants: upright centred crop, landmarks, transform back to the photo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pointillist.head import mediapipe_topology as mpt
from pointillist.preprocess.align import EYE_LINE, CropTransform
from pointillist.preprocess.decode import PortraitError
from pointillist.preprocess.landmarks import detect_landmarks
from pointillist.preprocess.portrait import PortraitInputs, understand_portrait

from .images import astronaut, encode, eye_centres, on_canvas, resized, save


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return astronaut()


@pytest.fixture(scope="module")
def astro_landmarks(astro) -> np.ndarray:
    return detect_landmarks(astro).points


@pytest.fixture(scope="module")
def astro_inputs(astro, tmp_path_factory) -> PortraitInputs:
    return understand_portrait(save(astro, tmp_path_factory.mktemp("astro") / "astronaut.jpg", quality=95))


def assert_upright_and_centred(inputs: PortraitInputs, level_px: float = 2.0) -> None:
    assert inputs.crop.shape == (512, 512, 3) and inputs.crop.dtype == np.uint8
    assert inputs.matte.shape == (512, 512) and inputs.matte.dtype == np.uint8
    assert inputs.landmarks.shape == (478, 3) and inputs.landmarks.dtype == np.float32
    left, right = eye_centres(inputs.landmarks)
    assert abs(left[1] - right[1]) < level_px  # eyes level
    assert left[0] > right[0]  # upright, not mirrored: the subject's left eye on the image right
    centre = (left + right) / 2
    assert abs(centre[0] - 256) < 3 and abs(centre[1] - EYE_LINE * 512) < 3
    nose, chin, brow = inputs.landmarks[mpt.NOSE_TIP, :2], inputs.landmarks[mpt.CHIN, :2], inputs.landmarks[mpt.FOREHEAD, :2]
    assert centre[1] < nose[1] < chin[1] and brow[1] < centre[1]
    assert 0.38 < (chin[1] - brow[1]) / 512 < 0.52  # face ≈ 45 % of the crop


def crop_to_original(inputs: PortraitInputs) -> np.ndarray:
    return inputs.transform.inverse().apply(inputs.landmarks[:, :2])


def test_astronaut_chain(astro_inputs, astro_landmarks):
    inputs = astro_inputs
    assert_upright_and_centred(inputs, level_px=0.5)
    assert inputs.warnings == []
    assert set(inputs.timings) == {"decode", "landmarks", "align", "person", "matte"}
    assert all(v >= 0 for v in inputs.timings.values())
    # the hair is inside the crop: nothing of the person touches the top edge
    assert inputs.matte[:4].max() < 60
    top = np.argmax(inputs.matte.max(1) > 128)
    assert 8 < top < 80
    # the transform maps the photo's landmarks onto the crop's (two detections: ~1 px apart)
    mapped = inputs.transform.apply(astro_landmarks)
    assert np.linalg.norm(mapped[:468] - inputs.landmarks[:468, :2], axis=1).mean() < 2.5
    np.testing.assert_allclose(crop_to_original(inputs)[:468], astro_landmarks[:468, :2], atol=12)
    # z follows the crop's scale: the nose tip is nearer than the cheek contour by a face-sized amount
    assert inputs.landmarks[234, 2] - inputs.landmarks[mpt.NOSE_TIP, 2] > 40


def test_transform_survives_json(astro_inputs):
    back = CropTransform.from_json(astro_inputs.transform.to_json())
    np.testing.assert_allclose(back.matrix, astro_inputs.transform.matrix)
    assert back.size == 512


def test_downscaled_large_image_maps_back(astro, astro_inputs, astro_landmarks):
    """A 2600² version is downscaled to 2048 for detection; results map back to its own pixels."""
    big = resized(astro, (2600, 2600))
    inputs = understand_portrait(encode(big, "JPEG", quality=92))
    assert any("downscaled from 2600×2600 to 2048×2048" in w for w in inputs.warnings)
    assert_upright_and_centred(inputs)
    in_big = crop_to_original(inputs)
    back = in_big * 512 / 2600  # big pixels -> astronaut pixels
    assert np.linalg.norm(back[:468] - astro_landmarks[:468, :2], axis=1).mean() < 2.0
    assert np.linalg.norm(inputs.landmarks[:468, :2] - astro_inputs.landmarks[:468, :2], axis=1).mean() < 2.0
    assert inputs.transform.scale == pytest.approx(astro_inputs.transform.scale * 512 / 2600, rel=0.03)


def test_small_face_in_a_big_photo_is_cut_from_full_resolution(astro, astro_inputs):
    """A 4096² photo with the 512² astronaut in it: 106 px face in the photo, 53 px after the detection
    downscale. The size check uses the photo's pixels and the crop comes from them (sharp)."""
    photo = on_canvas(astro, (4096, 4096), (1800, 2000))
    inputs = understand_portrait(encode(photo, "PNG", compress_level=1))
    assert_upright_and_centred(inputs)
    diff = np.abs(inputs.crop.astype(float) - astro_inputs.crop.astype(float))[100:450, 120:400].mean()
    assert diff < 6  # the same crop as from the astronaut alone (a 2× upsampled 53 px face would be blurred)
    back = crop_to_original(inputs) - (1800, 2000)
    np.testing.assert_allclose(back[:468], crop_to_original(astro_inputs)[:468], atol=3)


@pytest.mark.parametrize("orientation,stored_turn", [(6, 90), (8, -90)])
def test_exif_rotated_jpeg(astro, tmp_path, orientation, stored_turn):
    stored = Image.fromarray(astro).rotate(stored_turn, expand=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    inputs = understand_portrait(save(stored, tmp_path / "rot.jpg", exif=exif, quality=95))
    assert_upright_and_centred(inputs)
    assert abs(inputs.transform.rotation_deg) < 10  # upright already after exif_transpose


def test_photo_on_its_side_without_exif(astro):
    inputs = understand_portrait(encode(np.ascontiguousarray(np.rot90(astro)), "PNG"))
    assert_upright_and_centred(inputs)
    assert abs(abs(inputs.transform.rotation_deg) - 90) < 10  # the crop turned it upright


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "I;16", "RGBA"])
def test_colour_modes_through_the_chain(astro, mode):
    image = Image.fromarray(astro)
    if mode == "I;16":
        data = encode(Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257), "PNG")
    elif mode == "RGBA":
        rgba = image.convert("RGBA")
        a = np.full(astro.shape[:2], 255, np.uint8)
        a[:110, :180] = 0  # a transparent corner behind the head (not a cut-out)
        rgba.putalpha(Image.fromarray(a))
        data = encode(rgba, "PNG")
    elif mode == "CMYK":
        data = encode(image.convert("CMYK"), "JPEG", quality=95)
    else:
        data = encode(image.convert(mode), "PNG")
    inputs = understand_portrait(data)
    assert_upright_and_centred(inputs)
    if mode == "RGBA":  # the transparent corner is background in the matte, grey in the crop
        corner = inputs.transform.apply(np.array([[165.0, 20.0]]))[0].astype(int)
        assert 0 <= corner.min() and corner.max() < 512
        assert inputs.matte[corner[1], corner[0]] == 0 and np.all(np.abs(inputs.crop[corner[1], corner[0]].astype(int) - 128) <= 2)
        assert inputs.matte[230:300, 220:290].min() > 240


def test_several_faces_chain_uses_the_largest(astro):
    face = astro[0:330, 60:420]
    canvas = on_canvas(face, (900, 420), (20, 40))
    canvas[100:320, 600:840] = resized(face, (240, 220))
    inputs = understand_portrait(encode(canvas, "PNG"))
    assert "2 faces found; using the largest" in inputs.warnings
    assert crop_to_original(inputs)[mpt.NOSE_TIP, 0] < 450
    assert_upright_and_centred(inputs)


def test_errors_come_through_the_chain(astro, tmp_path):
    cases = [
        (b"", "empty"),
        (b"hello", "not an image"),
        (encode(np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8), "PNG"), "no human face found"),
        (encode(on_canvas(resized(astro, (90, 90)), (400, 400), (150, 150)), "PNG"), "the face is too small"),
    ]
    for data, message in cases:
        with pytest.raises(PortraitError, match=message):
            understand_portrait(data)
    with pytest.raises(PortraitError, match="not found"):
        understand_portrait(tmp_path / "nope.png")


def test_cutout_portrait_alpha_becomes_the_matte(astro):
    from pointillist.preprocess.align import warp

    ys, xs = np.mgrid[0:512, 0:512]
    alpha = np.clip((1.0 - (((xs - 250) / 150) ** 2 + ((ys - 230) / 215) ** 2)) * 255 * 5, 0, 255).astype(np.uint8)
    rgba = Image.fromarray(astro).convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    inputs = understand_portrait(encode(rgba, "PNG"))
    assert_upright_and_centred(inputs)
    expected = warp(alpha, inputs.transform, fill=0)
    assert np.abs(inputs.matte.astype(int) - expected.astype(int)).max() <= 1
    assert inputs.matte[:10].max() == 0 and inputs.matte[230:300, 220:290].min() > 240
