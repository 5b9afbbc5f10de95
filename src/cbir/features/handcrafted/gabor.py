"""Texture: Gabor filter-bank energies (Manjunath-Ma)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import signal
from skimage.color import rgb2gray
from skimage.filters import gabor_kernel

from cbir.features.handcrafted.common import (
    as_rgb,
    fit_working_size,
    float_list_param,
    float_param,
    int_param,
    max_side_param,
)


def gabor_energies(image: np.ndarray, frequencies: Sequence[float] = (0.05, 0.1, 0.2, 0.4),
                   orientations: int = 4, bandwidth: float = 1.0,
                   max_side: int | None = 256) -> np.ndarray:
    """Mean and standard deviation of Gabor magnitude responses (Manjunath-Ma texture features).

    A bank of ``skimage.filters.gabor_kernel`` filters (each frequency in cycles/pixel, times
    ``orientations`` angles evenly spaced over [0, pi)) is applied to the grey image with FFT
    convolution and reflective borders (as ``skimage.filters.gabor`` does).
    Layout: ``[mean, std]`` per filter, frequency-major; D = 2 * len(frequencies) * orientations.
    """
    where = "gabor_energies"
    frequencies = float_list_param(where, "frequencies", frequencies, 0.0, 0.5)
    orientations = int_param(where, "orientations", orientations, 1)
    bandwidth = float_param(where, "bandwidth", bandwidth, 0.0)
    grey = rgb2gray(fit_working_size(as_rgb(image, where), max_side_param(where, max_side)))
    feats = []
    for f in frequencies:
        for k in range(orientations):
            kernel = gabor_kernel(f, theta=np.pi * k / orientations, bandwidth=bandwidth)
            ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
            # numpy "symmetric" padding == scipy.ndimage "reflect", the border skimage's gabor uses
            padded = np.pad(grey, ((ry, ry), (rx, rx)), mode="symmetric")
            mag = np.abs(signal.fftconvolve(padded, kernel, mode="valid"))
            feats += [mag.mean(), mag.std()]
    return np.asarray(feats, dtype=np.float32)
