"""Traditional CBIR descriptors: colour, texture and shape, built on scikit-image and scipy.

Every descriptor is a pure function ``fn(image, **params) -> np.ndarray`` that takes an RGB
``uint8`` array ``[H, W, 3]`` (a ``[H, W]`` grey array is accepted too) and returns a float32
vector whose length depends only on ``params``, never on the image size. Descriptors first
shrink the image (anti-aliased, aspect kept) so that its longest side is at most ``max_side``
pixels (default 256; ``None`` keeps full size), which bounds their cost on large photos; HOG
instead resizes to its fixed ``size``.

One module per descriptor, imported only when a method uses it, so editing one descriptor
reruns only its own DVC stages.  ``describe(name, image, params)`` looks a descriptor up in
:data:`DESCRIPTORS` (or imports a researcher's own ``module:function``) and checks its
parameters; ``fuse`` combines several descriptor blocks into one vector per image.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cbir.errors import CbirError
from cbir.features.handcrafted.common import FIX_HINT
from cbir.features.resolve import resolve_callable

#: built-in descriptors: name -> ``module:function`` (imported on first use)
DESCRIPTORS: dict[str, str] = {
    "hsv_histogram": "cbir.features.handcrafted.colour_histogram:hsv_histogram",
    "color_moments": "cbir.features.handcrafted.colour_moments:color_moments",
    "color_autocorrelogram": "cbir.features.handcrafted.correlogram:color_autocorrelogram",
    "lbp_histogram": "cbir.features.handcrafted.lbp:lbp_histogram",
    "glcm_stats": "cbir.features.handcrafted.glcm:glcm_stats",
    "hog_descriptor": "cbir.features.handcrafted.hog:hog_descriptor",
    "gabor_energies": "cbir.features.handcrafted.gabor:gabor_energies",
}


def descriptor_module(name: str) -> str:
    """The source file (relative to the repo root) of a built-in descriptor: what its DVC stage depends on."""
    return "src/" + DESCRIPTORS[name].split(":")[0].replace(".", "/") + ".py"


def descriptor_params(name: str) -> dict[str, object]:
    """The parameters descriptor ``name`` accepts, with their defaults."""
    fn = _lookup(name)
    return {p.name: p.default for p in list(inspect.signature(fn).parameters.values())[1:]}


def _lookup(name: str) -> Callable[..., np.ndarray]:
    """A built-in descriptor by name, or any importable ``module:function`` / ``package.module.function``."""
    if name in DESCRIPTORS:
        return resolve_callable(DESCRIPTORS[name], "descriptor")
    if ":" in name or "." in name:
        return resolve_callable(name, "descriptor")
    raise CbirError(f"unknown descriptor {name!r}; choose one of {sorted(DESCRIPTORS)} for "
                    "methods.<name>.descriptor in params.yaml, or name your own function as module:function")


def describe(name: str, image: np.ndarray, params: Mapping[str, object] | None = None) -> np.ndarray:
    """Compute descriptor ``name`` of ``image`` with ``params``; float32 ``[D]``, all finite."""
    fn = _lookup(name)
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise CbirError(f"{name}: params must be a mapping of parameter -> value, got "
                        f"{type(params).__name__}; {FIX_HINT}")
    accepted = descriptor_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise CbirError(f"{name}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}; {FIX_HINT}")
    vec = fn(image, **params)
    if not np.all(np.isfinite(vec)):
        raise CbirError(f"{name}: the descriptor produced non-finite values for an image of shape "
                        f"{np.shape(image)}; check the image and the descriptor's params")
    return vec


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
