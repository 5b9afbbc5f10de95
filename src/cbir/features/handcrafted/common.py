"""Shared by the traditional descriptors: parameter checks with one clear error, the RGB contract and
the working-size reduction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image
from skimage.color import rgb2gray
from skimage.util import img_as_ubyte

from cbir.errors import CbirError

COLOUR_SPACES: tuple[str, ...] = ("hsv", "rgb")


FIX_HINT = "check the method's params in params.yaml (conf/method/)"


def bad_param(where: str, what: str) -> CbirError:
    return CbirError(f"{where}: {what}; {FIX_HINT}")


def int_param(where: str, name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise bad_param(where, f"parameter '{name}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


def float_param(where: str, name: str, value: object, low: float, high: float = math.inf,
           low_inclusive: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value >= low if low_inclusive else value > low) and value <= high
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high < math.inf else "")
        raise bad_param(where, f"parameter '{name}' must be a number {bound}, got {value!r}")
    return value


def int_list_param(where: str, name: str, value: object, minimum: int, length: int | None = None) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0 or (
        length is not None and len(value) != length
    ):
        size = f"{length} integers" if length is not None else "a non-empty list of integers"
        raise bad_param(where, f"parameter '{name}' must be {size} >= {minimum}, got {value!r}")
    return [int_param(where, f"{name}[{i}]", v, minimum) for i, v in enumerate(value)]


def float_list_param(where: str, name: str, value: object, low: float, high: float = math.inf,
                low_inclusive: bool = False) -> list[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise bad_param(where, f"parameter '{name}' must be a non-empty list of numbers, got {value!r}")
    return [float_param(where, f"{name}[{i}]", v, low, high, low_inclusive) for i, v in enumerate(value)]


def choice_param(where: str, name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise bad_param(where, f"parameter '{name}' must be one of {list(choices)}, got {value!r}")
    return str(value)


def max_side_param(where: str, value: object) -> int | None:
    return None if value is None else int_param(where, "max_side", value, 8)


def as_rgb(image: object, where: str) -> np.ndarray:
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


def working_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(h, w)`` scaled (aspect kept, rounded) so the longest side is ``max_side``."""
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_working_size(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink ``image`` (anti-aliased, aspect kept) so its longest side is at most ``max_side``.

    Images already small enough, or ``max_side=None``, come back unchanged.  The extract stage
    decodes images at this size already (:func:`cbir.data.images.shrink`), so this is then a no-op.
    """
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    return resize_uint8(image, working_shape(h, w, max_side))


def resize_uint8(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``uint8`` image resized to ``shape[:2]`` with Pillow's anti-aliased bilinear filter, in 8 bits."""
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((int(shape[1]), int(shape[0])),
                                                                  Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """float32 HSV in [0, 1] of a ``uint8`` RGB image: ``skimage.color.rgb2hsv``'s definition, faster.

    Each value is one correctly rounded division of two integers (``s = (max - min) / max``,
    ``h = (numerator mod 6 delta) / (6 delta)``), so bin edges such as ``s = 0.75`` fall exactly.
    Hue ties resolve as in skimage (blue over green over red); grey pixels get hue and saturation 0.
    """
    r, g, b = (image[..., c].astype(np.int32) for c in range(3))
    v = np.maximum(np.maximum(r, g), b)
    delta = v - np.minimum(np.minimum(r, g), b)
    num = np.where(b == v, 4 * delta + r - g, np.where(g == v, 2 * delta + b - r, g - b))
    six = 6 * delta
    num = np.where(num < 0, num + six, num)
    grey = delta == 0
    h = num.astype(np.float32) / np.where(grey, 1, six).astype(np.float32)
    s = delta.astype(np.float32) / np.where(v > 0, v, 1).astype(np.float32)
    return np.stack([np.where(grey, 0, h), np.where(grey, 0, s), v.astype(np.float32) / 255.0], axis=-1)


def grey_u8(image: np.ndarray) -> np.ndarray:
    return img_as_ubyte(rgb2gray(image))


def quantise(image: np.ndarray, bins: Sequence[int], space: str) -> np.ndarray:
    """Map each pixel to one of ``prod(bins)`` colour indices (uniform bins per channel)."""
    if space == "hsv":
        chans = rgb_to_hsv(image)
        idx = [np.minimum((chans[..., c] * b).astype(np.int32), b - 1) for c, b in enumerate(bins)]
    else:
        idx = [(image[..., c].astype(np.int32) * b) >> 8 for c, b in enumerate(bins)]  # floor(v * b / 256)
    return (idx[0] * bins[1] + idx[1]) * bins[2] + idx[2]  # row-major, as np.ravel_multi_index


def l1_normalize(hist: np.ndarray) -> np.ndarray:
    total = hist.sum()
    return (hist / total if total > 0 else hist).astype(np.float32)
