"""Safe image decoding: every stage and the query tool open images through here.

``open_rgb`` refuses what it cannot decode completely and returns an 8-bit RGB
image with EXIF orientation applied. Failures raise :class:`ImageError`, whose
``reason`` is one short code (used as a drop reason at curation):

``unreadable``  the file cannot be read, or the decoder failed for another reason
``truncated``   the data ends before the image does
``empty``       a zero-byte file
``not_an_image`` no supported raster format recognises the bytes
``too_large``   more pixels than ``max_pixels`` (checked from the header, before decoding)
``too_small``   a side shorter than ``min_side``
``bad_aspect``  a strip: the longer side more than :data:`MAX_ASPECT_RATIO` times the shorter (checked
                from the header, before decoding: a 1,250,000 x 32 PNG would become a 7.8 G pixel image
                once a deep method resizes its shorter side to 224 px)

:func:`check_shape` (the aspect rule, and the pixels a method's resize would make) is the one rule the
query decoder (:mod:`cbir.app.decode`), curation and extraction apply (:func:`check_images`).

Decoders are limited to common raster formats (:data:`SAFE_FORMATS`): Pillow
plugins that shell out to other programs (EPS) or parse rarely used containers
are never reached from a file's bytes.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cbir.errors import CbirError

#: Pillow format names that ``open_rgb`` will decode.
#: the decoding pixel budget when none is given (``curate.max_pixels`` in conf/ sets the pipeline's)
MAX_PIXELS = 40_000_000
SAFE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA")

#: File extensions curation treats as raster images (lower case, with the dot).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)

REASONS = ("unreadable", "truncated", "empty", "not_an_image", "too_large", "too_small", "bad_aspect")
#: the longest side may be at most this many times the shortest (reason ``bad_aspect`` beyond): the widest
#: camera panoramas are about 10:1; a rule of the pipeline, like :data:`SAFE_FORMATS`, not a setting
MAX_ASPECT_RATIO = 50

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(CbirError):
    """An image that cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str):
        self.path = str(path)
        self.reason = reason
        self.detail = " ".join(str(detail).split())
        super().__init__(f"cannot use image {self.path}: {reason} ({self.detail})")


@dataclass
class Decoded:
    """A decoded image plus what was done to make it 8-bit RGB."""

    image: Image.Image
    source_format: str
    source_mode: str
    conversions: list[str] = field(default_factory=list)


def _sixteen_to_eight(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer holding 16-bit data) greyscale to 8-bit: v * 255 / 65535, rounded."""
    values = np.asarray(image, dtype=np.float64)
    values = np.clip(values, 0, 65535)
    return Image.fromarray(np.rint(values * (255.0 / 65535.0)).astype(np.uint8), mode="L")


def _composite_on_white(image: Image.Image) -> Image.Image:
    """RGBA over an opaque white background, returned as RGB."""
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Convert a decoded image of any common mode to 8-bit RGB; also name the conversions applied.

    Conversion names: ``cmyk``, ``palette``, ``grey``, ``16bit``, ``alpha`` (composited
    onto white), ``colorspace`` (YCbCr/LAB/HSV), ``float`` (values rounded and clipped to 0..255;
    NaN becomes 0, +inf 255, -inf 0).
    """
    conversions: list[str] = []
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        conversions += ["16bit", "grey"]
        image = _sixteen_to_eight(image)
        mode = "L"
    elif mode == "F":
        conversions += ["float", "grey"]
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in ("P", "PA"):
        conversions.append("palette")
    elif mode == "CMYK":
        conversions.append("cmyk")
    elif mode in ("1", "L", "LA", "La"):
        if "grey" not in conversions:
            conversions.append("grey")
    elif mode in ("YCbCr", "LAB", "HSV"):
        conversions.append("colorspace")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info
    if has_alpha:
        conversions.append("alpha")
        return _composite_on_white(image), conversions
    if mode != "RGB":
        image = image.convert("RGB")
    return image, conversions


