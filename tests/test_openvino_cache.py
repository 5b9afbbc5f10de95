"""The torchvision-free ImageNet preprocessing, the cache of converted OpenVINO trunks, and the decoding
thread: each checked against an independent reference (torchvision, a fresh conversion, a plain loop)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from methods_helpers import extract_rows, params_for, real_images
from PIL import Image

from cbir.data.images import open_rgb
from cbir.errors import CbirError
from cbir.features.cnn.openvino_cache import MODEL_FILE, conversion_key, prune, saved_model, verify
from cbir.features.cnn.openvino_runtime import convert_trunk
from cbir.features.cnn.preprocess import imagenet_input, resized_size
from cbir.features.cnn.runtime import prefetched
from cbir.features.methods import build_method

GAP = {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"}


@pytest.fixture(scope="module")
def root(tmp_path_factory, random_mobilenet_file) -> Path:
    from cbir.stages.weights import run as run_weights

    root = tmp_path_factory.mktemp("ovcache")
    run_weights(params_for(random_mobilenet_file), "mobilenet_v2", root)
    return root


# --------------------------------------------------------------------------- preprocessing


def torchvision_reference(image: Image.Image, size: int) -> np.ndarray:
    """The classic torchvision recipe on a PIL image: Resize, CenterCrop, ToTensor, Normalize."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(image).numpy()


@pytest.mark.parametrize("shape", [(224, 300), (300, 224), (50, 70), (97, 31), (1000, 640), (224, 224)])
def test_imagenet_input_equals_torchvision_on_pil_images(shape):
    rng = np.random.default_rng(sum(shape))
    image = Image.fromarray(rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8))
    ours, reference = imagenet_input(image, 224), torchvision_reference(image, 224)
    assert ours.shape == reference.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_resized_size_matches_torchvision():
    from torchvision.transforms.v2.functional._geometry import _compute_resized_output_size

    for height in (1, 7, 223, 224, 225, 333, 4000):
        for width in (1, 9, 224, 301, 2999):
            expected = _compute_resized_output_size((height, width), size=[224])
            assert resized_size(width, height, 224) == (expected[1], expected[0]), (height, width)


