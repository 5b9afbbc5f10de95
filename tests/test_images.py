"""open_rgb / load_rgb: every bad or unusual input gets its exact outcome."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cbir.data.images import ImageError, decode_rgb, load_rgb, open_rgb, to_rgb
from cbir.errors import CbirError


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png_with_header(path, width: int, height: int) -> None:
    """A PNG whose IHDR declares ``width x height`` (valid CRCs) but holds almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))


def _reason(path, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        open_rgb(path, **kwargs)
    assert isinstance(info.value, CbirError)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return info.value


def test_plain_rgb_round_trip(tmp_path):
    pixels = _noise(17, 23)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (17, 23, 3)
    np.testing.assert_array_equal(out, pixels)
    assert decode_rgb(tmp_path / "a.png").conversions == []


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(_noise(128, 128)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _reason(path).reason == "truncated"


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_noise(128, 128)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _reason(path).reason == "truncated"


def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.jpg"
    path.write_bytes(b"")
    assert _reason(path).reason == "empty"


def test_text_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    assert _reason(path).reason == "not_an_image"


def test_missing_file_is_unreadable(tmp_path):
    assert _reason(tmp_path / "missing.png").reason == "unreadable"


def test_directory_is_unreadable(tmp_path):
    (tmp_path / "folder.png").mkdir()
    assert _reason(tmp_path / "folder.png").reason == "unreadable"


def test_bomb_beyond_pillow_limit(tmp_path):
    path = tmp_path / "bomb.png"
    _png_with_header(path, 100_000, 100_000)  # 1e10 pixels: Pillow's own DecompressionBombError
    error = _reason(path)
    assert error.reason == "too_large"


def test_declared_size_over_max_pixels_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    _png_with_header(path, 8_000, 6_000)  # 48 M pixels > default 40 M; pixel data is absent
    error = _reason(path)
    assert error.reason == "too_large" and "48000000" in error.detail


def test_max_pixels_parameter(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_noise(100, 100)).save(path)
    assert _reason(path, max_pixels=9_999).reason == "too_large"
    assert open_rgb(path, max_pixels=10_000).size == (100, 100)


def test_too_small(tmp_path):
    path = tmp_path / "tiny.png"
    Image.fromarray(_noise(10, 40)).save(path)
    assert _reason(path, min_side=11).reason == "too_small"
    assert open_rgb(path, min_side=10).size == (40, 10)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    image = Image.new("CMYK", (32, 16), (0, 0, 0, 0))  # white
    image.paste((255, 0, 0, 0), (0, 0, 16, 16))  # full cyan on the left half
    image.save(path, quality=100)
    decoded = decode_rgb(path)
    assert decoded.source_mode == "CMYK" and decoded.conversions == ["cmyk"]
    out = np.asarray(decoded.image).astype(int)
    assert decoded.image.mode == "RGB" and out.shape == (16, 32, 3)
    np.testing.assert_allclose(out[8, 4], [0, 255, 255], atol=3)
    np.testing.assert_allclose(out[8, 28], [255, 255, 255], atol=3)


def test_sixteen_bit_png(tmp_path):
    path = tmp_path / "deep.png"
    values = np.array([[0, 257 * 100, 65535, 32767]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    decoded = decode_rgb(path)
    assert decoded.source_mode.startswith("I") and {"16bit", "grey"} <= set(decoded.conversions)
    out = np.asarray(decoded.image)
    # v * 255 / 65535 rounded: 0, 100, 255, 127.498 -> 127
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255, 127])
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_palette_png_with_alpha(tmp_path):
    path = tmp_path / "pal.png"
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    image.putdata([0, 1, 2])
    # index 0 opaque red, index 1 black at alpha 128, index 2 fully transparent blue
    image.save(path, transparency=bytes([255, 128, 0]))
    decoded = decode_rgb(path)
    assert decoded.source_mode == "P" and decoded.conversions == ["palette", "alpha"]
    out = np.asarray(decoded.image).astype(int)
    expected_half = round(255 * (1 - 128 / 255))  # black over white at alpha 128 = 127
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_allclose(out[0, 1], [expected_half] * 3, atol=1)
    np.testing.assert_array_equal(out[0, 2], [255, 255, 255])


def test_rgba_and_grey_alpha_composite_on_white(tmp_path):
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = [10, 20, 30, 255]
    rgba[0, 1] = [10, 20, 30, 0]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "rgba.png")[0], [[10, 20, 30], [255, 255, 255]])
    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], dtype=np.uint8), "LA")
    la.save(tmp_path / "la.png")
    decoded = decode_rgb(tmp_path / "la.png")
    assert decoded.conversions == ["grey", "alpha"]
    np.testing.assert_array_equal(np.asarray(decoded.image)[0], [[50, 50, 50], [255, 255, 255]])


def test_exif_rotated_jpeg(tmp_path):
    path = tmp_path / "rotated.jpg"
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = [255, 0, 0]  # left half red
    pixels[:, 20:] = [0, 0, 255]  # right half blue
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    image.save(path, exif=exif.tobytes(), quality=100)
    decoded = decode_rgb(path)
    assert "exif" in decoded.conversions
    out = np.asarray(decoded.image).astype(int)
    assert out.shape == (40, 20, 3)  # portrait after rotation
    np.testing.assert_allclose(out[5, 10], [255, 0, 0], atol=8)  # the left half is now on top
    np.testing.assert_allclose(out[35, 10], [0, 0, 255], atol=8)


def test_greyscale_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "grey.jpg"
    Image.fromarray(np.full((8, 8), 77, dtype=np.uint8), "L").save(path, quality=100)
    decoded = decode_rgb(path)
    assert decoded.conversions == ["grey"] and decoded.image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded.image), np.full((8, 8, 3), 77))


def test_to_rgb_on_in_memory_modes():
    image, conversions = to_rgb(Image.new("1", (2, 2), 1))
    assert conversions == ["grey"] and np.asarray(image).min() == 255
    image, conversions = to_rgb(Image.new("YCbCr", (2, 2), (128, 128, 128)))
    assert conversions == ["colorspace"] and image.mode == "RGB"


def test_format_outside_the_safe_list_is_not_an_image(tmp_path):
    path = tmp_path / "picture.ico"
    Image.fromarray(_noise(16, 16)).save(path, format="ICO")
    assert _reason(path).reason == "not_an_image"
