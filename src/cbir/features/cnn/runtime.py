"""Batched deep-feature extraction: decode -> trunk -> pooling -> L2-normalise, on CUDA when present."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cbir.data.images import MAX_PIXELS, open_rgb
from cbir.errors import CbirError
from cbir.features.cnn.preprocess import imagenet_input


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a clear error."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise CbirError("device=cuda was asked for but no CUDA GPU is visible: use device=auto or device=cpu")
    return torch.device(requested)


def _imagenet_tensor(image: Image.Image, size: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(imagenet_input(image, size)))


def make_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """ImageNet evaluation preprocessing (:func:`~cbir.features.cnn.preprocess.imagenet_input`) as a
    ``[3, S, S]`` tensor: shorter side to ``image_size``, centre crop, normalise (picklable, for workers)."""
    return partial(_imagenet_tensor, size=image_size)


class ImageFiles(Dataset):
    """Images by path, decoded with the project's safe loader and transformed."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable, max_pixels: int = MAX_PIXELS):
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:

        return self.transform(open_rgb(self.paths[i], max_pixels=self.max_pixels))


COMPILE_CHOICES = ("auto", True, False)
#: ``extract.compile=auto`` compiles from this many images up: below it the one-off compile (15-25 s on
#: 2 CPU cores) costs more than it saves (measured on the default 739-image experiment: MobileNetV2
#: 18 s eager vs 28 s compiled, EfficientNet-Lite0 30 s vs 42 s).
AUTO_COMPILE_MIN_IMAGES = 2000


