"""Traditional CBIR descriptors: colour, texture and shape, built on scikit-image and scipy.

Every descriptor is a pure function ``fn(image, **params) -> np.ndarray`` that takes an RGB
``uint8`` array ``[H, W, 3]`` (a ``[H, W]`` grey array is accepted too) and returns a float32
vector whose length depends only on ``params``, never on the image size. Descriptors first
shrink the image (anti-aliased, aspect kept) so that its longest side is at most ``max_side``
pixels (default 256; ``None`` keeps full size), which bounds their cost on large photos; HOG
instead resizes to its fixed ``size``.

``describe(name, image, params)`` looks a descriptor up in ``DESCRIPTORS`` and checks its
parameters; ``fuse`` combines several descriptor blocks into one vector per image.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import signal, stats
from skimage.color import rgb2gray, rgb2hsv
from skimage.feature import graycomatrix, graycoprops, hog, local_binary_pattern
from skimage.filters import gabor_kernel
from skimage.transform import resize
from skimage.util import img_as_ubyte

from cbir.errors import CbirError

GLCM_PROPS: tuple[str, ...] = (
    "contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM",
)
COLOUR_SPACES: tuple[str, ...] = ("hsv", "rgb")

_FIX = "check the method's params in params.yaml (conf/method/)"


# --------------------------------------------------------------------------- validation

def _bad(where: str, what: str) -> CbirError:
    return CbirError(f"{where}: {what}; {_FIX}")


def _int(where: str, name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise _bad(where, f"parameter '{name}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float(where: str, name: str, value: object, low: float, high: float = math.inf,
           low_inclusive: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value >= low if low_inclusive else value > low) and value <= high
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high < math.inf else "")
        raise _bad(where, f"parameter '{name}' must be a number {bound}, got {value!r}")
    return value


def _int_list(where: str, name: str, value: object, minimum: int, length: int | None = None) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0 or (
        length is not None and len(value) != length
    ):
        size = f"{length} integers" if length is not None else "a non-empty list of integers"
        raise _bad(where, f"parameter '{name}' must be {size} >= {minimum}, got {value!r}")
    return [_int(where, f"{name}[{i}]", v, minimum) for i, v in enumerate(value)]


def _float_list(where: str, name: str, value: object, low: float, high: float = math.inf,
                low_inclusive: bool = False) -> list[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise _bad(where, f"parameter '{name}' must be a non-empty list of numbers, got {value!r}")
    return [_float(where, f"{name}[{i}]", v, low, high, low_inclusive) for i, v in enumerate(value)]


def _choice(where: str, name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _bad(where, f"parameter '{name}' must be one of {list(choices)}, got {value!r}")
    return str(value)


def _max_side(where: str, value: object) -> int | None:
    return None if value is None else _int(where, "max_side", value, 8)


def _as_rgb(image: object, where: str) -> np.ndarray:
    """Check that ``image`` is uint8 ``[H, W, 3]`` (or grey ``[H, W]``, replicated to RGB)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise CbirError(f"{where}: expected a uint8 RGB image array [H, W, 3], got {kind}; "
                        "decode images with PIL and convert('RGB') before describing them")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise CbirError(f"{where}: expected an RGB image of shape [H, W, 3], got shape {image.shape}; "
                        "convert the image to RGB (drop alpha, expand grey) before describing it")
    return image


# --------------------------------------------------------------------------- image helpers

