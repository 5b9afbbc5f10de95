"""The OpenVINO runtime: choice of runtime and precision, descriptors equal to torch eager, what is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from methods_helpers import extract_rows, params_for, real_images

from cbir.errors import CbirError
from cbir.features.cnn.openvino_runtime import (
    OpenVinoTrunk,
    compiled_precision,
    compiles_bf16,
    cpu_isa,
    isa_class,
    openvino_bf16,
    resolve_precision,
    resolve_runtime,
)
from cbir.features.methods import build_method

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def root(tmp_path_factory, random_mobilenet_file) -> Path:
    """A project root holding models/mobilenet_v2.pt (random weights), as the weights stage writes it."""
    from cbir.stages.weights import run as run_weights

    root = tmp_path_factory.mktemp("ov")
    run_weights(params_for(random_mobilenet_file), "mobilenet_v2", root)
    return root


def test_runtime_choice():
    assert resolve_runtime("auto", CPU) == "openvino" and resolve_runtime(None, CPU) == "openvino"
    assert resolve_runtime("auto", CUDA) == "torch"
    assert resolve_runtime("torch", CPU) == "torch" and resolve_runtime("OpenVINO", CPU) == "openvino"
    with pytest.raises(CbirError, match=r"extract.runtime is 'onnx': use auto, torch or openvino"):
        resolve_runtime("onnx", CPU)
    with pytest.raises(CbirError, match="extract.runtime=openvino runs on the CPU but device is cuda"):
        resolve_runtime("openvino", CUDA)


AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}
AVX512_BF16 = AVX512 | {"avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}


def test_precision_auto_follows_what_the_runtime_compiles():
    """``auto`` asks the runtime (here answered both ways), never the CPU flags."""
    def yes():
        return True

    def no():
        return False

    assert resolve_precision("auto", CPU, "openvino", native_bf16=no) == "fp32"
    assert resolve_precision("auto", CPU, "openvino", native_bf16=yes) == "bf16"
    assert resolve_precision(None, CPU, "torch", native_bf16=yes) == "bf16"
    assert resolve_precision("fp32", CPU, "openvino", native_bf16=yes) == "fp32"
    assert resolve_precision("bf16", CPU, "openvino", native_bf16=no) == "bf16"  # asked for: tried, then recorded
    assert resolve_precision("int8", CPU, "openvino", native_bf16=no) == "int8"
    assert resolve_precision("fp32", CUDA, "torch") == "bf16"  # the GPU path keeps its bf16 autocast
    with pytest.raises(CbirError, match=r"extract.precision is 'fp16': use fp32, bf16, int8 or auto"):
        resolve_precision("fp16", CPU)
    with pytest.raises(CbirError, match="extract.precision=int8 runs on the OpenVINO runtime, not torch on cpu"):
        resolve_precision("int8", CPU, "torch")
    with pytest.raises(CbirError, match="not torch on cuda"):
        resolve_precision("int8", CUDA, "torch")
    # the real question on this machine: the probe's answer is the compiled type of a real convolution
    assert resolve_precision("auto", CPU, "openvino") == ("bf16" if openvino_bf16() else "fp32")


def test_isa_summary_and_class_per_machine_kind():
    assert [isa_class(f) for f in (AVX2, AVX512, AVX512_BF16, AMX, frozenset())] == [
        "avx2", "avx512", "avx512-bf16", "amx", "other"]
    assert cpu_isa(AMX) == {"level": "amx", "class": "amx", "flags": [
        "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile",
        "amx_bf16", "amx_int8"]}
    assert cpu_isa(AVX2)["level"] == "avx2" and cpu_isa(AVX512_BF16)["level"] == "avx512"


class FakeAny:
    """OpenVINO's rt-info value: ``astype(str)`` gives its text."""

    def __init__(self, text):
        self.text = text

    def astype(self, kind):
        return self.text


class FakeOp:
    def __init__(self, layer, precision):
        self.info = {"layerType": FakeAny(layer), "runtimePrecision": FakeAny(precision)}

    def get_rt_info(self):
        return self.info


