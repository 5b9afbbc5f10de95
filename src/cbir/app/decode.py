"""Decoding a query image (a file or uploaded bytes) safely and at bounded cost.

A query image's cost is capped before the full decode, from its header:

* JPEG (and MPO) files are decoded at reduced size with Pillow's ``draft`` (DCT scaling by 1/2,
  1/4 or 1/8, keeping both sides at least :data:`DRAFT_SIDE` pixels: the methods see 224-512 px
  anyway); the header's size may be up to :data:`DEFAULT_MAX_PIXELS`, and the *reduced* size must
  fit the pixel budget.
* Every other format is decoded in full, so its header's size must fit the pixel budget; then, like
  a drafted JPEG, it is reduced by an integer factor (box filter, at most 8) while both sides stay at
  least :data:`DRAFT_SIDE`, so the methods' own resizing works on a bounded image.

The budget is ``max_pixels`` (the web server passes ``serve.max_query_pixels``, smaller than
curation's ``curate.max_pixels``). Failures are :class:`cbir.data.images.ImageError` (reason
``too_large``, ``truncated``, ...) naming the file or upload, never a temporary path.

The budget also covers what the methods do *after* decoding, again from the header alone
(:func:`check_shape`): a deep method resizes the shorter side to its input size (224 px) before its
centre crop, so a 100000 x 1 PNG of 373 bytes would become a 22.4 M x 224 image (15 GiB). Such images
are refused, not fitted (a fitted strip would be a centre crop of a few pixels, no useful query):

* reason ``bad_aspect``: the longer side is more than :data:`MAX_ASPECT_RATIO` (50) times the
  shorter one (the widest camera panoramas are about 10:1), and
* reason ``too_large``: the method's resize (``resize_side`` on the shorter side) would make more
  than ``max_pixels`` pixels.

So one query decodes at most ``max_pixels`` pixels and its resize makes at most ``max_pixels`` more
(in practice, at 50:1 and 224 px, 2.5 M). The query tool and the web server share this decoder; the
curate and extract stages decode through :mod:`cbir.data.images`, which applies the same aspect rule
(:func:`cbir.data.images.check_shape`), and extract checks the resize budget again before it runs.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from cbir.data.images import (  # noqa: F401 (check_shape, resized_pixels, MAX_ASPECT_RATIO: re-exported)
    MAX_ASPECT_RATIO,
    MAX_PIXELS,
    SAFE_FORMATS,
    ImageError,
    check_shape,
    open_rgb,
    resized_pixels,
    to_rgb,
)
from cbir.errors import CbirError

DEFAULT_MAX_PIXELS = MAX_PIXELS
#: JPEGs are decoded at the smallest DCT scale that keeps both sides at least this long
DRAFT_SIDE = 1024
_DRAFT_FORMATS = ("JPEG", "MPO")
_EXIF_ORIENTATION = 0x0112


def _open_header(path: Path | io.BytesIO, name: str) -> Image.Image:
    """Open ``path`` (or an in-memory file) lazily, header only, with the project's safe formats."""
    Image.init()
    formats = [f for f in SAFE_FORMATS if f in Image.OPEN]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path, formats=formats)
    except UnidentifiedImageError:
        raise ImageError(name, "not_an_image", f"not a {'/'.join(SAFE_FORMATS)} image") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(name, "too_large", exc) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(name, "truncated" if "truncated" in str(exc).lower() else "unreadable", exc) from None


