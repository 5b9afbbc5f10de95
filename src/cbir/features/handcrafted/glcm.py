"""Texture: Haralick-style grey-level co-occurrence statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.feature import graycomatrix, graycoprops

from cbir.errors import CbirError
from cbir.features.handcrafted.common import (
    as_rgb,
    bad_param,
    fit_working_size,
    float_list_param,
    grey_u8,
    int_list_param,
    int_param,
    max_side_param,
)

GLCM_PROPS: tuple[str, ...] = (
    "contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM",
)


def glcm_stats(image: np.ndarray, distances: Sequence[int] = (1, 2, 4),
               angles: Sequence[float] = (0, 45, 90, 135), levels: int = 32,
               max_side: int | None = 256) -> np.ndarray:
    """Haralick-style statistics of the grey-level co-occurrence matrix.

    The grey image is quantised to ``levels`` levels; a symmetric, normalised GLCM is built for
    every distance (pixels) and angle (degrees) with ``graycomatrix``, and ``graycoprops`` gives
    contrast, dissimilarity, homogeneity, energy, correlation and ASM (``GLCM_PROPS``).
    Layout: property-major, then distance, then angle; D = 6 * len(distances) * len(angles).
    """
    where = "glcm_stats"
    distances = int_list_param(where, "distances", distances, 1)
    angles = float_list_param(where, "angles", angles, 0.0, 360.0, low_inclusive=True)
    levels = int_param(where, "levels", levels, 2)
    if levels > 256:
        raise bad_param(where, f"parameter 'levels' must be <= 256 (8-bit grey), got {levels}")
    grey = grey_u8(fit_working_size(as_rgb(image, where), max_side_param(where, max_side)))
    if max(distances) >= min(grey.shape):
        raise CbirError(f"{where}: distance {max(distances)} does not fit in an image of shape "
                        f"{grey.shape}; use smaller distances or larger images")
    q = ((grey.astype(np.int64) * levels) // 256).astype(np.uint8)
    glcm = graycomatrix(q, distances, np.deg2rad(angles), levels=levels, symmetric=True, normed=True)
    return np.concatenate([graycoprops(glcm, p).ravel() for p in GLCM_PROPS]).astype(np.float32)
