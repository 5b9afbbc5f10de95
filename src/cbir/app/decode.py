"""Decoding a query image (a file or uploaded bytes) safely, with the project's decoder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image

from cbir.data.images import ImageError, open_rgb
from cbir.errors import CbirError

DEFAULT_MAX_PIXELS = 40_000_000


def open_query_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a query image file safely (see :func:`cbir.data.images.open_rgb`)."""

    path = Path(path)
    if not path.exists():
        raise CbirError(f"query image {path} not found: give the path of an image file")
    if path.is_dir():
        raise CbirError(f"query image {path} is a folder: give the path of an image file")
    return open_rgb(path, max_pixels=max_pixels)


def decode_image_bytes(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode uploaded bytes with the same safe decoder as files; errors name ``name``, not a temp file."""

    if not data:
        raise ImageError(name, "empty", "zero-byte file")
    with tempfile.TemporaryDirectory(prefix="cbir-query-") as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        try:
            return open_rgb(path, max_pixels=max_pixels)
        except ImageError as exc:
            raise ImageError(name, exc.reason, exc.detail) from None
