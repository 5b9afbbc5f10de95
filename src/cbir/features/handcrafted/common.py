"""Shared by the traditional descriptors: parameter checks with one clear error, the RGB contract and
the working-size reduction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from skimage.color import rgb2gray, rgb2hsv
from skimage.transform import resize
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


def fit_working_size(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink ``image`` (anti-aliased, aspect kept) so its longest side is at most ``max_side``.

    Images already small enough, or ``max_side=None``, come back unchanged.
    """
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale))) + image.shape[2:]
    return resize_uint8(image, shape)


def resize_uint8(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def grey_u8(image: np.ndarray) -> np.ndarray:
    return img_as_ubyte(rgb2gray(image))


def quantise(image: np.ndarray, bins: Sequence[int], space: str) -> np.ndarray:
    """Map each pixel to one of ``prod(bins)`` colour indices (uniform bins per channel)."""
    if space == "hsv":
        chans = rgb2hsv(image)
        idx = [np.minimum((chans[..., c] * b).astype(np.int64), b - 1) for c, b in enumerate(bins)]
    else:
        idx = [(image[..., c].astype(np.int64) * b) // 256 for c, b in enumerate(bins)]
    return np.ravel_multi_index(idx, tuple(bins))


def l1_normalise(hist: np.ndarray) -> np.ndarray:
    total = hist.sum()
    return (hist / total if total > 0 else hist).astype(np.float32)
