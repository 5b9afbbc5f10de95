"""A deep method: a CNN trunk (a configured backbone with the ``weights`` stage's file, or your own
factory), its pooling, and the runtime (torch or OpenVINO) and precision that run it; built by
:func:`cbir.features.methods.build_method`.

The torch trunk is built on first use: a configured backbone whose OpenVINO conversion is cached runs
without it, and without importing torchvision (seconds saved per extract stage and per query start).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from cbir.errors import CbirError
from cbir.data.manifest import read_manifest
from cbir.features.cnn.openvino_cache import conversion_key, saved_model
from cbir.features.cnn.openvino_int8 import Calibration, calibration_for, calibration_inputs, int8_key, quantize
from cbir.features.cnn.openvino_runtime import (
    OpenVinoTrunk,
    convert_trunk,
    resolve_precision,
    resolve_runtime,
)
from cbir.features.cnn.pooling import pool
from cbir.features.cnn.runtime import (
    describe_batch,
    embed_batches,
    feature_dim,
    make_loader,
    make_transform,
    resolve_device,
    should_compile,
)
from cbir.features.common import unit_rows
from cbir.features.resolve import instantiate_node, resolve_callable
from cbir.layout import weights_file
from cbir.machine import cpu_model, isa_class
from cbir.settings import MethodRun

log = logging.getLogger("cbir")


def load_backbone(path: Path, arch: str) -> torch.nn.Module:
    """The trunk of ``arch`` with the weights the ``weights`` stage wrote to ``path``."""
    from cbir.features.cnn.backbones import load_trunk  # torchvision: imported only when a trunk is built

    return load_trunk(arch, torch.load(path, map_location="cpu", weights_only=True))


def make_pool(name: str, params: Mapping | None) -> Callable:
    """The method's pooling as ``fmap -> [B, C]``; a bad name or parameter fails here, once."""
    kwargs = dict(params or {})
    pool(name, torch.zeros(1, 4, 3, 3), **kwargs)
    return lambda fmap: pool(name, fmap, **kwargs)


@dataclass
class DeepMethod:
    """A CNN trunk (built once, on first use, by ``make_trunk``), a pooling, and the sizes, device and
    runtime to run them.

    ``runtime``: ``torch`` or ``openvino`` (CPU; the trunk is converted on first use, once, and
    serves the extract stage and queries alike; with a ``conversion_key`` the conversion is read
    from the cache when there); ``precision``: ``fp32``, ``bf16`` or ``int8`` (OpenVINO only: the
    conversion quantised on ``calibration``, cached under its own key).
    """

    name: str
    config: dict
    make_trunk: Callable[[], torch.nn.Module]
    pool: Callable
    device: torch.device
    image_size: int
    batch_size: int
    scales: list[float]
    max_pixels: int
    compile: bool
    runtime: str
    precision: str
    conversion_key: str | None = None
    calibration: Calibration | None = None
    dim: int = field(init=False)
    kind = "deep"

    def __post_init__(self):
        self._num_workers: int | None = None
        self._trunk: torch.nn.Module | None = None
        self._openvino: OpenVinoTrunk | None = None
        if self.runtime == "openvino":
            probe = torch.from_numpy(np.zeros((1, 3, self.image_size, self.image_size), dtype=np.float32))
            self.dim = int(self.pool(self.runner(probe)).flatten(1).shape[1])
        else:
            self.dim = feature_dim(self.trunk, self.pool, self.image_size)

    @property
    def trunk(self) -> torch.nn.Module:
        """The torch trunk, built on first use."""
        if self._trunk is None:
            self._trunk = self.make_trunk()
        return self._trunk

    @property
    def runner(self):
        """What runs the trunk: the torch module, or its OpenVINO conversion (made or read once, on first use)."""
        if self.runtime != "openvino":
            return self.trunk
        if self._openvino is None:
            def convert():
                return convert_trunk(self.trunk, self.image_size)

            key, provenance = self.conversion_key, {}
            if self.precision == "int8":
                convert, key = self._int8_conversion(convert)
                provenance = self.calibration.provenance()
            self._openvino = OpenVinoTrunk(convert, self.image_size, self.precision, key=key, provenance=provenance)
        return self._openvino

    def _int8_conversion(self, convert_fp32: Callable) -> tuple[Callable, str | None]:
        """How to make the int8 model (quantise the fp32 conversion, itself read from the cache when
        there) and its cache key (``None`` where the fp32 conversion has none)."""
        import openvino as ov

        def convert():
            fp32 = saved_model(ov.Core(), self.conversion_key, convert_fp32)
            return quantize(fp32, calibration_inputs(self.calibration.paths, self.image_size, self.max_pixels))

        key = None if self.conversion_key is None else int8_key(self.conversion_key, self.calibration)
        return convert, key

    @property
    def use_amp(self) -> bool:
        """bf16 autocast for the torch runtime: always on CUDA (its fast path), on the CPU only when
        ``precision`` is bf16 (fp32 there gives the same results on every machine)."""
        return self.runtime == "torch" and (self.device.type == "cuda" or self.precision == "bf16")

    def run_info(self) -> dict:
        """What computed the numbers, for the features ``.json``: runtime, effective precision (and the OpenVINO
        version, or whether torch compiled the trunk); no machine fact (those are :meth:`machine_info`)."""
        if self.runtime == "openvino":
            return self.runner.info()
        return {"runtime": "torch", "precision": "bf16" if self.use_amp else "fp32", "compiled": self.compile}

    def machine_info(self) -> dict:
        """What this machine did, for the log and the run record (:mod:`cbir.machine`), never an output: the
        decoding workers of the last :meth:`extract` and the precision OpenVINO compiled per input shape."""
        info = {"num_workers": self._num_workers}
        if self._openvino is not None:
            info["openvino_compiled"] = self._openvino.compiled()
        return info

    def extract(self, paths: Sequence[Path], out: np.ndarray, progress: bool = True,
                num_workers: int | None = None) -> dict:
        """Fill ``out`` (``[N, dim]``, e.g. a memmap) with the descriptors of ``paths``; returns what computed
        them (the same on every machine kind; the machine's facts go to the log, :meth:`machine_info`)."""
        loader = make_loader(paths, self.image_size, self.batch_size, self.device, num_workers=num_workers,
                             max_pixels=self.max_pixels)
        self._num_workers = loader.num_workers
        embed_batches(self.runner, self.pool, loader, out, self.device, progress=progress, scales=self.scales,
                      compile=self.compile and self.runtime == "torch", use_amp=self.use_amp)
        compiled = self.machine_info().get("openvino_compiled", {})
        log.info("%s ran on %s (%s, %d decoding workers)%s", self.name, cpu_model(), isa_class(), self._num_workers,
                 "".join(f"; OpenVINO compiled {shape} in {p}" for shape, p in compiled.items()))
        return {"device": str(self.device), "image_size": self.image_size, "batch_size": self.batch_size,
                "scales": self.scales, **self.run_info()}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return make_transform(self.image_size)(image.convert("RGB"))

    def describe_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Unit descriptors of a preprocessed batch ``[B, 3, S, S]``."""
        trunk = self.runner
        if isinstance(trunk, torch.nn.Module):
            trunk = trunk.to(self.device).to(memory_format=torch.channels_last).eval()
        out = describe_batch(trunk, self.pool, batch.to(self.device), self.scales, self.use_amp)
        return out.cpu().numpy().astype(np.float32)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Unit descriptors ``[n, dim]`` of decoded images (a query)."""
        if not images:
            raise CbirError("no images to embed")
        return unit_rows(self.describe_tensors(torch.stack([self.preprocess(im) for im in images])))