class FakeCompiled:
    """A compiled model that answers a given ``INFERENCE_PRECISION_HINT`` and runtime graph, as
    ``ov.CompiledModel`` does on an AVX2, AVX512-BF16 or AMX CPU."""

    def __init__(self, hint, layers=(("Input", "f32"), ("Convolution", "f32"), ("Output", "f32"))):
        self.hint, self.layers = hint, layers

    def get_property(self, name):
        assert name == "INFERENCE_PRECISION_HINT"
        return self.hint

    def get_runtime_model(self):
        ops = [FakeOp(layer, precision) for layer, precision in self.layers]
        return type("RuntimeModel", (), {"get_ordered_ops": lambda _: ops})()


class FakeCore:
    def __init__(self, hint_for_bf16):
        self.hint_for_bf16 = hint_for_bf16

    def compile_model(self, model, device, config):
        assert device == "CPU" and config["INFERENCE_PRECISION_HINT"] == "bf16"
        return FakeCompiled(self.hint_for_bf16, (("Convolution", self.hint_for_bf16.get_type_name()),))


def test_compiled_precision_reads_the_openvino_type():
    import openvino as ov

    assert compiled_precision(FakeCompiled(ov.Type.bf16)) == "bf16"  # '<Type: bfloat16>' has no 'bf16' in it
    assert compiled_precision(FakeCompiled(ov.Type.f32)) == "fp32"
    assert compiled_precision(FakeCompiled(ov.Type.f16)) == "fp16"
    int8 = (("Input", "f32"), ("FakeQuantize", "u8"), ("Convolution", "u8"), ("Convolution", "f32"))
    assert compiled_precision(FakeCompiled(ov.Type.f32, int8)) == "int8"
    # u8 data movement alone (a reorder, an input) is not int8 arithmetic
    assert compiled_precision(FakeCompiled(ov.Type.f32, (("Reorder", "u8"), ("Convolution", "f32")))) == "fp32"
    assert compiles_bf16(FakeCore(ov.Type.bf16)) and not compiles_bf16(FakeCore(ov.Type.f32))


