"""Build a retrieval method from its config: the one place that dispatches on ``kind``.

A method knows its descriptor length (``dim``), fills a features array for a list of image files
(``extract``, what the extract stage runs) and describes decoded images (``embed``, what a query
runs), with the same decoding, preprocessing, weights and pooling, so a query lands in the same
space as the database.  Every row is L2-normalised.

Kinds (``methods.<name>.kind``):

* ``deep``: a CNN trunk and a pooling. The trunk is ``backbone: <name>`` (weights from the
  ``weights`` stage) or your own factory, ``trunk: {_target_: package.module.function, ...}``
  returning a ``torch.nn.Module`` that maps ``[B, 3, H, W]`` to a feature map ``[B, C, h, w]``;
* ``handcrafted``: a traditional descriptor ``image -> vector``, ``descriptor: {_target_:
  package.module.function, <argument>: <value>}``: a built-in, the fusion of several, or your own;
* ``precomputed``: a ``.npy`` file (``file:``), one row per manifest row, computed elsewhere.

Deep methods live in :mod:`cbir.features.cnn.method`, imported only when one is built, so a traditional
method's stage or query never pays torch's import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from cbir.data.images import shrink
from cbir.errors import CbirError
from cbir.features.common import unit_rows
from cbir.features.handcrafted import Descriptor, build_descriptor, describe_files
from cbir.layout import Layout
from cbir.settings import MethodRun



# --------------------------------------------------------------------------- handcrafted


@dataclass
class HandcraftedMethod:
    """A traditional descriptor ``image -> vector`` (or a fusion of several), on the CPU.

    Each image is decoded once, already reduced to ``max_side`` (the largest working size of the
    method's descriptors, ``None`` = full size), and a query is reduced the same way.
    """

    name: str
    config: dict
    descriptor: Descriptor
    max_pixels: int
    dim: int = field(init=False)
    max_side: int | None = field(init=False)
    kind = "handcrafted"

    def __post_init__(self):
        probe = np.full((64, 64, 3), 127, dtype=np.uint8)
        self.dim = int(self.descriptor(probe).shape[0])
        self.max_side = self.descriptor.max_side

    def describe_array(self, image: np.ndarray) -> np.ndarray:
        return unit_rows(self.descriptor(image))

    def extract(self, paths: Sequence[Path], out: np.ndarray, progress: bool = True,
                num_workers: int | None = None) -> dict:
        describe_files(self.descriptor, paths, out, self.max_pixels, num_workers=num_workers, progress=progress,
                       label=self.descriptor.name)
        return {"device": "cpu", "decode_max_side": self.max_side}

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            raise CbirError("no images to embed")
        return unit_rows(np.stack([self.descriptor(np.asarray(shrink(im.convert("RGB"), self.max_side)))
                                   for im in images]))


# --------------------------------------------------------------------------- precomputed


@dataclass
class PrecomputedMethod:
    """Features computed elsewhere: a float ``.npy`` ``[N, D]``, row ``i`` for manifest row ``i``."""

    name: str
    config: dict
    file: Path
    dim: int = field(init=False)
    kind = "precomputed"

    def __post_init__(self):
        self._array = self._load()
        self.dim = int(self._array.shape[1])

    def _load(self) -> np.ndarray:
        if not self.file.is_file():
            raise CbirError(f"precomputed features {self.file} not found: fix methods.{self.name}.file")
        try:
            array = np.load(self.file, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise CbirError(f"cannot read precomputed features {self.file} ({exc}): save them with numpy.save")
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise CbirError(f"precomputed features {self.file} have shape {array.shape} and dtype {array.dtype}: "
                            "expected a numeric [N, D] array, one row per manifest row")
        return array

    def extract(self, paths: Sequence[Path], out: np.ndarray, progress: bool = True,
                num_workers: int | None = None) -> dict:
        if self._array.shape[0] != len(paths):
            raise CbirError(f"precomputed features {self.file} have {self._array.shape[0]} rows but the manifest "
                            f"has {len(paths)}: give one row per manifest row, in manifest order")
        rows = unit_rows(np.asarray(self._array, dtype=np.float32))
        if not np.isfinite(rows).all():
            raise CbirError(f"precomputed features {self.file} contain NaN or infinite values")
        out[:] = rows
        return {"device": "none", "file": str(self.config.get("file"))}

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        raise CbirError(f"method {self.name} uses precomputed features: it cannot describe a new image "
                        "(query by image id instead)")


# --------------------------------------------------------------------------- the builder

Method = "DeepMethod | HandcraftedMethod | PrecomputedMethod"


def build_method(name: str, params: Mapping, root: str | Path, n_images: int | None = None,
                 device: str | None = None) -> Method:
    """The method ``name`` of ``params``, ready to extract or embed (models loaded once, here)."""
    root = Path(root)
    return build(MethodRun.from_params(params, name, device), root, lambda: Layout(root, params).manifest, n_images)


def build(run: MethodRun, root: Path, manifest: Callable[[], Path], n_images: int | None = None) -> Method:
    """The method of ``run`` (its own config and the sections it reads); ``manifest()`` is the manifest an
    int8 calibration samples."""
    cfg = run.method
    if cfg.kind == "deep":
        from cbir.features.cnn.method import (
            build_deep,  # torch is imported only by deep methods (seconds)
        )

        return build_deep(run, root, manifest, n_images)
    if cfg.kind == "handcrafted":
        descriptor = build_descriptor(cfg.descriptor, f"methods.{cfg.name}.descriptor")
        return HandcraftedMethod(name=cfg.name, config=dict(cfg.raw), descriptor=descriptor,
                                 max_pixels=run.max_pixels)
    file = Path(str(cfg.file)).expanduser()
    return PrecomputedMethod(name=cfg.name, config=dict(cfg.raw), file=file if file.is_absolute() else root / file)