def fit_working_size(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink ``image`` (anti-aliased, aspect kept) so its longest side is at most ``max_side``.

    Images already small enough, or ``max_side=None``, come back unchanged.
    """
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale))) + image.shape[2:]
    return _resize_uint8(image, shape)


def _resize_uint8(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _grey_u8(image: np.ndarray) -> np.ndarray:
    return img_as_ubyte(rgb2gray(image))


def _quantise(image: np.ndarray, bins: Sequence[int], space: str) -> np.ndarray:
    """Map each pixel to one of ``prod(bins)`` colour indices (uniform bins per channel)."""
    if space == "hsv":
        chans = rgb2hsv(image)
        idx = [np.minimum((chans[..., c] * b).astype(np.int64), b - 1) for c, b in enumerate(bins)]
    else:
        idx = [(image[..., c].astype(np.int64) * b) // 256 for c, b in enumerate(bins)]
    return np.ravel_multi_index(idx, tuple(bins))


def _l1(hist: np.ndarray) -> np.ndarray:
    total = hist.sum()
    return (hist / total if total > 0 else hist).astype(np.float32)


# --------------------------------------------------------------------------- colour

def hsv_histogram(image: np.ndarray, bins: Sequence[int] = (8, 4, 4),
                  max_side: int | None = 256) -> np.ndarray:
    """Joint HSV histogram with ``bins = [h, s, v]`` uniform bins, summing to 1.

    Layout: C order over (hue, saturation, value), so the bin of a pixel is
    ``(h_bin * s + s_bin) * v + v_bin``. D = h * s * v.
    """
    where = "hsv_histogram"
    bins = _int_list(where, "bins", bins, 1, length=3)
    image = fit_working_size(_as_rgb(image, where), _max_side(where, max_side))
    hsv = rgb2hsv(image).reshape(-1, 3)
    hist, _ = np.histogramdd(hsv, bins=bins, range=[(0.0, 1.0)] * 3)
    return _l1(hist.ravel())


def color_moments(image: np.ndarray, space: str = "hsv", max_side: int | None = 256) -> np.ndarray:
    """Stricker-Orengo colour moments: per-channel mean, standard deviation and skewness.

    Channels are scaled to [0, 1] (HSV from ``skimage.color.rgb2hsv``, or RGB / 255).
    Layout: ``[mean_0..2, std_0..2, skew_0..2]``, D = 9. The skewness is the standardised
    third moment (``scipy.stats.skew``, biased) and is 0 for a constant channel.
    """
    where = "color_moments"
    space = _choice(where, "space", space, COLOUR_SPACES)
    image = fit_working_size(_as_rgb(image, where), _max_side(where, max_side))
    chans = (rgb2hsv(image) if space == "hsv" else image / 255.0).reshape(-1, 3)
    mean = chans.mean(axis=0)
    std = chans.std(axis=0)
    skew = np.zeros(3)
    varying = std > 1e-8  # scipy returns NaN for (near-)constant data; its skewness is 0
    if varying.any():
        skew[varying] = stats.skew(chans[:, varying], axis=0, bias=True)
    return np.concatenate([mean, std, skew]).astype(np.float32)


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
    distances = _int_list(where, "distances", distances, 1)
    bins = _int_list(where, "bins", bins, 1, length=3)
    space = _choice(where, "space", space, COLOUR_SPACES)
    image = fit_working_size(_as_rgb(image, where), _max_side(where, max_side))
    q = _quantise(image, bins, space)
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


# --------------------------------------------------------------------------- texture

def lbp_histogram(image: np.ndarray, P: int = 8, R: float = 1.0, max_side: int | None = 256) -> np.ndarray:
    """Histogram of rotation-invariant uniform LBP codes (``local_binary_pattern``, "uniform").

    Codes take values 0..P+1, so D = P + 2; the histogram sums to 1. A border of ``ceil(R)``
    pixels is left out because its neighbours fall outside the image.
    """
    where = "lbp_histogram"
    P = _int(where, "P", P, 1)
    R = _float(where, "R", R, 0.0)
    grey = _grey_u8(fit_working_size(_as_rgb(image, where), _max_side(where, max_side)))
    border = math.ceil(R)
    if min(grey.shape) <= 2 * border:
        raise CbirError(f"{where}: image of shape {grey.shape} is too small for radius R={R}; "
                        f"use a smaller R or images larger than {2 * border} pixels per side")
    codes = local_binary_pattern(grey, P, R, method="uniform")
    codes = codes[border:grey.shape[0] - border, border:grey.shape[1] - border]
    return _l1(np.bincount(codes.astype(np.int64).ravel(), minlength=P + 2).astype(np.float64))


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
    distances = _int_list(where, "distances", distances, 1)
    angles = _float_list(where, "angles", angles, 0.0, 360.0, low_inclusive=True)
    levels = _int(where, "levels", levels, 2)
    if levels > 256:
        raise _bad(where, f"parameter 'levels' must be <= 256 (8-bit grey), got {levels}")
    grey = _grey_u8(fit_working_size(_as_rgb(image, where), _max_side(where, max_side)))
    if max(distances) >= min(grey.shape):
        raise CbirError(f"{where}: distance {max(distances)} does not fit in an image of shape "
                        f"{grey.shape}; use smaller distances or larger images")
    q = ((grey.astype(np.int64) * levels) // 256).astype(np.uint8)
    glcm = graycomatrix(q, distances, np.deg2rad(angles), levels=levels, symmetric=True, normed=True)
    return np.concatenate([graycoprops(glcm, p).ravel() for p in GLCM_PROPS]).astype(np.float32)


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
    frequencies = _float_list(where, "frequencies", frequencies, 0.0, 0.5)
    orientations = _int(where, "orientations", orientations, 1)
    bandwidth = _float(where, "bandwidth", bandwidth, 0.0)
    grey = rgb2gray(fit_working_size(_as_rgb(image, where), _max_side(where, max_side)))
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


# --------------------------------------------------------------------------- shape

def hog_descriptor(image: np.ndarray, size: int | Sequence[int] = 128, orientations: int = 9,
                   pixels_per_cell: int = 16, cells_per_block: int = 2) -> np.ndarray:
    """Histogram of oriented gradients (``skimage.feature.hog``, L2-Hys blocks).

    The image is resized to ``size`` x ``size`` (or ``[height, width]``) first, so
    D = blocks_y * blocks_x * cells_per_block**2 * orientations with
    blocks = size // pixels_per_cell - cells_per_block + 1 per axis.
    """
    where = "hog_descriptor"
    square = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
    shape = _int_list(where, "size", [size, size] if square else size, 8, length=2)
    orientations = _int(where, "orientations", orientations, 1)
    ppc = _int(where, "pixels_per_cell", pixels_per_cell, 1)
    cpb = _int(where, "cells_per_block", cells_per_block, 1)
    if min(shape) < ppc * cpb:
        raise _bad(where, f"size {shape} is smaller than one block of {cpb} x {cpb} cells of "
                          f"{ppc} pixels; raise 'size' or lower 'pixels_per_cell'/'cells_per_block'")
    image = _as_rgb(image, where)
    small = resize(image, tuple(shape) + (3,), order=1, anti_aliasing=True)
    return hog(small, orientations=orientations, pixels_per_cell=(ppc, ppc),
               cells_per_block=(cpb, cpb), block_norm="L2-Hys", feature_vector=True,
               channel_axis=-1).astype(np.float32)


# --------------------------------------------------------------------------- registry

DESCRIPTORS: dict[str, Callable[..., np.ndarray]] = {
    "hsv_histogram": hsv_histogram,
    "color_moments": color_moments,
    "color_autocorrelogram": color_autocorrelogram,
    "lbp_histogram": lbp_histogram,
    "glcm_stats": glcm_stats,
    "hog_descriptor": hog_descriptor,
    "gabor_energies": gabor_energies,
}


def descriptor_params(name: str) -> dict[str, object]:
    """The parameters descriptor ``name`` accepts, with their defaults."""
    fn = _lookup(name)
    return {p.name: p.default for p in list(inspect.signature(fn).parameters.values())[1:]}


def _lookup(name: str) -> Callable[..., np.ndarray]:
    if name not in DESCRIPTORS:
        raise CbirError(f"unknown descriptor {name!r}; choose one of {sorted(DESCRIPTORS)} "
                        "for methods.<name>.descriptor in params.yaml")
    return DESCRIPTORS[name]


def describe(name: str, image: np.ndarray, params: Mapping[str, object] | None = None) -> np.ndarray:
    """Compute descriptor ``name`` of ``image`` with ``params``; float32 ``[D]``, all finite."""
    fn = _lookup(name)
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise CbirError(f"{name}: params must be a mapping of parameter -> value, got "
                        f"{type(params).__name__}; {_FIX}")
    accepted = descriptor_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise CbirError(f"{name}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}; {_FIX}")
    vec = fn(image, **params)
    if not np.all(np.isfinite(vec)):
        raise CbirError(f"{name}: the descriptor produced non-finite values for an image of shape "
                        f"{np.shape(image)}; check the image and the descriptor's params")
    return vec


# --------------------------------------------------------------------------- fusion

def l2_normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def fuse(blocks: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Late fusion of descriptor blocks ``[N, D_i]`` into ``[N, sum D_i]`` (float32, unit rows).

    Each block is L2-normalised row-wise and scaled by ``sqrt(w_i)``, then each fused row is
    L2-normalised, so for rows with non-zero blocks
    ``cos(fused_a, fused_b) = sum_i w_i cos_i(a, b) / sum_i w_i``: the weighted mean of the
    blocks' cosine similarities.
    """
    if len(blocks) == 0:
        raise CbirError("fuse: no feature blocks given; pass at least one [N, D] array")
    if len(weights) != len(blocks):
        raise CbirError(f"fuse: {len(blocks)} blocks but {len(weights)} weights; give one weight per block")
    arrays = [np.asarray(b, dtype=np.float64) for b in blocks]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[0] != arrays[0].shape[0]:
            raise CbirError(f"fuse: block {i} has shape {a.shape}, expected [{arrays[0].shape[0]}, D] "
                            "like block 0; every block needs one row per image, in the same order")
        if not np.all(np.isfinite(a)):
            raise CbirError(f"fuse: block {i} contains non-finite values; re-extract that feature")
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise CbirError(f"fuse: weights must be finite, >= 0 and not all 0, got {list(weights)}")
    fused = np.concatenate([np.sqrt(wi) * l2_normalize_rows(a) for wi, a in zip(w, arrays)], axis=1)
    return l2_normalize_rows(fused).astype(np.float32)
