"""Colour: the joint HSV histogram."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cbir.features.handcrafted.common import (
    as_rgb,
    fit_working_size,
    int_list_param,
    l1_normalize,
    max_side_param,
    quantise,
)


def hsv_histogram(image: np.ndarray, bins: Sequence[int] = (8, 4, 4),
                  max_side: int | None = 256) -> np.ndarray:
    """Joint HSV histogram with ``bins = [h, s, v]`` uniform bins, summing to 1.

    Layout: C order over (hue, saturation, value), so the bin of a pixel is
    ``(h_bin * s + s_bin) * v + v_bin``. D = h * s * v.
    """
    where = "hsv_histogram"
    bins = int_list_param(where, "bins", bins, 1, length=3)
    image = fit_working_size(as_rgb(image, where), max_side_param(where, max_side))
    codes = quantise(image, bins, "hsv")
    return l1_normalize(np.bincount(codes.ravel(), minlength=int(np.prod(bins))).astype(np.float64))
