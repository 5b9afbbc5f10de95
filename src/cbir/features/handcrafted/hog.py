"""Shape: histogram of oriented gradients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.feature import hog

from cbir.features.handcrafted.common import (
    as_rgb,
    bad_param,
    int_list_param,
    int_param,
    resize_uint8,
)


def hog_descriptor(image: np.ndarray, size: int | Sequence[int] = 128, orientations: int = 9,
                   pixels_per_cell: int = 16, cells_per_block: int = 2) -> np.ndarray:
    """Histogram of oriented gradients (``skimage.feature.hog``, L2-Hys blocks).

    The image is resized to ``size`` x ``size`` (or ``[height, width]``) first, so
    D = blocks_y * blocks_x * cells_per_block**2 * orientations with
    blocks = size // pixels_per_cell - cells_per_block + 1 per axis.
    """
    where = "hog_descriptor"
    square = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
    shape = int_list_param(where, "size", [size, size] if square else size, 8, length=2)
    orientations = int_param(where, "orientations", orientations, 1)
    ppc = int_param(where, "pixels_per_cell", pixels_per_cell, 1)
    cpb = int_param(where, "cells_per_block", cells_per_block, 1)
    if min(shape) < ppc * cpb:
        raise bad_param(where, f"size {shape} is smaller than one block of {cpb} x {cpb} cells of "
                          f"{ppc} pixels; raise 'size' or lower 'pixels_per_cell'/'cells_per_block'")
    image = as_rgb(image, where)
    small = resize_uint8(image, shape).astype(np.float32) / 255.0
    return hog(small, orientations=orientations, pixels_per_cell=(ppc, ppc),
               cells_per_block=(cpb, cpb), block_norm="L2-Hys", feature_vector=True,
               channel_axis=-1).astype(np.float32)
