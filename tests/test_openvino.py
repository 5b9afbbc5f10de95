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
    cpu_isa,
    native_bf16,
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


def test_precision_auto_is_bf16_only_with_native_bf16():
    avx2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
    amx = avx2 | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
    avx512_bf16 = avx2 | {"avx512f", "avx512_bf16"}
    assert resolve_precision("auto", CPU, avx2) == "fp32"
    assert resolve_precision("auto", CPU, amx) == "bf16" and resolve_precision("auto", CPU, avx512_bf16) == "bf16"
    assert resolve_precision("fp32", CPU, amx) == "fp32" and resolve_precision("bf16", CPU, avx2) == "bf16"
    assert resolve_precision("fp32", CUDA, avx2) == "bf16"  # the GPU path keeps its bf16 autocast
    with pytest.raises(CbirError, match=r"extract.precision is 'fp16': use fp32, bf16 or auto"):
        resolve_precision("fp16", CPU, avx2)
    assert cpu_isa(amx) == {"level": "amx", "flags": ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16",
                                                      "amx_tile", "amx_bf16"], "native_bf16": True}
    assert cpu_isa(avx2)["level"] == "avx2" and not cpu_isa(avx2)["native_bf16"]
    assert cpu_isa(avx512_bf16)["level"] == "avx512" and native_bf16(avx512_bf16)


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


def test_bf16_on_request_records_what_runs(random_mobilenet_file, root):
    """bf16 where the CPU has it natively; elsewhere OpenVINO runs fp32, and the .json says fp32."""
    paths = real_images(6)
    cfg = {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"}
    rows, info = extract_rows(paths, cfg, params_for(random_mobilenet_file, "openvino", "bf16"), root)
    fp32, _ = extract_rows(paths, cfg, params_for(random_mobilenet_file, "openvino", "fp32"), root)
    assert info["precision"] == ("bf16" if native_bf16() else "fp32")
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
    run_extract(params, "m", tmp_path)
    meta_file = tmp_path / "data/features/toy/m.json"
    meta = json.loads(meta_file.read_text())
    assert meta["runtime"] == "openvino" and meta["precision"] == "fp32"
    assert meta["cpu_isa"] == cpu_isa() and not [k for k in meta if "second" in k or "elapsed" in k]
    first = meta_file.read_bytes()
    feats = np.load(tmp_path / "data/features/toy/m.npy")
    run_extract(params, "m", tmp_path)
    assert meta_file.read_bytes() == first  # no timings: a rerun gives the same bytes
    np.testing.assert_array_equal(np.load(tmp_path / "data/features/toy/m.npy"), feats)


def test_a_bad_runtime_or_precision_is_one_clear_line(random_mobilenet_file, root):
    cfg = {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"}
    with pytest.raises(CbirError, match="extract.runtime is 'tensorrt'"):
        build_method("m", {**params_for(random_mobilenet_file, "tensorrt"), "methods": {"m": cfg}}, root)
    with pytest.raises(CbirError, match="extract.precision is 'int4'"):
        build_method("m", {**params_for(random_mobilenet_file, "openvino", "int4"), "methods": {"m": cfg}}, root)
