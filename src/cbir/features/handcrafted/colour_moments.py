"""Colour: Stricker-Orengo colour moments."""

from __future__ import annotations

import numpy as np
from scipy import stats
from skimage.color import rgb2hsv

from cbir.features.handcrafted.common import (
    COLOUR_SPACES,
    as_rgb,
    choice_param,
    fit_working_size,
    max_side_param,
)


def color_moments(image: np.ndarray, space: str = "hsv", max_side: int | None = 256) -> np.ndarray:
    """Stricker-Orengo colour moments: per-channel mean, standard deviation and skewness.

    Channels are scaled to [0, 1] (HSV from ``skimage.color.rgb2hsv``, or RGB / 255).
    Layout: ``[mean_0..2, std_0..2, skew_0..2]``, D = 9. The skewness is the standardised
    third moment (``scipy.stats.skew``, biased) and is 0 for a constant channel.
    """
    where = "color_moments"
    space = choice_param(where, "space", space, COLOUR_SPACES)
    image = fit_working_size(as_rgb(image, where), max_side_param(where, max_side))
    chans = (rgb2hsv(image) if space == "hsv" else image / 255.0).reshape(-1, 3)
    mean = chans.mean(axis=0)
    std = chans.std(axis=0)
    skew = np.zeros(3)
    varying = std > 1e-8  # scipy returns NaN for (near-)constant data; its skewness is 0
    if varying.any():
        skew[varying] = stats.skew(chans[:, varying], axis=0, bias=True)
    return np.concatenate([mean, std, skew]).astype(np.float32)
