"""Thumbnails of dataset images, decoded once, and small image helpers (frames, side by side)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.ticker
import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from cbir.data.images import open_rgb
from cbir.errors import CbirError


def thumbnail(path: Path, size: int) -> np.ndarray:
    """The image at ``path`` fitted into a white ``size`` x ``size`` square (aspect kept)."""


    image = open_rgb(path)
    return np.asarray(ImageOps.pad(image, (size, size), method=Image.Resampling.LANCZOS, color=(255, 255, 255)))


class Thumbnails:
    """Thumbnails of manifest rows by ``image_id``, each decoded once."""

    def __init__(self, manifest: pd.DataFrame, root: Path, size: int):
        self.paths = dict(zip(manifest["image_id"].astype(str), manifest["path"]))
        self.root, self.size, self.cache = Path(root), size, {}

    def __call__(self, image_id: str) -> np.ndarray:
        if image_id not in self.cache:
            if image_id not in self.paths:
                raise CbirError(f"image {image_id!r} of a retrieval file is not in the manifest: "
                                "re-run `dvc repro` so retrieval and curation agree")
            self.cache[image_id] = thumbnail(self.root / self.paths[image_id], self.size)
        return self.cache[image_id]


def framed(image: np.ndarray, colour: str, width: int = 3) -> np.ndarray:
    """``image`` with a coloured border of ``width`` pixels drawn inside it."""
    out = np.array(image, dtype=np.uint8, copy=True)
    rgb = (np.array(matplotlib.colors.to_rgb(colour)) * 255).round().astype(np.uint8)
    out[:width], out[-width:], out[:, :width], out[:, -width:] = rgb, rgb, rgb, rgb
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two equal-height RGB images next to each other with a white gap."""
    spacer = np.full((left.shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


def shorten(text: str, width: int = 16) -> str:
    """``text`` cut to ``width`` characters with an ellipsis."""
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"