def test_imagenet_input_is_close_to_torchvision_tensor_resizing_on_real_images():
    """torchvision's tensor path resizes with torch's own uint8 kernel: within a few grey levels of Pillow."""
    from torchvision.transforms import v2 as T

    tensor_path = T.Compose([T.PILToTensor(), T.Resize(224, antialias=True), T.CenterCrop(224),
                             T.ToDtype(torch.float32, scale=True),
                             T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    for path in real_images(8):
        image = open_rgb(path)
        diff = np.abs(imagenet_input(image, 224) - tensor_path(image).numpy()) * 0.229 * 255
        assert diff.max() <= 3.0 and diff.mean() < 0.5, path


# --------------------------------------------------------------------------- the conversion cache


def test_conversion_key_follows_the_weights_the_architecture_and_the_size(tmp_path, random_mobilenet_file):
    weights = tmp_path / "w.pt"
    weights.write_bytes(random_mobilenet_file.read_bytes())
    key = conversion_key(weights, "mobilenet_v2", 224)
    assert key == conversion_key(weights, "mobilenet_v2", 224) and len(key) == 32
    assert key != conversion_key(weights, "mobilenet_v3_small", 224)
    assert key != conversion_key(weights, "mobilenet_v2", 160)
    weights.write_bytes(random_mobilenet_file.read_bytes() + b"\0")
    assert key != conversion_key(weights, "mobilenet_v2", 224)


def test_a_cached_conversion_gives_the_same_descriptors_bit_for_bit(random_mobilenet_file, root, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("CBIR_OPENVINO_CACHE", str(tmp_path / "cache"))
    params = params_for(random_mobilenet_file, image_size=64)
    paths = real_images(6)
    converted, _ = extract_rows(paths, GAP, params, root)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and (entries[0] / MODEL_FILE).is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted although the cache holds this trunk")

    monkeypatch.setattr("cbir.features.cnn.method.convert_trunk", no_conversion)
    cached, info = extract_rows(paths, GAP, params, root)
    np.testing.assert_array_equal(cached, converted)
    assert info["runtime"] == "openvino"


def test_a_damaged_or_unwritable_cache_costs_only_the_conversion(random_mobilenet_file, root, tmp_path,
                                                                 monkeypatch, caplog):
    params = params_for(random_mobilenet_file, image_size=64)
    paths = real_images(4)
    monkeypatch.setenv("CBIR_OPENVINO_CACHE", str(tmp_path / "cache"))
    reference, _ = extract_rows(paths, GAP, params, root)
    (entry,) = (tmp_path / "cache").iterdir()
    (entry / MODEL_FILE).write_text("<net truncated")
    with caplog.at_level(logging.WARNING, logger="cbir"):
        again, _ = extract_rows(paths, GAP, params, root)
    np.testing.assert_array_equal(again, reference)
    assert "is unreadable" in caplog.text and "converting again" in caplog.text
    assert (entry / MODEL_FILE).read_text().startswith("<?xml")  # converted and saved again

    weights = entry / "trunk.bin"  # same size, other bytes: OpenVINO alone would run it
    weights.write_bytes(bytes(len(weights.read_bytes())))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cbir"):
        again, _ = extract_rows(paths, GAP, params, root)
    np.testing.assert_array_equal(again, reference)
    assert "trunk.bin does not match the sha256 recorded when it was saved" in caplog.text
    verify(entry)  # the entry is whole again

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("CBIR_OPENVINO_CACHE", str(tmp_path / "a-file" / "cache"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cbir"):
        unwritable, _ = extract_rows(paths, GAP, params, root)
    np.testing.assert_array_equal(unwritable, reference)
    assert "cannot write the OpenVINO cache" in caplog.text and "converting on every run" in caplog.text


def test_the_cache_keeps_the_most_recently_used_entries(tmp_path):
    for i in range(5):
        (tmp_path / f"k{i}").mkdir()
        os.utime(tmp_path / f"k{i}", (1000 + i, 1000 + i))
    (tmp_path / ".k0.tmp").mkdir()  # a conversion being written: never pruned
    removed = prune(tmp_path, keep=3)
    assert sorted(p.name for p in removed) == ["k0", "k1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k0.tmp", "k2", "k3", "k4"]


def test_saved_model_without_a_key_converts_every_time_and_leaves_nothing(tmp_path):
    import openvino as ov

    calls = []

    def convert():
        calls.append(1)
        return convert_trunk(torch.nn.Conv2d(3, 4, 1), 8)

    core = ov.Core()
    for _ in range(2):
        model = saved_model(core, None, convert, root=tmp_path / "cache")
        assert [p.get_partial_shape()[1].get_length() for p in model.outputs] == [4]
    assert len(calls) == 2 and not (tmp_path / "cache").exists()


def test_a_cache_hit_runs_without_torchvision(random_mobilenet_file, root, tmp_path):
    """The point of the cache: an extract stage (or a query) with a cached trunk never imports torchvision."""
    script = f"""
import sys
import numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from methods_helpers import extract_rows, params_for
params = params_for({str(random_mobilenet_file)!r}, image_size=64)
rows, info = extract_rows([{str(real_images(2)[0])!r}], {GAP!r}, params, {str(root)!r})
print(sys.argv[1], info["runtime"], "torchvision" in sys.modules, np.linalg.norm(rows[0]).round(4))
"""
    env = {**os.environ, "CBIR_OPENVINO_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    runs = [subprocess.run([sys.executable, "-c", script, run], env=env, capture_output=True, text=True,
                           check=True).stdout.split() for run in ("cold", "warm")]
    assert runs == [["cold", "openvino", "True", "1.0"], ["warm", "openvino", "False", "1.0"]]


# --------------------------------------------------------------------------- decoding ahead


def test_prefetched_keeps_the_order_and_raises_at_the_failing_item():
    assert list(prefetched(iter(range(7)))) == list(range(7))
    assert list(prefetched([])) == []

    def items():
        yield "a"
        yield "b"
        raise CbirError("image 3 is truncated")

    seen = []
    with pytest.raises(CbirError, match="image 3 is truncated"):
        seen.extend(prefetched(items()))
    assert seen == ["a", "b"]


def test_a_factory_trunk_is_built_at_once_and_a_bad_one_is_one_clear_line(random_mobilenet_file, root):
    params = {**params_for(random_mobilenet_file), "methods": {"m": {
        "kind": "deep", "trunk": {"_target_": "builtins.dict"}, "pooling": "gap", "image_size": 32, "batch_size": 2}}}
    with pytest.raises(CbirError, match=r"methods\.m\.trunk: 'builtins\.dict' returned dict, not a torch\.nn\.Module"):
        build_method("m", params, root)
