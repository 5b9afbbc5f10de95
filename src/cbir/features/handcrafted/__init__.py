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

A method's ``descriptor`` is a Hydra node, ``{_target_: package.module.function, <argument>: <value>}``
(a built-in, :data:`FUSION_TARGET` of several, or your own function); :func:`build_descriptor`
instantiates it once with ``hydra.utils.instantiate``.  Each file is decoded once, at the largest
working size its descriptors need, in 8 bits with Pillow, and :func:`describe_files` spreads the
files over worker processes.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cbir.data.images import load_rgb
from cbir.errors import CbirError
from cbir.features.common import unit_rows
from cbir.features.handcrafted.common import FIX_HINT
from cbir.features.resolve import Descriptor as DescriptorFn
from cbir.features.resolve import instantiate_node, resolve_callable
from cbir.workers import die_with_parent

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
                    "a fusion member in params.yaml, or name your own function as module:function")


def describe_check(name: str, fn: Callable, params: object) -> None:
    """Refuse, in one line, parameters descriptor ``name`` (the function ``fn``) does not accept."""
    if not isinstance(params, Mapping):
        raise CbirError(f"{name}: params must be a mapping of parameter -> value, got "
                        f"{type(params).__name__}; {FIX_HINT}")
    accepted = [p.name for p in list(inspect.signature(fn).parameters.values())[1:]]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise CbirError(f"{name}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}; {FIX_HINT}")


def describe(name: str, image: np.ndarray, params: Mapping[str, object] | None = None) -> np.ndarray:
    """Compute descriptor ``name`` of ``image`` with ``params``; float32 ``[D]``, all finite."""
    fn = _lookup(name)
    params = {} if params is None else params
    describe_check(name, fn, params)
    vec = fn(image, **params)
    if not np.all(np.isfinite(vec)):
        raise CbirError(f"{name}: the descriptor produced non-finite values for an image of shape "
                        f"{np.shape(image)}; check the image and the descriptor's params")
    return vec


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
    fused = np.concatenate([np.sqrt(wi) * unit_rows(a, np.float64) for wi, a in zip(w, arrays)], axis=1)
    return unit_rows(fused, np.float64).astype(np.float32)


# --------------------------------------------------------------------------- a method's descriptor node


#: the ``_target_`` of the weighted late fusion of several descriptors
FUSION_TARGET = "cbir.features.handcrafted.fusion"


def builtin_name(target: str) -> str | None:
    """The built-in descriptor a dotted ``_target_`` names (``None``: a function of your own)."""
    for name, where in DESCRIPTORS.items():
        if target == where.replace(":", "."):
            return name
    return None


def descriptor_node(name: str, params: Mapping | None = None) -> dict:
    """The Hydra node of built-in descriptor ``name`` (or ``fusion``) with ``params`` beside its ``_target_``."""
    if name != "fusion" and name not in DESCRIPTORS:
        raise CbirError(f"unknown descriptor {name!r}; choose one of {sorted(DESCRIPTORS)} or fusion")
    target = FUSION_TARGET if name == "fusion" else DESCRIPTORS[name].replace(":", ".")
    return {"_target_": target, **dict(params or {})}


def fusion(image: np.ndarray, members: Mapping[str, Mapping], weights: Mapping[str, float] | None = None
           ) -> np.ndarray:
    """The weighted late fusion of several descriptors of ``image``: ``members`` maps a descriptor (built-in
    name or ``module:function``) to its parameters, ``weights`` a member to its weight (absent: 1); the
    cosine of fused vectors is the weighted mean of the members' cosines (:func:`fuse`)."""
    if not members:
        raise CbirError("a fusion method needs descriptor.members: {descriptor: {params}, ...}")
    weights = weights or {}
    blocks = [np.asarray(describe(m, image, dict(p or {})), dtype=np.float32)[None] for m, p in members.items()]
    return fuse(blocks, [float(weights.get(m, 1.0)) for m in members])[0]


@dataclass(frozen=True)
class Descriptor:
    """A handcrafted method's descriptor, built once from its Hydra node ``{_target_: module.function,
    <argument>: <value>, ...}``: ``image -> float32 vector``, and the image size it works at."""

    name: str
    params: Mapping
    fn: Callable[[np.ndarray], np.ndarray]
    max_side: int | None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        vec = np.asarray(self.fn(image), dtype=np.float32)
        if self.name != "fusion" and not np.all(np.isfinite(vec)):
            raise CbirError(f"{self.name}: the descriptor produced non-finite values for an image of shape "
                            f"{np.shape(image)}; check the image and the descriptor's params")
        return vec


