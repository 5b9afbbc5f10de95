"""Texture: histogram of rotation-invariant uniform local binary patterns."""

from __future__ import annotations

import math

import numpy as np
from skimage.feature import local_binary_pattern

from cbir.errors import CbirError
from cbir.features.handcrafted.common import (
    as_rgb,
    fit_working_size,
    float_param,
    grey_u8,
    int_param,
    l1_normalize,
    max_side_param,
)


def lbp_histogram(image: np.ndarray, P: int = 8, R: float = 1.0, max_side: int | None = 256) -> np.ndarray:
    """Histogram of rotation-invariant uniform LBP codes (``local_binary_pattern``, "uniform").

    Codes take values 0..P+1, so D = P + 2; the histogram sums to 1. A border of ``ceil(R)``
    pixels is left out because its neighbours fall outside the image.
    """
    where = "lbp_histogram"
    P = int_param(where, "P", P, 1)
    R = float_param(where, "R", R, 0.0)
    grey = grey_u8(fit_working_size(as_rgb(image, where), max_side_param(where, max_side)))
    border = math.ceil(R)
    if min(grey.shape) <= 2 * border:
        raise CbirError(f"{where}: image of shape {grey.shape} is too small for radius R={R}; "
                        f"use a smaller R or images larger than {2 * border} pixels per side")
    codes = local_binary_pattern(grey, P, R, method="uniform")
    codes = codes[border:grey.shape[0] - border, border:grey.shape[1] - border]
    return l1_normalize(np.bincount(codes.astype(np.int64).ravel(), minlength=P + 2).astype(np.float64))
