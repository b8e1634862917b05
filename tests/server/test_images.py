"""Checklist items 7 and 8: uploads are decoded defensively and normalised. The corpus is generated
here: truncated files, decompression bombs (a lying header and a real, highly compressed one), markup,
other formats, zero bytes, wrong extensions, huge dimensions; and CMYK, 16-bit, palette, grayscale,
alpha and EXIF-rotated images that must be accepted and come out as upright 8-bit RGB."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from PIL import Image
from pointillist.preprocess.decode import PortraitError, decode_image

from ..preprocess.images import encode, png_claiming_size
from .conftest import InProcess, wait_for


def gradient(w: int = 96, h: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)


def _bomb_png() -> bytes:
    """A real 60-megapixel PNG of one colour: a few tens of kB on disk, 180 MB once decoded."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 6_000)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _exif_rotated() -> bytes:
    image = Image.fromarray(gradient(96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@functools.cache
def bad_corpus() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, upload file name); every one must be refused with 400 bad_image."""
    jpeg, png = encode(gradient(), "JPEG"), encode(gradient(), "PNG")
    return {
        "zero-bytes": (b"", "portrait.jpg"),
        "truncated-jpeg": (jpeg[: len(jpeg) // 2], "portrait.jpg"),
        "truncated-png": (png[: len(png) - 40], "portrait.png"),
        "header-only-png": (png[:40], "portrait.png"),
        "corrupt-png-data": (png[:60] + bytes(b ^ 0x5A for b in png[60:120]) + png[120:], "portrait.png"),
        "bomb-lying-header": (png_claiming_size(60_000, 60_000), "portrait.png"),
        "bomb-real-compressed": (_bomb_png(), "portrait.png"),
        "huge-dimensions-jpeg-header": (jpeg[:163] + b"\xff\xc0\x00\x11\x08\xff\xff\xff\xff" + jpeg[172:], "p.jpg"),
        "gif": (encode(gradient(), "GIF"), "portrait.png"),
        "ico": (encode(Image.fromarray(gradient(32, 32)), "ICO"), "portrait.png"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "portrait.svg"),
        "html": (b"<html><body><img src=x onerror=alert(1)></body></html>", "portrait.html"),
        "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\n", "portrait.pdf"),
        "random": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "portrait.jpg"),
        "zip": (b"PK\x03\x04" + b"\0" * 100, "portrait.png"),
    }


@functools.cache
def good_corpus() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """name -> (bytes, expected (h, w) after decoding); every one must be accepted."""
    rgb = gradient()
    pil = Image.fromarray(rgb)
    sixteen = Image.fromarray(gradient()[..., 0].astype(np.uint16) * 257)  # I;16
    rgba = np.dstack([rgb, np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None].repeat(rgb.shape[0], 0)])
    return {
        "cmyk-jpeg": (encode(pil.convert("CMYK"), "JPEG"), (64, 96)),
        "16-bit-png": (encode(sixteen, "PNG"), (64, 96)),
        "16-bit-tiff": (encode(sixteen, "TIFF"), (64, 96)),
        "palette-png": (encode(pil.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), (64, 96)),
        "grayscale-png": (encode(pil.convert("L"), "PNG"), (64, 96)),
        "grayscale-alpha-png": (encode(pil.convert("LA"), "PNG"), (64, 96)),
        "rgba-png": (encode(rgba, "PNG"), (64, 96)),
        "exif-rotated-jpeg": (_exif_rotated(), (96, 64)),
        "webp": (encode(rgb, "WEBP"), (64, 96)),
        "bmp": (encode(rgb, "BMP"), (64, 96)),
        "png-named-jpg": (encode(rgb, "PNG"), (64, 96)),
    }


BAD = ["zero-bytes", "truncated-jpeg", "truncated-png", "header-only-png", "corrupt-png-data", "bomb-lying-header",
       "bomb-real-compressed", "huge-dimensions-jpeg-header", "gif", "ico", "svg", "html", "pdf", "random", "zip"]
GOOD = ["cmyk-jpeg", "16-bit-png", "16-bit-tiff", "palette-png", "grayscale-png", "grayscale-alpha-png", "rgba-png",
        "exif-rotated-jpeg", "webp", "bmp", "png-named-jpg"]


def test_the_corpus_lists_match():
    assert sorted(BAD) == sorted(bad_corpus()) and sorted(GOOD) == sorted(good_corpus())


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_checkpoint):
    from pointillist.server.config import Limits

    with InProcess(tmp_path_factory.mktemp("images-data"), checkpoint=tiny_checkpoint,
                   limits=Limits(max_queue=50)) as app:
        yield app
        wait_for(app.service.jobs.stats, lambda s: s["queued"] == 0 and s["running"] is None)


@pytest.mark.parametrize("name", BAD)
def test_item07_bad_images_are_refused_with_400(app, name):
    payload, filename = bad_corpus()[name]
    r = app.request("POST", "/v1/avatars", files={"image": (filename, payload, "image/png")})
    assert r.status_code == 400, (name, r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == "bad_image" and error["message"] and "Traceback" not in error["message"]
    assert "<bytes>" not in error["message"]


def test_item07_bombs_are_refused_from_the_header_before_decoding(monkeypatch):
    from PIL import ImageFile

    loads = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or real(self))
    for payload in (png_claiming_size(60_000, 60_000), _bomb_png()):
        with pytest.raises(PortraitError, match="too large"):
            decode_image(payload)
    assert loads == []  # refused from the header: no pixel was decoded


def test_item07_the_decompression_bomb_warning_is_an_error():
    """Even with our own pixel limit lifted, Pillow's bomb warning (over ~89 MP) stops the decode."""
    with pytest.raises(PortraitError, match="too large to decode safely"):
        decode_image(png_claiming_size(12_000, 12_000), max_pixels=10**12)


@pytest.mark.parametrize("name", GOOD)
def test_item08_images_are_normalised_to_upright_8bit_rgb(app, name):
    payload, (h, w) = good_corpus()[name]
    decoded = decode_image(payload)
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == (h, w, 3), (name, decoded.rgb.shape)
    if name == "exif-rotated-jpeg":  # turned 90° clockwise, as the tag says: stored right edge at the bottom,
        red, green = decoded.rgb[..., 0].astype(int), decoded.rgb[..., 1].astype(int)  # stored top at the right
        assert red[-1].mean() > red[0].mean() + 150 and green[:, 0].mean() > green[:, -1].mean() + 150
    if name == "rgba-png":
        assert decoded.alpha is not None  # transparency is composited, and kept as the matte hint
    filename = "portrait.jpg" if name == "png-named-jpg" else "portrait.img"
    r = app.request("POST", "/v1/avatars", files={"image": (filename, payload, "application/octet-stream")})
    assert r.status_code == 202, (name, r.text)
