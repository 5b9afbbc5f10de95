"""Colour: Stricker-Orengo colour moments."""

from __future__ import annotations

import numpy as np

from cbir.features.handcrafted.common import (
    COLOUR_SPACES,
    as_rgb,
    choice_param,
    fit_working_size,
    max_side_param,
    rgb_to_hsv,
)


def color_moments(image: np.ndarray, space: str = "hsv", max_side: int | None = 256) -> np.ndarray:
    """Stricker-Orengo colour moments: per-channel mean, standard deviation and skewness.

    Channels are scaled to [0, 1] (HSV as ``skimage.color.rgb2hsv`` defines it, or RGB / 255).
    Layout: ``[mean_0..2, std_0..2, skew_0..2]``, D = 9. The skewness is the standardised
    third moment (as ``scipy.stats.skew``, biased) and is 0 for a constant channel.
    """
    where = "color_moments"
    space = choice_param(where, "space", space, COLOUR_SPACES)
    image = fit_working_size(as_rgb(image, where), max_side_param(where, max_side))
    chans = (rgb_to_hsv(image) if space == "hsv" else image / 255.0).reshape(-1, 3).astype(np.float64)
    mean = chans.mean(axis=0)
    centred = chans - mean
    var = np.einsum("ij,ij->j", centred, centred) / len(chans)
    std = np.sqrt(var)
    third = np.einsum("ij,ij,ij->j", centred, centred, centred) / len(chans)
    varying = std > 1e-8  # the skewness of (near-)constant data is 0
    skew = np.divide(third, np.where(varying, var * std, 1.0), out=np.zeros(3), where=varying)
    return np.concatenate([mean, std, skew]).astype(np.float32)