def build_descriptor(node: Mapping | Descriptor, where: str = "descriptor") -> Descriptor:
    """The :class:`Descriptor` of a Hydra node, instantiated with ``hydra.utils.instantiate`` (``_partial_``:
    the image comes per call); an unimportable target or an unknown argument is one line."""
    if isinstance(node, Descriptor):
        return node
    target = node.get("_target_") if isinstance(node, Mapping) else None
    params = {k: v for k, v in node.items() if k != "_target_"} if isinstance(target, str) else {}
    name = "fusion" if target == FUSION_TARGET else builtin_name(target) or target if target else ""
    if name == "fusion":
        if not params.get("members"):
            raise CbirError("a fusion method needs descriptor.members: {descriptor: {params}, ...}")
        side = _fusion_side(params["members"])
    elif isinstance(target, str) and ":" not in target:
        describe_check(name, resolve_callable(target, f"{where}._target_"), params)
        side = working_side(name, params)
    fn: DescriptorFn = instantiate_node(node, where, partial=True)
    return Descriptor(name=name, params=params, fn=fn, max_side=side)


def describe_config(node: Mapping | Descriptor, image: np.ndarray) -> np.ndarray:
    """The descriptor of ``image`` under a method's descriptor node (one descriptor, or ``fusion``)."""
    return build_descriptor(node)(image)


def working_side(name: str, params: Mapping[str, object] | None = None) -> int | None:
    """The longest image side descriptor ``name`` works at, so images can be decoded at that size once.

    ``max_side`` when the descriptor takes one (its default otherwise); twice the largest ``size`` for
    a descriptor that resizes to a fixed size (HOG), so its own resize still anti-aliases; ``None``
    (full size) for anything else, such as your own ``module:function``, or a value it will refuse.
    """
    if name not in DESCRIPTORS or not isinstance(params or {}, Mapping):
        return None
    accepted = descriptor_params(name)
    params = {**accepted, **dict(params or {})}  # an argument not given takes the function's own default
    if "max_side" in accepted:
        side = params["max_side"]
        return int(side) if isinstance(side, (int, np.integer)) and not isinstance(side, bool) else None
    if "size" in accepted:
        size = params["size"]
        sides = [size] if isinstance(size, (int, np.integer)) else size
        if isinstance(sides, Sequence) and sides and all(isinstance(v, (int, np.integer)) for v in sides):
            return 2 * int(max(sides))
    return None


def _fusion_side(members: Mapping) -> int | None:
    """The size a fusion's images are decoded at: the largest its members need (``None``: full size)."""
    sides = [working_side(m, p) for m, p in (members or {}).items()]
    return None if not sides or None in sides else max(sides)


def config_working_side(node: Mapping | Descriptor) -> int | None:
    """The size a method's images are decoded at: the largest its descriptors need (``None``: full size)."""
    return build_descriptor(node).max_side


def describe_file(job: tuple) -> tuple[np.ndarray | None, str | None]:
    """``(unit vector, None)`` for one file, or ``(None, error line)`` (errors cross processes as text)."""
    descriptor, path, max_pixels = job
    try:
        image = load_rgb(path, max_pixels=max_pixels, max_side=descriptor.max_side)
        return unit_rows(descriptor(image)), None
    except CbirError as exc:
        return None, str(exc)


#: below this many files a run stays in one process (starting workers costs more than it saves)
MIN_FILES_PER_WORKER = 100


def describe_files(node: Mapping | Descriptor, paths: Sequence[Path], out: np.ndarray, max_pixels: int,
                   num_workers: int | None = None, progress: bool = True, label: str = "describe") -> int:
    """Fill ``out[i]`` with the unit descriptor (``node``: a method's descriptor) of ``paths[i]``, each file
    decoded once at the working size.

    ``num_workers``: processes (``None``: one per CPU, up to 8, when each gets at least
    :data:`MIN_FILES_PER_WORKER` files; 0 or 1: this process).  Returns the number of workers used.
    """
    descriptor = build_descriptor(node)
    jobs = [(descriptor, str(p), max_pixels) for p in paths]
    workers = num_workers
    if workers is None:
        workers = min(8, os.cpu_count() or 1, len(jobs) // MIN_FILES_PER_WORKER)
    # a fork server (a clean, single-threaded process) makes the workers: a plain fork of a process whose
    # other threads hold a lock (OpenMP, OpenVINO, a test runner) can leave a worker waiting forever
    workers = int(workers) if "forkserver" in multiprocessing.get_all_start_methods() else 0
    # `disable` is passed only to turn the bar off: an explicit value would override TQDM_DISABLE (`-q`)
    bar = tqdm(total=len(jobs), desc=label, unit="img", **({} if progress else {"disable": True}))
    if workers > 1:
        with multiprocessing.get_context("forkserver").Pool(workers, die_with_parent, (os.getpid(),)) as pool:
            results = pool.imap(describe_file, jobs, chunksize=16)
            _fill(results, out, bar)
    else:
        _fill(map(describe_file, jobs), out, bar)
    bar.close()
    return max(workers, 0) if workers > 1 else 0


def _fill(results, out: np.ndarray, bar) -> None:
    for i, (vec, error) in enumerate(results):
        if error is not None:
            raise CbirError(error)
        out[i] = vec
        bar.update()