def draft_size(size: tuple[int, int], side: int = DRAFT_SIDE) -> tuple[int, int]:
    """The size a JPEG of ``size`` decodes to with ``draft(mode, (side, side))``: scale 1/2, 1/4 or 1/8 at most
    as far as both sides stay at least ``side`` (Pillow's rule, rounded up as libjpeg does)."""
    width, height = size
    scale = max(1, min(width // side, height // side))
    factor = max(f for f in (1, 2, 4, 8) if f <= scale)
    return -(-width // factor), -(-height // factor)


def check_budget(path: str | os.PathLike | bytes, name: str, max_pixels: int,
                 max_declared: int = DEFAULT_MAX_PIXELS,
                 resize_side: int | None = None) -> tuple[str, tuple[int, int], bool]:
    """Read the header only (of a file, or of bytes); return ``(format, declared size, drafted)`` or raise
    ``too_large`` or ``bad_aspect`` (:func:`check_shape`), or the reason the header cannot be read.
    ``drafted``: a JPEG decoded at reduced size.
    """
    if isinstance(path, bytes) and not path:
        raise ImageError(name, "empty", "zero-byte file")
    source = io.BytesIO(path) if isinstance(path, bytes) else Path(path)
    with _open_header(source, name) as image:
        fmt, (width, height) = image.format or "", image.size
    declared = width * height
    check_shape(name, (width, height), max_pixels, resize_side)
    if fmt in _DRAFT_FORMATS:
        reduced = draft_size((width, height))
        if declared > max_declared:
            raise ImageError(name, "too_large", f"{width}x{height} = {declared} pixels > max_pixels {max_declared}")
        if reduced[0] * reduced[1] > max_pixels:
            raise ImageError(name, "too_large", f"{width}x{height} decodes to {reduced[0]}x{reduced[1]} = "
                                                f"{reduced[0] * reduced[1]} pixels > max_pixels {max_pixels}")
        return fmt, (width, height), reduced != (width, height)
    if declared > max_pixels:
        raise ImageError(name, "too_large", f"{width}x{height} = {declared} pixels > max_pixels {max_pixels}")
    return fmt, (width, height), False


def _decode_drafted(path: Path, name: str) -> Image.Image:
    """A large JPEG decoded at reduced size (``draft``), EXIF-rotated, as 8-bit RGB."""
    with _open_header(path, name) as image:
        image.draft("RGB", (DRAFT_SIDE, DRAFT_SIDE))
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            reason = "truncated" if isinstance(exc, EOFError) or "truncated" in str(exc).lower() else "unreadable"
            raise ImageError(name, reason, exc) from None
        try:
            orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block does not make the pixels unusable
            orientation = 1
        if orientation in range(2, 9):
            image = ImageOps.exif_transpose(image)
        rgb, _ = to_rgb(image)
        rgb.load()
    return rgb


def decode_query(path: str | os.PathLike, name: str, max_pixels: int,
                 max_declared: int = DEFAULT_MAX_PIXELS, resize_side: int | None = None) -> Image.Image:
    """Decode a query image within ``max_pixels`` decoded pixels, refusing a shape whose resize to
    ``resize_side`` would not be (see the module docstring)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(name, "empty", "zero-byte file")
    except OSError as exc:
        raise ImageError(name, "unreadable", exc.strerror or exc) from None
    _, _, drafted = check_budget(path, name, max_pixels, max(max_declared, max_pixels), resize_side)
    if drafted:
        return _decode_drafted(path, name)
    try:
        image = open_rgb(path, max_pixels=max_pixels)
    except ImageError as exc:
        raise ImageError(name, exc.reason, exc.detail) from None
    factor = min(8, min(image.size) // DRAFT_SIDE)
    return image.reduce(factor) if factor >= 2 else image


def open_query_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                     resize_side: int | None = None) -> Image.Image:
    """Decode a query image file safely, within ``max_pixels`` decoded pixels."""

    path = Path(path)
    if not path.exists():
        raise CbirError(f"query image {path} not found: give the path of an image file")
    if path.is_dir():
        raise CbirError(f"query image {path} is a folder: give the path of an image file")
    return decode_query(path, str(path), max_pixels, resize_side=resize_side)


def decode_image_bytes(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS,
                       resize_side: int | None = None) -> Image.Image:
    """Decode uploaded bytes with the same bounded decoder as files; errors name ``name``, not a temp file."""

    if not data:
        raise ImageError(name, "empty", "zero-byte file")
    with tempfile.TemporaryDirectory(prefix="cbir-query-") as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        return decode_query(path, name, max_pixels, resize_side=resize_side)
