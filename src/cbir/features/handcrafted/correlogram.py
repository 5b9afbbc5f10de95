"""Colour: the colour auto-correlogram (Huang et al. 1997)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cbir.features.handcrafted.common import (
    COLOUR_SPACES,
    as_rgb,
    choice_param,
    fit_working_size,
    int_list_param,
    max_side_param,
    quantise,
)


def _ring_offsets(d: int) -> list[tuple[int, int]]:
    """All offsets at chessboard (L-infinity) distance exactly ``d``: 8 * d of them."""
    return [(dy, dx) for dy in range(-d, d + 1) for dx in range(-d, d + 1) if max(abs(dy), abs(dx)) == d]


def color_autocorrelogram(image: np.ndarray, distances: Sequence[int] = (1, 3, 5, 7),
                          bins: Sequence[int] = (4, 4, 4), space: str = "rgb",
                          max_side: int | None = 256) -> np.ndarray:
    """Colour auto-correlogram (Huang et al. 1997).

    Colours are quantised uniformly into ``prod(bins)`` levels in ``space``. For colour ``c`` and
    distance ``d``, the value is the probability that a pixel at chessboard distance ``d`` from a
    pixel of colour ``c`` (inside the image) also has colour ``c``; 0 for absent colours.
    Layout: distance-major, ``[d_0: c_0..c_n, d_1: ...]``, D = len(distances) * prod(bins).
    """
    where = "color_autocorrelogram"
    distances = int_list_param(where, "distances", distances, 1)
    bins = int_list_param(where, "bins", bins, 1, length=3)
    space = choice_param(where, "space", space, COLOUR_SPACES)
    image = fit_working_size(as_rgb(image, where), max_side_param(where, max_side))
    q = quantise(image, bins, space)
    n_colours = int(np.prod(bins))
    h, w = q.shape
    out = np.zeros((len(distances), n_colours))
    for i, d in enumerate(distances):
        same = np.zeros(n_colours)
        total = np.zeros(n_colours)
        for dy, dx in _ring_offsets(d):
            if abs(dy) >= h or abs(dx) >= w:
                continue
            a = q[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            b = q[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
            total += np.bincount(a.ravel(), minlength=n_colours)
            same += np.bincount(a[a == b], minlength=n_colours)
        out[i] = np.divide(same, total, out=np.zeros(n_colours), where=total > 0)
    return out.ravel().astype(np.float32)
