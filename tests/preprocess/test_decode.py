"""Decoding: allowed formats only, every colour mode to 8-bit RGB, EXIF orientation, limits, broken files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile
from pointillist.preprocess.decode import BACKGROUND, PortraitError, decode_image

from .images import astronaut, encode, png_claiming_size, resized, save


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return astronaut()


def close_to(rgb: np.ndarray, reference: np.ndarray, tolerance: float) -> bool:
    return float(np.abs(rgb.astype(float) - reference.astype(float)).mean()) < tolerance


# --- formats ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix,kwargs,tolerance", [(".jpg", {"quality": 95}, 4), (".png", {}, 0), (".webp", {"lossless": True}, 0),
                                                      (".tif", {}, 0), (".bmp", {}, 0)])
def test_allowed_formats_decode_to_rgb8(astro, tmp_path, suffix, kwargs, tolerance):
    decoded = decode_image(save(astro, tmp_path / f"a{suffix}", **kwargs))
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == (512, 512, 3)
    assert decoded.alpha is None and decoded.scale == 1.0 and decoded.original_size == (512, 512)
    assert decoded.warnings == []
    assert close_to(decoded.rgb, astro, tolerance + 1e-9)


def test_bytes_source(astro):
    decoded = decode_image(encode(astro, "PNG"))
    assert np.array_equal(decoded.rgb, astro)


def test_mpo_camera_jpeg_is_a_jpeg(astro):
    data = encode(astro, "MPO", save_all=True, append_images=[Image.fromarray(astro[::2, ::2])], quality=95)
    decoded = decode_image(data)
    assert decoded.rgb.shape == (512, 512, 3) and decoded.warnings == []


def test_multi_frame_tiff_uses_the_first_frame(astro, tmp_path):
    path = save(astro, tmp_path / "pages.tif", save_all=True, append_images=[Image.new("RGB", (64, 64))])
    decoded = decode_image(path)
    assert decoded.rgb.shape == (512, 512, 3)
    assert any("2 frames; using the first" in w for w in decoded.warnings)


def test_wrong_extension_is_read_by_content(astro, tmp_path):
    path = save(astro, tmp_path / "really_png.jpg", format="PNG")
    decoded = decode_image(path)
    assert np.array_equal(decoded.rgb, astro)
    assert any("really_png.jpg holds a PNG image despite its .jpg extension" in w for w in decoded.warnings)


# --- colour modes -----------------------------------------------------------------------------------

def test_cmyk_jpeg(astro, tmp_path):
    image = Image.fromarray(astro).convert("CMYK")
    assert image.mode == "CMYK"
    decoded = decode_image(save(image, tmp_path / "cmyk.jpg", quality=95))
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == (512, 512, 3)
    assert close_to(decoded.rgb, np.asarray(image.convert("RGB")), 4)


def test_16_bit_grayscale_png(astro, tmp_path):
    grey = np.asarray(Image.fromarray(astro).convert("L"))
    image = Image.fromarray(grey.astype(np.uint16) * 257)
    path = save(image, tmp_path / "a16.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # I;16 (or I on older Pillow)
    decoded = decode_image(path)
    assert decoded.rgb.dtype == np.uint8
    assert np.abs(decoded.rgb[..., 0].astype(int) - grey).max() <= 1  # scaled, not clipped
    assert np.array_equal(decoded.rgb[..., 0], decoded.rgb[..., 1])


def test_dark_16_bit_values_are_not_mistaken_for_8_bit(tmp_path):
    image = Image.fromarray(np.full((32, 32), 200, np.uint16))  # 200 / 65535: nearly black
    assert decode_image(save(image, tmp_path / "dark16.png")).rgb.max() <= 1


@pytest.mark.parametrize("mode", ["L", "P", "1"])
def test_grayscale_palette_bilevel(astro, tmp_path, mode):
    image = Image.fromarray(astro).convert(mode)
    decoded = decode_image(save(image, tmp_path / f"a_{mode}.png"))
    assert decoded.rgb.shape == (512, 512, 3) and decoded.alpha is None
    assert np.array_equal(decoded.rgb, np.asarray(image.convert("RGB")))


def test_rgba_alpha_is_composited_on_grey_and_kept_as_hint(astro, tmp_path):
    rgba = Image.fromarray(astro).convert("RGBA")
    alpha = np.full(astro.shape[:2], 255, np.uint8)
    alpha[:, :60] = 0
    alpha[:, 60:70] = 128
    rgba.putalpha(Image.fromarray(alpha))
    decoded = decode_image(save(rgba, tmp_path / "cutout.png"))
    assert decoded.alpha is not None and np.array_equal(decoded.alpha, alpha)
    assert np.all(decoded.rgb[:, :60] == BACKGROUND)
    half = (astro[:, 60:70].astype(float) * 128 / 255 + BACKGROUND * 127 / 255)
    assert np.abs(decoded.rgb[:, 60:70] - half).max() <= 1
    assert np.array_equal(decoded.rgb[:, 70:], astro[:, 70:])


def test_opaque_rgba_and_la_have_no_hint(astro, tmp_path):
    decoded = decode_image(save(Image.fromarray(astro).convert("RGBA"), tmp_path / "opaque.png"))
    assert decoded.alpha is None
    la = Image.fromarray(astro).convert("LA")
    a = np.full(astro.shape[:2], 255, np.uint8)
    a[:10] = 0
    la.putalpha(Image.fromarray(a))
    decoded = decode_image(save(la, tmp_path / "la.png"))
    assert decoded.alpha is not None and decoded.alpha[:10].max() == 0 and np.all(decoded.rgb[:10] == BACKGROUND)


def test_palette_transparency_becomes_alpha(tmp_path):
    image = Image.new("P", (40, 40), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (20, 0, 40, 40))
    path = tmp_path / "pal.png"
    image.save(path, transparency=0)
    decoded = decode_image(path)
    assert decoded.alpha is not None and decoded.alpha[:, :20].max() == 0 and decoded.alpha[:, 20:].min() == 255
    assert np.all(decoded.rgb[:, :20] == BACKGROUND) and np.all(decoded.rgb[:, 20:] == (0, 0, 255))


def test_broken_colour_profile_is_a_warning(astro):
    data = encode(astro, "JPEG", quality=95, icc_profile=b"this is not an ICC profile")
    decoded = decode_image(data)
    assert decoded.rgb.shape == (512, 512, 3)
    assert any("colour profile could not be applied" in w for w in decoded.warnings)


def test_srgb_profile_changes_nothing(astro):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    decoded = decode_image(encode(astro, "PNG", icc_profile=icc))
    assert np.array_equal(decoded.rgb, astro) and decoded.warnings == []


# --- EXIF orientation -------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation,stored_turn", [(6, 90), (8, -90), (3, 180)])
def test_exif_orientation_is_applied(astro, tmp_path, orientation, stored_turn):
    stored = Image.fromarray(astro).rotate(stored_turn, expand=True)  # stored sideways / upside down ...
    exif = Image.Exif()
    exif[0x0112] = orientation  # ... with the tag that says how to display it upright
    decoded = decode_image(save(stored, tmp_path / f"o{orientation}.jpg", exif=exif, quality=95))
    assert decoded.rgb.shape == (512, 512, 3)
    assert close_to(decoded.rgb, astro, 4)


# --- size limits and downscaling --------------------------------------------------------------------

def test_large_image_is_downscaled_with_its_scale(astro):
    big = resized(astro, (3000, 2400))
    decoded = decode_image(encode(big, "JPEG", quality=90))
    assert decoded.rgb.shape == (1638, 2048, 3)
    assert decoded.original_size == (3000, 2400)
    assert decoded.scale == pytest.approx(2048 / 3000)
    assert decoded.scale_xy == pytest.approx((2048 / 3000, 1638 / 2400))
    assert decoded.original_rgb is not None and decoded.original_rgb.shape == (2400, 3000, 3)
    assert decoded.full_rgb is decoded.original_rgb
    assert any("downscaled from 3000×2400 to 2048×1638" in w for w in decoded.warnings)
    small = decode_image(encode(astro, "PNG"))
    assert small.original_rgb is None and small.full_rgb is small.rgb


def test_max_side_is_a_parameter(astro):
    decoded = decode_image(encode(astro, "PNG"), max_side=256)
    assert decoded.rgb.shape == (256, 256, 3) and decoded.scale == 0.5


@pytest.mark.parametrize("width,height,max_pixels,expected", [
    (60000, 60000, 50_000_000, "too large"),  # Pillow's DecompressionBombError (> 2 × its limit)
    (10000, 10000, 200_000_000, "too large to decode safely"),  # Pillow's warning, promoted to an error
    (10000, 6000, 50_000_000, r"10000×6000 pixels \(60 MP\) is too large, over the 50 MP limit"),  # our own limit
])
def test_pixel_limits_refuse_before_decoding(monkeypatch, width, height, max_pixels, expected):
    data = png_claiming_size(width, height)
    assert len(data) < 100

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(PortraitError, match=expected) as err:  # no_decoding proves no pixel was read
        decode_image(data, max_pixels=max_pixels)
    assert "downscale" in str(err.value)


# --- broken input -----------------------------------------------------------------------------------

def test_bad_files_are_named(astro, tmp_path):
    jpeg = encode(astro, "JPEG", quality=90)
    png = encode(astro, "PNG")
    webp = encode(astro, "WEBP")
    tiff = encode(astro, "TIFF")
    gif = encode(Image.fromarray(astro).convert("P"), "GIF")
    cases = {
        "empty.jpg": (b"", "the file is empty \\(0 bytes\\)"),
        "text.png": (b"just some text, not pixels\n" * 3, "not an image Pointillist can read; use a JPEG, PNG"),
        "cut.jpg": (jpeg[: len(jpeg) // 3], "JPEG data is truncated or corrupt"),
        "cut.png": (png[: len(png) // 2], "PNG data is truncated or corrupt"),
        "header_only.png": (png[:30], "PNG data is truncated or corrupt"),
        "cut.webp": (webp[: len(webp) * 9 // 10], "WEBP data is truncated or corrupt"),
        "cut.tif": (tiff[: len(tiff) // 2], "TIFF data is truncated or corrupt"),
        "anim.png": (gif, "GIF images are not accepted; save the portrait as JPEG, PNG, WebP, TIFF or BMP"),
        "icon.png": (encode(Image.fromarray(astro).resize((64, 64)), "ICO"), "ICO images are not accepted"),
        "photo.jpg": (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, "HEIC images are not accepted"),
        "layers.jpg": (b"8BPS\x00\x01" + b"\x00" * 64, "PSD images are not accepted"),
    }
    for name, (payload, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(PortraitError, match=message):
            decode_image(path)
    with pytest.raises(PortraitError, match="file not found"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(PortraitError, match="is a folder"):
        decode_image(tmp_path)
    with pytest.raises(PortraitError, match="empty"):
        decode_image(b"")


def test_portrait_error_is_a_value_error():
    assert issubclass(PortraitError, ValueError)
    with pytest.raises(ValueError):
        decode_image(io.BytesIO(b"").getvalue())
