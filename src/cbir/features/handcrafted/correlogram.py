"""Colour: the colour auto-correlogram (Huang et al. 1997)."""

from __future__ import annotations

import functools
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
    q = q.astype(np.uint8 if n_colours <= 256 else np.int32)  # 8-bit compares: several times faster
    flat = q.ravel()
    h, w = q.shape
    out = np.zeros((len(distances), n_colours))
    for i, d in enumerate(distances):
        # for every pixel, how many pixels at distance d share its colour: a pair (p, p + o) counts for both
        # its ends, so half the ring is compared and each equal pair is added at both places
        same = np.zeros((h, w), dtype=np.uint16 if 8 * d > 255 else np.uint8)  # at most 8d per pixel
        for dy, dx in _ring_offsets(d):
            if dy < 0 or (dy == 0 and dx < 0) or abs(dy) >= h or abs(dx) >= w:
                continue
            ys_a, xs_a = slice(0, h - dy), slice(max(0, -dx), w - max(0, dx))
            ys_b, xs_b = slice(dy, h), slice(max(0, dx), w - max(0, -dx))
            equal = (q[ys_a, xs_a] == q[ys_b, xs_b]).view(np.uint8)
            same[ys_a, xs_a] += equal
            same[ys_b, xs_b] += equal
        counts = np.bincount(flat, weights=same.ravel(), minlength=n_colours)
        total = np.bincount(flat, weights=ring_neighbours(h, w, d).ravel(), minlength=n_colours)
        out[i] = np.divide(counts, total, out=np.zeros(n_colours), where=total > 0)
    return out.ravel().astype(np.float32)


@functools.lru_cache(maxsize=64)
def ring_neighbours(h: int, w: int, d: int) -> np.ndarray:
    """For every pixel of an ``h x w`` image, how many pixels at chessboard distance exactly ``d`` lie inside."""
    def square(r: int) -> np.ndarray:  # pixels of the (2r+1)^2 square around each pixel that lie inside
        ys, xs = np.arange(h), np.arange(w)
        rows = np.minimum(ys + r, h - 1) - np.maximum(ys - r, 0) + 1
        cols = np.minimum(xs + r, w - 1) - np.maximum(xs - r, 0) + 1
        return np.outer(rows, cols).astype(np.float64)
    ring = square(d) - square(d - 1)
    ring.flags.writeable = False  # cached: shared by every image of this size
    return ring