def trunk_maker(run: MethodRun, root: Path) -> tuple[Callable[[], torch.nn.Module], Path | None]:
    """How to build a deep method's trunk (a configured backbone, or the model your ``trunk`` factory
    returns) and its weight file (``None`` for a factory's model)."""
    cfg = run.method
    if cfg.trunk:
        where = f"methods.{cfg.name}.trunk"

        def from_factory() -> torch.nn.Module:
            trunk = instantiate_node(cfg.trunk, where)
            if not isinstance(trunk, torch.nn.Module):
                raise CbirError(f"{where}: {cfg.trunk['_target_']!r} returned {type(trunk).__name__}, "
                                "not a torch.nn.Module")
            return trunk.eval()

        resolve_callable(cfg.trunk["_target_"], f"{where}._target_")  # an unimportable name fails now, once
        return from_factory, None
    path = weights_file(root, run.backbone.name)
    if not path.exists():
        raise CbirError(f"weight file {path} is missing: run `dvc repro weights@{run.backbone.name}` first")
    return lambda: load_backbone(path, run.backbone.arch), path


def own_or_backbone(run: MethodRun, key: str) -> int:
    """The method's ``image_size`` / ``batch_size``, else its backbone's (a factory's trunk has none)."""
    value = getattr(run.method, key)
    if value is None and run.backbone is None:
        raise CbirError(f"methods.{run.method.name}.{key} is needed for a trunk factory (it has no backbone)")
    return int(value if value is not None else getattr(run.backbone, key))


def build_deep(run: MethodRun, root: Path, manifest: Callable[[], Path], n_images: int | None) -> DeepMethod:
    """The deep method of ``run``; ``manifest()`` is the manifest an int8 calibration samples."""
    cfg, settings = run.method, run.extract
    make_trunk, weights = trunk_maker(run, root)
    torch_device = resolve_device(run.device)
    runtime = resolve_runtime(settings.runtime, torch_device)
    image_size = own_or_backbone(run, "image_size")
    cached = runtime == "openvino" and weights is not None  # a factory's model is converted every time
    precision = resolve_precision(settings.precision, torch_device, runtime)
    calibration = None
    if precision == "int8":
        calibration = calibration_for(read_manifest(manifest()), root,
                                      {"size": settings.calibration.size, "seed": settings.calibration.seed})
    return DeepMethod(
        name=cfg.name, config=dict(cfg.raw), make_trunk=make_trunk, pool=make_pool(cfg.pooling, cfg.pooling_params),
        device=torch_device, image_size=image_size, batch_size=own_or_backbone(run, "batch_size"),
        scales=list(cfg.scales or (1.0,)), max_pixels=run.max_pixels,
        compile=should_compile(settings.compile, torch_device, n_images) and runtime == "torch",
        runtime=runtime, precision=precision, calibration=calibration,
        conversion_key=conversion_key(weights, run.backbone.arch, image_size) if cached else None,
    )
