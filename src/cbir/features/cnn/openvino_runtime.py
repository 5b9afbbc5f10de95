"""CPU inference of a CNN trunk with OpenVINO, and the choice of runtime and precision.

``extract.runtime``: ``auto`` (OpenVINO on CPU, torch on CUDA), ``torch`` or ``openvino``.
``extract.precision``: ``fp32`` (the default: the same descriptors on every machine), ``bf16``,
``auto`` (bf16 where OpenVINO compiles bf16 on this CPU, fp32 elsewhere) or ``int8`` (opt-in:
NNCF post-training quantisation, :mod:`cbir.features.cnn.openvino_int8`; OpenVINO runtime only).

What ran is read from OpenVINO, never guessed: the compiled model's ``INFERENCE_PRECISION_HINT`` (an
``ov.Type``) and, for int8, the precision of the convolutions in its runtime graph.  ``auto`` asks the
same question of a one-convolution probe model.  The features ``.json`` records what ran (the precision
the numbers were computed in), the log and the run record what this CPU is (:mod:`cbir.machine`), and a
warning appears only when a request was not honoured.

The trunk is converted from the same ``torch.nn.Module`` and weights (``openvino.convert_model``, a few
seconds) once, and the conversion is kept in a cache across stages and runs
(:mod:`cbir.features.cnn.openvino_cache`); it is compiled once per input shape (a fraction of a
second), so there is no compile wait worth skipping even for a handful of images.  OpenVINO fp32
matches torch eager to float rounding (tested: cosine >= 0.9999 on real images).
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from torch import nn

from cbir.errors import CbirError
from cbir.features.cnn.openvino_cache import saved_model

log = logging.getLogger("cbir")

RUNTIMES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: OpenVINO's inference precision hint per request (int8: the quantised layers run int8, the rest fp32)
_OV_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
#: runtime-graph layer types that carry a network's arithmetic
COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution"})
INT8_TYPES = frozenset({"i8", "u8"})


def _type_name(value) -> str:
    """An OpenVINO type (``ov.Type``, or the ``OVAny`` rt-info wrapping one) as its short name: f32, bf16, u8."""
    import openvino as ov

    if hasattr(value, "astype") and not isinstance(value, ov.Type):
        value = value.astype(str)
    if isinstance(value, ov.Type):
        return value.get_type_name()
    return str(value)


#: ov.Type short names -> the project's precision names
_PRECISION_OF_TYPE = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def compiled_precision(compiled) -> str:
    """The precision a compiled model computes in: ``int8`` when a compute layer of its runtime graph
    runs in i8/u8, else its ``INFERENCE_PRECISION_HINT`` type (``fp32``, ``bf16``, ``fp16``)."""
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if (_type_name(info["layerType"]) in COMPUTE_LAYERS
                and _type_name(info["runtimePrecision"]) in INT8_TYPES):
            return "int8"
    hint = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return _PRECISION_OF_TYPE.get(hint, hint)


def probe_model():
    """A one-convolution OpenVINO model: what a CPU compiles it in is what it compiles a CNN in."""
    import openvino as ov
    from openvino import opset13 as ops

    data = ops.parameter([1, 8, 16, 16], ov.Type.f32)
    weights = ops.constant(np.linspace(-1, 1, 8 * 8 * 9, dtype=np.float32).reshape(8, 8, 3, 3))
    return ov.Model([ops.convolution(data, weights, [1, 1], [1, 1], [1, 1], [1, 1])], [data])


def compiles_bf16(core) -> bool:
    """True where ``core`` compiles a convolution in bf16 when asked (AMX or AVX512-BF16 CPUs)."""
    compiled = core.compile_model(probe_model(), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    return compiled_precision(compiled) == "bf16"


@lru_cache(maxsize=1)
def openvino_bf16() -> bool:
    """Whether OpenVINO compiles bf16 on this CPU (asked once per process)."""
    import openvino as ov

    return compiles_bf16(ov.Core())


def torch_bf16() -> bool:
    """Whether torch's oneDNN runs bf16 natively on this CPU (its own check)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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


