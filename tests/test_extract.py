"""Deep and traditional extraction: shapes, normalisation, determinism, the stage's files and errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from methods_helpers import extract_rows, with_defaults

from cbir.errors import CbirError
from cbir.features.cnn import runtime as deep
from cbir.features.cnn.runtime import (
    default_workers,
    make_loader,
    resolve_device,
    should_compile,
)
from cbir.fileio import sha256_file
from cbir.stages.extract import run as run_extract
from cbir.stages.weights import run as run_weights
from cbir.features.handcrafted import descriptor_node


def _setup(tmp_path, images, weights_file):
    rows = [{"image_id": f"{'red' if i < 3 else 'blue'}/{p.stem}", "path": p.relative_to(tmp_path).as_posix(),
             "label": "red" if i < 3 else "blue", "split": "query" if i in (0, 3) else "database",
             "width": 48, "height": 48, "sha256": sha256_file(p), "protocol": "holdout"}
            for i, p in enumerate(images)]
    manifest = pd.DataFrame(rows).sort_values("image_id").reset_index(drop=True)
    out = tmp_path / "data" / "curated" / "toy"
    out.mkdir(parents=True)
    manifest.to_csv(out / "manifest.csv", index=False)
    params = with_defaults({
        "device": "cpu",
        "dataset": {"name": "toy"},
        "curate": {"max_pixels": 1_000_000},
        "extract": {"compile": False},  # eager here; the compiled path has its own test below
        "backbones": {"mobilenet_v2": {"arch": "mobilenet_v2", "source": "file", "format": "torch", "file": str(weights_file),
                                       "allow_unverified": True,  # a random network: nothing to verify
                                       "image_size": 64, "batch_size": 4}},
        "methods": {
            "mobilenet_v2-gap": {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"},
            "mobilenet_v2-gem": {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gem",
                                 "pooling_params": {"p": 3.0}},
            "hsv_hist": {"kind": "handcrafted", "descriptor": descriptor_node("hsv_histogram", {"bins": [8, 4, 4]})},
        },
    })
    run_weights(params, "mobilenet_v2", tmp_path)
    return params, manifest


@pytest.mark.parametrize("method,dim", [("mobilenet_v2-gap", 1280), ("mobilenet_v2-gem", 1280), ("hsv_hist", 128)])
def test_run_extract_writes_normalised_rows_aligned_with_manifest(tmp_path, colour_images, random_mobilenet_file,
                                                                    method, dim):
    params, manifest = _setup(tmp_path, colour_images, random_mobilenet_file)
    run_extract(params, tmp_path, method=method)
    feats = np.load(tmp_path / "data" / "features" / "toy" / f"{method}.npy")
    assert feats.dtype == np.float32 and feats.shape == (len(manifest), dim)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    meta = json.loads((tmp_path / "data" / "features" / "toy" / f"{method}.json").read_text())
    assert meta["n"] == len(manifest) and meta["dim"] == dim and meta["device"] == "cpu"
    assert not list((tmp_path / "data" / "features" / "toy").glob(".*")), "temp files left behind"


def test_rows_follow_manifest_order_and_batching_does_not_matter(tmp_path, colour_images, random_mobilenet_file):
    params, manifest = _setup(tmp_path, colour_images, random_mobilenet_file)
    paths = [tmp_path / p for p in manifest["path"]]
    cfg = params["methods"]["mobilenet_v2-gap"]
    a, _ = extract_rows(paths, cfg, params, tmp_path)
    single, _ = extract_rows(paths, {**cfg, "batch_size": 1}, params, tmp_path)
    np.testing.assert_allclose(a, single, atol=1e-5)
    reversed_rows, _ = extract_rows(paths[::-1], cfg, params, tmp_path)
    np.testing.assert_allclose(a, reversed_rows[::-1], atol=1e-5)


def test_colour_histogram_separates_red_from_blue(tmp_path, colour_images):
    feats, _ = extract_rows(colour_images, {"kind": "handcrafted", "descriptor": descriptor_node("hsv_histogram", {"bins": [8, 4, 4]})})
    sims = feats @ feats.T
    assert sims[0, 1] > sims[0, 4] and sims[3, 4] > sims[3, 0]


def test_missing_weights_stage_output(tmp_path, colour_images, random_mobilenet_file):
    params, _ = _setup(tmp_path, colour_images, random_mobilenet_file)
    (tmp_path / "models" / "mobilenet_v2.pt").unlink()
    with pytest.raises(CbirError, match=r"run `dvc repro weights@mobilenet_v2`"):
        run_extract(params, tmp_path, method="mobilenet_v2-gap")
    assert not (tmp_path / "data" / "features" / "toy" / "mobilenet_v2-gap.npy").exists()


def test_undecodable_image_stops_and_writes_nothing(tmp_path, colour_images, random_mobilenet_file):
    params, manifest = _setup(tmp_path, colour_images, random_mobilenet_file)
    (tmp_path / manifest["path"][2]).write_bytes(b"not an image at all")
    with pytest.raises(CbirError):
        run_extract(params, tmp_path, method="hsv_hist")
    assert not (tmp_path / "data" / "features" / "toy" / "hsv_hist.npy").exists()
    assert not list((tmp_path / "data" / "features" / "toy").glob(".*"))


def test_unknown_kind_and_missing_manifest(tmp_path, colour_images, random_mobilenet_file):
    params, _ = _setup(tmp_path, colour_images, random_mobilenet_file)
    params["methods"]["odd"] = {"kind": "magic"}
    with pytest.raises(CbirError, match="kind 'magic'"):
        run_extract(params, tmp_path, method="odd")
    (tmp_path / "data" / "curated" / "toy" / "manifest.csv").unlink()
    with pytest.raises(CbirError, match="run the curate stage first"):
        run_extract(params, tmp_path, method="hsv_hist")


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(CbirError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_loader_batches(colour_images):
    loader = make_loader(colour_images, 32, 4, torch.device("cpu"), num_workers=0)
    batches = list(loader)
    assert [b.shape[0] for b in batches] == [4, 2] and batches[0].shape[1:] == (3, 32, 32)


def test_fusion_method_is_weighted_mean_of_member_cosines(tmp_path, colour_images):
    from cbir.data.images import load_rgb
    from cbir.features.handcrafted import describe_config

    members = {"hsv_histogram": {"bins": [8, 4, 4]}, "lbp_histogram": {}}
    cfg = descriptor_node("fusion", {"members": members, "weights": {"hsv_histogram": 3.0}})
    a, b = load_rgb(colour_images[0]), load_rgb(colour_images[4])

    def cos(name, params):
        single = descriptor_node(name, params)
        x, y = describe_config(single, a), describe_config(single, b)
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    expected = (3.0 * cos("hsv_histogram", members["hsv_histogram"]) + 1.0 * cos("lbp_histogram", {})) / 4.0
    fa, fb = describe_config(cfg, a), describe_config(cfg, b)
    assert float(fa @ fb) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(CbirError, match="descriptor.members"):
        describe_config(descriptor_node("fusion"), a)


def test_multiscale_and_whitening_through_the_stage(tmp_path, colour_images, random_mobilenet_file):
    params, manifest = _setup(tmp_path, colour_images, random_mobilenet_file)
    params["methods"]["ms"] = {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap", "scales": [1.0, 0.75]}
    params["methods"]["w"] = {"kind": "handcrafted", "descriptor": descriptor_node("hsv_histogram"), "whiten": {"dim": 3}}
    run_extract(params, tmp_path, method="ms")
    single_scale = dict(params["methods"]["mobilenet_v2-gap"])
    paths = [tmp_path / p for p in manifest["path"]]
    one, _ = extract_rows(paths, single_scale, params, tmp_path)
    multi = np.load(tmp_path / "data" / "features" / "toy" / "ms.npy")
    assert multi.shape == one.shape and not np.allclose(multi, one)
    run_extract(params, tmp_path, method="w")
    whitened = np.load(tmp_path / "data" / "features" / "toy" / "w.npy")
    assert whitened.shape == (len(manifest), 3)  # 4 database rows -> at most 3 directions
    np.testing.assert_allclose(np.linalg.norm(whitened, axis=1), 1.0, atol=1e-5)
    assert (tmp_path / "data" / "features" / "toy" / "w.whitening.npz").exists()


def test_embedder_reproduces_the_stage_rows(tmp_path, colour_images, random_mobilenet_file):
    from cbir.app.engine import QueryEmbedder
    from cbir.data.images import open_rgb

    params, manifest = _setup(tmp_path, colour_images, random_mobilenet_file)
    params["methods"]["w"] = {"kind": "handcrafted", "descriptor": descriptor_node("hsv_histogram"), "whiten": {"dim": 2}}
    for method in ("mobilenet_v2-gap", "hsv_hist", "w"):
        run_extract(params, tmp_path, method=method)
        rows = np.load(tmp_path / "data" / "features" / "toy" / f"{method}.npy")
        embedder = QueryEmbedder.from_params(params, method, tmp_path)
        images = [open_rgb(tmp_path / p) for p in manifest["path"][:3]]
        np.testing.assert_allclose(embedder.embed(images), rows[:3], atol=1e-4)


def test_compiled_extraction_matches_eager_including_the_padded_last_batch(tmp_path, colour_images,
                                                                          random_mobilenet_file):
    """6 images in batches of 4: the short last batch is zero-padded for the static-shape graph."""
    params, manifest = _setup(tmp_path, colour_images, random_mobilenet_file)
    params["extract"]["runtime"] = "torch"  # torch.compile is the torch runtime's option
    paths = [tmp_path / p for p in manifest["path"]]
    cfg = params["methods"]["mobilenet_v2-gem"]
    eager, info = extract_rows(paths, cfg, params, tmp_path)
    assert info["compiled"] is False
    params["extract"]["compile"] = True
    compiled, info = extract_rows(paths, cfg, params, tmp_path)
    assert info["compiled"] is True and compiled.shape == eager.shape == (6, 1280)
    np.testing.assert_allclose(compiled, eager, atol=1e-4)


def test_compile_setting(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(deep, "cpp_compiler", lambda: "g++")
    assert should_compile("auto", cpu) and should_compile(None, cpu) and should_compile("true", cpu)
    assert not should_compile("auto", cuda) and should_compile(True, cuda)
    small = deep.AUTO_COMPILE_MIN_IMAGES - 1
    assert not should_compile("auto", cpu, n_images=small) and should_compile("auto", cpu, n_images=small + 1)
    assert should_compile(True, cpu, n_images=3)
    assert not should_compile(False, cpu) and not should_compile("false", cpu)
    with pytest.raises(CbirError, match="use auto, true or false"):
        should_compile("fast", cpu)
    monkeypatch.setattr(deep, "cpp_compiler", lambda: None)
    assert not should_compile("auto", cpu)
    with pytest.raises(CbirError, match="needs a C\\+\\+ compiler"):
        should_compile(True, cpu)


def test_cpp_compiler_follows_cxx(monkeypatch, tmp_path):
    fake = tmp_path / "my-cxx"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CXX", "my-cxx")
    assert deep.cpp_compiler() == "my-cxx"
    monkeypatch.delenv("CXX")
    assert deep.cpp_compiler() is None


@pytest.mark.parametrize("cpus,device,expected", [(2, "cpu", 0), (1, "cpu", 0), (8, "cpu", 4), (3, "cpu", 2),
                                                  (2, "cuda", 1), (16, "cuda", 4)])
def test_default_workers(monkeypatch, cpus, device, expected):
    monkeypatch.setattr(deep.os, "cpu_count", lambda: cpus)
    assert default_workers(torch.device(device)) == expected