def cpp_compiler() -> str | None:
    """The C++ compiler TorchInductor would use on CPU ($CXX, g++ or clang++), if one is on PATH."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def should_compile(setting: str | bool | None, device: torch.device, n_images: int | None = None) -> bool:
    """``extract.compile``: ``auto`` compiles on CPU when a C++ compiler is present and the run has at
    least :data:`AUTO_COMPILE_MIN_IMAGES` images (``n_images=None``: a large run); true/false force it.

    On CUDA ``auto`` stays eager (bf16 autocast); ``true`` compiles there too (Triton).
    """
    if setting is None:
        setting = "auto"
    if isinstance(setting, str) and setting.lower() in ("true", "false"):
        setting = setting.lower() == "true"
    if setting not in COMPILE_CHOICES:
        raise CbirError(f"extract.compile is {setting!r}: use auto, true or false")
    if setting == "auto":
        large = n_images is None or n_images >= AUTO_COMPILE_MIN_IMAGES
        return device.type == "cpu" and large and cpp_compiler() is not None
    if setting and device.type == "cpu" and cpp_compiler() is None:
        raise CbirError("extract.compile=true needs a C++ compiler on PATH for TorchInductor "
                        "(apt-get install g++, or set CXX): or use extract.compile=auto/false")
    return bool(setting)


def compile_trunk(trunk: nn.Module) -> nn.Module:
    """``torch.compile`` for inference with static shapes and frozen weights.

    Freezing folds batch-norm into the convolutions and pre-packs the weights for oneDNN; the
    outputs match eager fp32 up to float rounding (tested).  Freezing is an inference-only
    process-wide Inductor setting, so it is switched on here and nowhere else.
    """
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(trunk, dynamic=False)


def default_workers(device: torch.device | None = None) -> int:
    """Decoding worker processes: up to 4 and one core left free, but none on a CPU run with at most
    two cores, where a worker only takes a core from the model (measured: benchmarks/extract.py)."""
    cpus = os.cpu_count() or 1
    if (device is None or device.type == "cpu") and cpus <= 2:
        return 0
    return max(0, min(4, cpus - 1))


@torch.inference_mode()
def describe_batch(trunk: Callable, pool: Callable, batch: torch.Tensor, scales: Sequence[float] = (1.0,),
                   use_amp: bool = False) -> torch.Tensor:
    """L2-normalised descriptors [B, D] of a preprocessed batch, summed over ``scales``.

    ``trunk``: a ``torch.nn.Module`` or any callable batch -> feature map (an OpenVINO trunk);
    ``use_amp``: bf16 autocast on the batch's device (torch only).
    """
    vec = 0
    for scale in scales:
        scaled = batch if scale == 1.0 else torch.nn.functional.interpolate(
            batch, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
        with torch.autocast(device_type=batch.device.type, dtype=torch.bfloat16, enabled=use_amp):
            fmap = trunk(scaled.contiguous(memory_format=torch.channels_last))
        vec = vec + torch.nn.functional.normalize(pool(fmap.float()).flatten(1), dim=1)
    return torch.nn.functional.normalize(vec, dim=1)


@torch.inference_mode()
def embed_batches(
    trunk: Callable,
    pool: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    out: np.ndarray,
    device: torch.device,
    progress: bool = True,
    scales: Sequence[float] = (1.0,),
    compile: bool = False,
    use_amp: bool | None = None,
) -> None:
    """Run ``trunk`` then ``pool`` over ``loader`` and write L2-normalised rows into ``out`` (e.g. a memmap).

    Multi-scale: the batch is resized by each factor in ``scales`` and the L2-normalised
    descriptors are summed before the final normalisation.
    ``trunk``: a ``torch.nn.Module`` (channels-last; bf16 autocast when ``use_amp``, by default on CUDA
    only) or a callable such as an :class:`~cbir.features.cnn.openvino_runtime.OpenVinoTrunk`.
    ``compile``: run a :func:`compile_trunk` graph; a short last batch is zero-padded to the
    loader's batch size so one static-shape graph serves every batch (rows are independent).
    """
    if isinstance(trunk, nn.Module):
        trunk = trunk.to(device).to(memory_format=torch.channels_last).eval()
        if compile:
            trunk = compile_trunk(trunk)
    full = loader.batch_size
    row = 0
    if use_amp is None:
        use_amp = device.type == "cuda"
    batches = _reraise_worker_errors(loader)
    if not loader.num_workers:
        batches = prefetched(batches)
    # `disable` is passed only to turn the bar off: an explicit value would override TQDM_DISABLE (`-q`)
    quiet = {} if progress else {"disable": True}
    for batch in tqdm(batches, desc="extract", unit="batch", total=len(loader), **quiet):
        n = batch.shape[0]
        if compile and full and n < full:
            batch = torch.cat([batch, batch.new_zeros((full - n, *batch.shape[1:]))])
        batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        vec = describe_batch(trunk, pool, batch, scales, use_amp)[:n]
        out[row:row + n] = vec.cpu().numpy().astype(np.float32)
        row += n
    if row != out.shape[0]:
        raise CbirError(f"extracted {row} rows but expected {out.shape[0]}")


_END = object()


def prefetched(items: Iterable) -> Iterator:
    """``items`` in order, the next one made in a background thread while the caller works on this one
    (decoding overlaps the model, which releases the GIL; errors surface at the item that raised them)."""
    iterator = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="cbir-decode") as pool:
        ahead = pool.submit(next, iterator, _END)
        while (item := ahead.result()) is not _END:
            ahead = pool.submit(next, iterator, _END)
            yield item


def worker_error_line(exc: BaseException) -> str:
    """The original one-line message of an error raised inside a DataLoader worker."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    head, sep, tail = last.partition(": ")
    return tail if sep and "." in head and " " not in head else last


def _reraise_worker_errors(loader: DataLoader):
    """Iterate ``loader``; an image that fails in a worker becomes one clear CbirError line."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except CbirError as exc:
            raise CbirError(worker_error_line(exc)) from None
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            raise CbirError(worker_error_line(exc)) from None
        yield batch


@torch.inference_mode()
def feature_dim(trunk: nn.Module, pool: Callable, image_size: int) -> int:
    """Descriptor length, from one dummy forward pass on CPU."""
    probe = torch.zeros(1, 3, image_size, image_size)
    return int(pool(trunk.cpu().eval()(probe)).flatten(1).shape[1])


def make_loader(paths: Sequence, image_size: int, batch_size: int, device: torch.device,
                num_workers: int | None = None, max_pixels: int = MAX_PIXELS) -> DataLoader:
    workers = default_workers(device) if num_workers is None else num_workers
    return DataLoader(
        ImageFiles(paths, make_transform(image_size), max_pixels=max_pixels),
        batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