def resolve_precision(setting: str | None, device: torch.device, runtime: str = "openvino",
                      native_bf16: Callable[[], bool] | None = None) -> str:
    """``extract.precision`` resolved for ``runtime`` on ``device``: ``auto`` is bf16 where the runtime
    computes bf16 natively on this CPU (OpenVINO's compile, or torch's oneDNN check; ``native_bf16``
    replaces that question in tests), else fp32.  ``int8`` runs on the OpenVINO runtime only.

    On CUDA the torch path keeps its bf16 autocast whatever this says (the GPU path is unchanged).
    """
    setting = "auto" if setting is None else str(setting).lower()
    if setting not in PRECISIONS:
        raise CbirError(f"extract.precision is {setting!r}: use fp32, bf16, int8 or auto")
    if setting == "int8" and runtime != "openvino":
        raise CbirError(f"extract.precision=int8 runs on the OpenVINO runtime, not {runtime} on {device.type}: "
                        "use extract.runtime=auto or openvino on the CPU")
    if device.type == "cuda":
        return "bf16"
    if setting == "auto":
        if native_bf16 is None:
            native_bf16 = openvino_bf16 if runtime == "openvino" else torch_bf16
        return "bf16" if native_bf16() else "fp32"
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


def check_honoured(requested: str, effective: str) -> None:
    """Warn (one line) when OpenVINO compiled another precision than the one asked for."""
    if effective != requested:
        log.warning("OpenVINO runs %s, not the %s asked for: it does not compile %s on this CPU",
                    effective, requested, requested)


class OpenVinoTrunk:
    """A trunk run by OpenVINO on the CPU: ``batch [B, 3, H, W] -> fmap [B, C, h, w]`` like the module.

    ``convert`` makes the OpenVINO model (:func:`convert_trunk`, or an int8 quantisation of it); with a
    ``key`` its saved result is read from the cache instead (:mod:`cbir.features.cnn.openvino_cache`).
    Compiled once per input shape (static shapes run faster than one dynamic graph); ``precision`` is
    the requested one, ``effective_precision`` what OpenVINO compiled (:func:`compiled_precision`).
    ``provenance`` is recorded beside them (e.g. the int8 calibration set).
    """

    def __init__(self, convert: Callable[[], object], image_size: int, precision: str = "fp32",
                 key: str | None = None, provenance: dict | None = None):
        import openvino as ov

        if precision not in _OV_HINT:
            raise CbirError(f"extract.precision {precision!r} is not one OpenVINO runs: use fp32, bf16 or int8")
        self.precision = precision
        self.provenance = dict(provenance or {})
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
                "INFERENCE_PRECISION_HINT": _OV_HINT[self.precision], "PERFORMANCE_HINT": "LATENCY"})
            effective = compiled_precision(compiled)
            check_honoured(self.precision, effective)
            self._compiled[shape] = (compiled.create_infer_request(), effective)
        return self._compiled[shape]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        quiet_torch_threads()
        array = np.ascontiguousarray(batch.detach().cpu().float().numpy())
        request, _ = self._compile(tuple(array.shape))
        result = request.infer([array])
        return torch.from_numpy(np.array(result[0], dtype=np.float32, copy=True))

    def info(self) -> dict:
        """What computed the numbers (the same on every machine that compiles the same precision)."""
        return {"runtime": "openvino", "precision": self.effective_precision, "openvino": self.version,
                **self.provenance}

    def compiled(self) -> dict[str, str]:
        """What OpenVINO compiled on this machine: the precision per input shape (``1x3x224x224``), for the log
        and the run record, never an output."""
        return {"x".join(map(str, shape)): effective for shape, (_, effective) in sorted(self._compiled.items())}
