"""CPU inference of a CNN trunk with OpenVINO, and the choice of runtime and precision.

``extract.runtime``: ``auto`` (OpenVINO on CPU, torch on CUDA), ``torch`` or ``openvino``.
``extract.precision``: ``fp32`` (the default: the same descriptors on every machine), ``bf16``, or
``auto`` (bf16 only where the CPU computes it natively: AMX or AVX512-BF16; fp32 elsewhere).

The trunk is converted from the same ``torch.nn.Module`` and weights (``openvino.convert_model``, a few
seconds) once, and the conversion is kept in a cache across stages and runs
(:mod:`cbir.features.cnn.openvino_cache`); it is compiled once per input shape (a fraction of a
second), so there is no compile wait worth skipping even for a handful of images.  OpenVINO fp32
matches torch eager to float rounding (tested: cosine >= 0.9999 on real images).
"""

from __future__ import annotations

import logging
import platform
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cbir.errors import CbirError
from cbir.features.cnn.openvino_cache import saved_model

log = logging.getLogger("cbir")

RUNTIMES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16")
#: CPU flags (Linux ``/proc/cpuinfo`` names) that matter for CNN inference, in rising order
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (from ``/proc/cpuinfo`` on Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_isa(flags: frozenset[str] | None = None) -> dict:
    """The CPU's instruction-set summary: its widest vector level and the inference-relevant flags.

    ``level`` is ``amx`` (AMX-BF16), ``avx512`` (AVX-512F), ``avx2``, ``sse4`` or the machine name.
    """
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        level = "amx"
    elif "avx512f" in flags:
        level = "avx512"
    elif "avx2" in flags:
        level = "avx2"
    elif "sse4_2" in flags:
        level = "sse4"
    else:
        level = platform.machine() or "unknown"
    return {"level": level, "flags": [f for f in ISA_FLAGS if f in flags], "native_bf16": native_bf16(flags)}


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True where the CPU computes bf16 in hardware (AMX-BF16 or AVX512-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_runtime(setting: str | None, device: torch.device) -> str:
    """``extract.runtime`` resolved for ``device``: ``auto`` is OpenVINO on CPU and torch on CUDA."""
    setting = "auto" if setting is None else str(setting).lower()
    if setting not in RUNTIMES:
        raise CbirError(f"extract.runtime is {setting!r}: use auto, torch or openvino")
    if setting == "auto":
        return "openvino" if device.type == "cpu" else "torch"
    if setting == "openvino" and device.type != "cpu":
        raise CbirError(f"extract.runtime=openvino runs on the CPU but device is {device.type}: "
                        "use device=cpu, or extract.runtime=auto/torch on a GPU")
    return setting


def resolve_precision(setting: str | None, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """``extract.precision`` resolved: ``auto`` is bf16 where the CPU has native bf16, else fp32.

    On CUDA the torch path keeps its bf16 autocast whatever this says (the GPU path is unchanged).
    """
    setting = "auto" if setting is None else str(setting).lower()
    if setting not in PRECISIONS:
        raise CbirError(f"extract.precision is {setting!r}: use fp32, bf16 or auto")
    if device.type == "cuda":
        return "bf16"
    if setting == "auto":
        return "bf16" if native_bf16(flags) else "fp32"
    return setting


def convert_trunk(trunk: nn.Module, image_size: int):
    """The trunk as an OpenVINO model with a dynamic ``[B, 3, H, W]`` input (converted once)."""
    import openvino as ov

    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():  # convert_model traces with torch.jit, which warns that it is deprecated
        warnings.simplefilter("ignore")
        try:
            return ov.convert_model(trunk.cpu().eval(), example_input=example,
                                    input=[ov.PartialShape([-1, 3, -1, -1])])
        except Exception as exc:  # the converter raises many kinds; one clear line instead
            raise CbirError(f"OpenVINO cannot convert the trunk {type(trunk).__name__} "
                            f"({' '.join(str(exc).split())[:300]}): use extract.runtime=torch") from None


def quiet_torch_threads() -> None:
    """One torch thread while OpenVINO runs the trunk: torch only pools and preprocesses then, and its
    idle OpenMP threads would spin against OpenVINO's on the same cores (measured: several times slower
    on 2 cores)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


class OpenVinoTrunk:
    """A trunk run by OpenVINO on the CPU: ``batch [B, 3, H, W] -> fmap [B, C, h, w]`` like the module.

    ``convert`` makes the OpenVINO model (:func:`convert_trunk`); with a ``key`` its saved conversion is
    read from the cache instead (:mod:`cbir.features.cnn.openvino_cache`).  Compiled once per input
    shape (static shapes run faster than one dynamic graph); ``precision`` is the requested one,
    ``effective_precision`` what OpenVINO runs (a CPU without native bf16 runs fp32 when asked for bf16).
    """

    def __init__(self, convert: Callable[[], object], image_size: int, precision: str = "fp32",
                 key: str | None = None):
        import openvino as ov

        if precision not in _OV_PRECISION:
            raise CbirError(f"extract.precision {precision!r} is not one OpenVINO runs: use fp32 or bf16")
        self.precision = precision
        self.version = ov.__version__.split("-")[0]
        self._core = ov.Core()
        self._model = saved_model(self._core, key, convert)
        self._compiled: dict[tuple[int, ...], object] = {}
        self.effective_precision = self._compile((1, 3, image_size, image_size))[1]

    @classmethod
    def from_module(cls, trunk: nn.Module, image_size: int, precision: str = "fp32") -> OpenVinoTrunk:
        """A torch trunk converted now (no cache)."""
        return cls(lambda: convert_trunk(trunk, image_size), image_size, precision)

    def _compile(self, shape: tuple[int, ...]):
        if shape not in self._compiled:
            model = self._model.clone()
            model.reshape(list(shape))
            compiled = self._core.compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision], "PERFORMANCE_HINT": "LATENCY"})
            hint = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
            effective = "bf16" if "bf16" in hint else "fp32"
            if effective != self.precision:
                log.warning("OpenVINO runs %s, not the %s asked for: this CPU has no native %s",
                            effective, self.precision, self.precision)
            self._compiled[shape] = (compiled.create_infer_request(), effective)
        return self._compiled[shape]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        quiet_torch_threads()
        array = np.ascontiguousarray(batch.detach().cpu().float().numpy())
        request, _ = self._compile(tuple(array.shape))
        result = request.infer([array])
        return torch.from_numpy(np.array(result[0], dtype=np.float32, copy=True))

    def info(self) -> dict:
        return {"runtime": "openvino", "precision": self.effective_precision, "openvino": self.version}