def resized_pixels(size: tuple[int, int], resize_side: int) -> int:
    """Pixels of ``size`` with its shorter side resized to ``resize_side`` (the deep methods' first step)."""
    short, long = sorted(size)
    return resize_side * -(-resize_side * long // max(short, 1))


def check_shape(name: str, size: tuple[int, int], max_pixels: int, resize_side: int | None = None) -> None:
    """Refuse, from a header's ``size``, an image whose shape makes a method's resizing unbounded: reason
    ``bad_aspect`` beyond :data:`MAX_ASPECT_RATIO`, ``too_large`` when resizing the shorter side to
    ``resize_side`` would make more than ``max_pixels`` pixels."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(name, "empty", f"{width}x{height} image")
    short, long = sorted((width, height))
    if long > MAX_ASPECT_RATIO * short:
        raise ImageError(name, "bad_aspect", f"{width}x{height} is a strip ({long / short:.4g}:1), wider than "
                                             f"{MAX_ASPECT_RATIO}:1")
    if resize_side and resized_pixels(size, resize_side) > max_pixels:
        resized = resized_pixels(size, resize_side)
        raise ImageError(name, "too_large", f"{width}x{height} resized to {resize_side} px on its shorter side makes "
                                            f"{resized} pixels > max_pixels {max_pixels}")


def _available_formats() -> list[str]:
    """The safe formats this Pillow build can open (registers Pillow's plugins on first use)."""
    Image.init()
    return [name for name in SAFE_FORMATS if name in Image.OPEN]


def _classify_decode_error(exc: BaseException) -> str:
    text = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in text or "premature end" in text:
        return "truncated"
    return "unreadable"


def shrink(image: Image.Image, max_side: int | None) -> Image.Image:
    """An 8-bit image shrunk (aspect kept, Pillow's anti-aliased bilinear filter) so its longest side is at
    most ``max_side``; smaller images, or ``max_side=None``, come back as they are."""
    width, height = image.size
    if max_side is None or max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def decode_rgb(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, min_side: int = 1,
               max_side: int | None = None) -> Decoded:
    """Decode ``path`` completely into 8-bit RGB (EXIF orientation applied) or raise :class:`ImageError`.

    ``max_side``: decode at reduced size, the longest side at most ``max_side`` (JPEG decodes at a
    DCT-scaled size first, ``draft``; then :func:`shrink`, all in 8 bits); ``None`` keeps full size.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(path, "unreadable", exc.strerror or exc) from None
    if not path.is_file():
        raise ImageError(path, "unreadable", "not a regular file")
    if size == 0:
        raise ImageError(path, "empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=_available_formats())
    except UnidentifiedImageError:
        raise ImageError(path, "not_an_image", f"not a {'/'.join(SAFE_FORMATS)} image") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, "too_large", exc) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(path, _classify_decode_error(exc), exc) from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(path, "too_large", f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}")
        if width <= 0 or height <= 0:
            raise ImageError(path, "empty", f"{width}x{height} image")
        if min(width, height) < min_side:
            raise ImageError(path, "too_small", f"{width}x{height}, a side is under min_side {min_side}")
        check_shape(str(path), (width, height), max_pixels)
        try:
            if max_side is not None and image.format in ("JPEG", "MPO"):
                image.draft("RGB", (max_side, max_side))  # a scale that keeps both sides >= max_side
            image.load()
        except Image.DecompressionBombError as exc:
            raise ImageError(path, "too_large", exc) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(path, _classify_decode_error(exc), exc) from None
        source_format, source_mode = image.format or "", image.mode
        conversions: list[str] = []
        try:
            orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block does not make the pixels unusable
            orientation = 1
        if orientation in range(2, 9):
            try:
                image = ImageOps.exif_transpose(image)
                conversions.append("exif")
            except Exception as exc:
                raise ImageError(path, "unreadable", f"bad EXIF orientation: {exc}") from None
        rgb, more = to_rgb(image)
        rgb = shrink(rgb, max_side)
        rgb.load()
    return Decoded(image=rgb, source_format=source_format, source_mode=source_mode, conversions=conversions + more)


def open_rgb(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, min_side: int = 1,
             max_side: int | None = None) -> Image.Image:
    """Open an image as a fully decoded 8-bit RGB ``PIL.Image`` (see :func:`decode_rgb`)."""
    return decode_rgb(path, max_pixels=max_pixels, min_side=min_side, max_side=max_side).image


def load_rgb(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, min_side: int = 1,
             max_side: int | None = None) -> np.ndarray:
    """Open an image as a ``uint8`` array of shape ``[H, W, 3]`` (reduced to ``max_side``, if given)."""
    return np.asarray(open_rgb(path, max_pixels=max_pixels, min_side=min_side, max_side=max_side),
                      dtype=np.uint8)


def header_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from an image file's header alone (no pixel is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=_available_formats()) as image:
                return image.size
    except UnidentifiedImageError:
        raise ImageError(path, "not_an_image", f"not a {'/'.join(SAFE_FORMATS)} image") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, "too_large", exc) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(path, _classify_decode_error(exc), exc) from None


def check_images(paths: Sequence[str | os.PathLike], max_pixels: int, resize_side: int | None) -> None:
    """Before extracting: every image's header must fit the pixel budget and :func:`check_shape` (its aspect,
    and the pixels a resize of the shorter side to ``resize_side`` makes; ``None``: the method does not
    resize so), so a hand-made manifest cannot feed extraction what curation drops. The first image that
    does not is one :class:`~cbir.errors.CbirError` line naming it and its reason."""
    for path in paths:
        try:
            width, height = header_size(path)
            if width * height > max_pixels:
                raise ImageError(path, "too_large", f"{width}x{height} = {width * height} pixels > max_pixels "
                                                    f"{max_pixels}")
            check_shape(str(path), (width, height), max_pixels, resize_side)
        except ImageError as exc:
            raise CbirError(f"{exc}: the manifest lists an image that curation drops; rerun the curate stage "
                            "(or remove that row), then extract") from None