@pytest.mark.parametrize("answer", ["bf16", "f32"])
def test_trunk_records_what_openvino_compiled_and_warns_only_when_not_honoured(
        answer, monkeypatch, caplog, random_mobilenet_file, root):
    """Both outcomes on any machine: the compiled model is made to answer bf16 or f32."""
    import openvino as ov

    from cbir.features.cnn import openvino_runtime

    real = openvino_runtime.compiled_precision
    monkeypatch.setattr(openvino_runtime, "compiled_precision",
                        lambda compiled: real(FakeCompiled(getattr(ov.Type, answer))))
    cfg = {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"}
    with caplog.at_level("WARNING", logger="cbir"):
        _, info = extract_rows(real_images(3), cfg, params_for(random_mobilenet_file, "openvino", "bf16"), root)
    assert info["precision"] == ("bf16" if answer == "bf16" else "fp32")
    warned = [r.getMessage() for r in caplog.records if "not the bf16 asked for" in r.getMessage()]
    assert bool(warned) == (answer == "f32"), warned


def test_openvino_fp32_matches_torch_eager_on_real_images(random_mobilenet_file, root):
    paths = real_images()
    for cfg in ({"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"},
                {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gem", "scales": [1.0, 0.75]}):
        ov_rows, ov_info = extract_rows(paths, cfg, params_for(random_mobilenet_file, "openvino"), root)
        pt_rows, pt_info = extract_rows(paths, cfg, params_for(random_mobilenet_file, "torch"), root)
        assert ov_info["runtime"] == "openvino" and ov_info["precision"] == "fp32"
        assert pt_info["runtime"] == "torch" and pt_info["precision"] == "fp32"
        cosine = np.sum(ov_rows * pt_rows, axis=1)
        assert cosine.min() >= 0.9999, cosine
        np.testing.assert_allclose(np.linalg.norm(ov_rows, axis=1), 1.0, atol=1e-5)
        again, _ = extract_rows(paths, cfg, params_for(random_mobilenet_file, "openvino"), root)
        np.testing.assert_array_equal(again, ov_rows)  # deterministic from run to run


def test_query_path_uses_the_same_runtime_and_lands_on_the_database_rows(random_mobilenet_file, root):
    from cbir.data.images import open_rgb

    paths = real_images(6)
    cfg = {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"}
    params = {**params_for(random_mobilenet_file, "auto"), "methods": {"m": cfg}}
    method = build_method("m", params, root, n_images=len(paths))
    assert method.runtime == "openvino"
    rows = np.empty((len(paths), method.dim), dtype=np.float32)
    method.extract(paths, rows, progress=False, num_workers=0)
    query = method.embed([open_rgb(paths[2])])
    assert isinstance(method.runner, OpenVinoTrunk)
    assert float(query[0] @ rows[2]) >= 0.99999 and int(np.argmax(rows @ query[0])) == 2


def test_bf16_on_request_records_what_runs(random_mobilenet_file, root, caplog):
    """The real compile: the .json says bf16 exactly where OpenVINO compiled bf16, and the descriptors
    show it (bf16 differs from fp32 in the last bits; a CPU that falls back computes fp32 exactly)."""
    paths = real_images(6)
    cfg = {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"}
    with caplog.at_level("WARNING", logger="cbir"):
        rows, info = extract_rows(paths, cfg, params_for(random_mobilenet_file, "openvino", "bf16"), root)
    fp32, _ = extract_rows(paths, cfg, params_for(random_mobilenet_file, "openvino", "fp32"), root)
    warned = any("not the bf16 asked for" in r.getMessage() for r in caplog.records)
    if openvino_bf16():
        assert info["precision"] == "bf16" and not warned
        assert not np.array_equal(rows, fp32)
    else:
        assert info["precision"] == "fp32" and warned
        np.testing.assert_array_equal(rows, fp32)
    assert np.sum(rows * fp32, axis=1).min() >= 0.99


def test_stage_json_records_runtime_precision_and_isa(tmp_path, colour_images, random_mobilenet_file):
    import pandas as pd

    from cbir.fileio import sha256_file
    from cbir.stages.extract import run as run_extract
    from cbir.stages.weights import run as run_weights

    rows = [{"image_id": f"c/{p.stem}", "path": p.relative_to(tmp_path).as_posix(), "label": "c",
             "split": "query" if i == 0 else "database", "width": 48, "height": 48, "sha256": sha256_file(p),
             "protocol": "holdout"} for i, p in enumerate(colour_images)]
    (tmp_path / "data/curated/toy").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tmp_path / "data/curated/toy/manifest.csv", index=False)
    params = {**params_for(random_mobilenet_file, "auto", image_size=64), "dataset": {"name": "toy"},
              "methods": {"m": {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"}}}
    run_weights(params, "mobilenet_v2", tmp_path)
    run_extract(params, tmp_path, method="m")
    meta_file = tmp_path / "data/features/toy/m.json"
    meta = json.loads(meta_file.read_text())
    assert meta["runtime"] == "openvino" and meta["precision"] == "fp32"
    assert meta["cpu_isa"] == cpu_isa() and not [k for k in meta if "second" in k or "elapsed" in k]
    first = meta_file.read_bytes()
    feats = np.load(tmp_path / "data/features/toy/m.npy")
    run_extract(params, tmp_path, method="m")
    assert meta_file.read_bytes() == first  # no timings: a rerun gives the same bytes
    np.testing.assert_array_equal(np.load(tmp_path / "data/features/toy/m.npy"), feats)


def test_a_bad_runtime_or_precision_is_one_clear_line(random_mobilenet_file, root):
    cfg = {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"}
    with pytest.raises(CbirError, match="extract.runtime is 'tensorrt'"):
        build_method("m", {**params_for(random_mobilenet_file, "tensorrt"), "methods": {"m": cfg}}, root)
    with pytest.raises(CbirError, match="extract.precision is 'int4'"):
        build_method("m", {**params_for(random_mobilenet_file, "openvino", "int4"), "methods": {"m": cfg}}, root)
