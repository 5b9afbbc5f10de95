"""The ray extraction engine: same rows as the local engine, its resource plan and its errors.

The engine tests start Ray on this machine (2 CPUs, small object store, no dashboard) once per module.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from methods_helpers import extract_rows
from ray_helpers import DEEP, HOG, make_workspace

from cbir.errors import CbirError
from cbir.features.methods import unit_rows
from cbir.features.ray_engine import (
    collect,
    describe_dataset,
    extract_with_ray,
    image_items,
    import_ray,
    runtime_env,
    plan_actors,
    run_pipeline,
    user_error,
    weights_bytes,
)
from cbir.settings import MethodRun
from cbir.stages.extract import run as run_extract

# Ray Data's own configuration warns about its deprecated options on first use.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*:DeprecationWarning")

@pytest.fixture(scope="module")
def ray_local():
    ray = import_ray()  # the engine's own import: a clear error when Ray is missing
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False,
             configure_logging=False, runtime_env=runtime_env())
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, random_mobilenet_file):
    """Eleven generated images of several sizes and modes, a manifest and the weights stage's output."""
    return make_workspace(tmp_path_factory.mktemp("ray"), random_mobilenet_file)


# ---------------------------------------------------------------- pure parts


def test_plan_one_actor_per_gpu_for_deep_methods_and_per_cpu_otherwise():
    gpu_cluster = {"CPU": 32.0, "GPU": 4.0}
    assert plan_actors("deep", "auto", gpu_cluster) == {"num_actors": 4, "num_gpus": 1, "num_cpus": 1,
                                                        "device": "cuda", "decode_tasks": True}
    assert plan_actors("deep", "cuda", gpu_cluster, num_actors=2)["num_actors"] == 2
    assert plan_actors("deep", "cpu", gpu_cluster) == {"num_actors": 32, "num_gpus": 0, "num_cpus": 1,
                                                       "device": "cpu", "decode_tasks": False}
    assert plan_actors("handcrafted", "auto", gpu_cluster)["num_gpus"] == 0
    assert plan_actors("deep", "auto", {"CPU": 2.0}) == {"num_actors": 2, "num_gpus": 0, "num_cpus": 1,
                                                         "device": "cpu", "decode_tasks": False}
    assert plan_actors("handcrafted", "auto", {"CPU": 2.0}, num_actors=5)["num_actors"] == 5


@pytest.mark.parametrize("device, cluster, actors, message", [
    ("cuda", {"CPU": 2.0}, None, "device=cuda was asked for but the Ray cluster has no GPU"),
    ("tpu", {"CPU": 2.0}, None, "device is 'tpu': use auto, cpu or cuda"),
    ("auto", {"CPU": 2.0}, 0, "extract.ray.num_actors must be a positive integer or null, got 0"),
    ("auto", {"CPU": 2.0}, "two", "extract.ray.num_actors must be a positive integer or null, got 'two'"),
])
def test_plan_rejects_bad_settings(device, cluster, actors, message):
    with pytest.raises(CbirError, match=message):
        plan_actors("deep", device, cluster, actors)


def test_unit_rows_matches_hand_values():
    out = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert out.dtype == np.float32


def test_collect_places_rows_and_checks_completeness():
    out = np.zeros((4, 2), np.float32)
    batches = [{"row": np.array([2, 0]), "vector": np.array([[2, 2], [0, 0]], np.float32)},
               {"row": np.array([3, 1]), "vector": np.array([[3, 3], [1, 1]], np.float32)}]
    assert collect(batches, out) == 4
    np.testing.assert_array_equal(out[:, 0], [0, 1, 2, 3])
    with pytest.raises(CbirError, match="Ray returned 2 of 4 rows"):
        collect(batches[:1], np.zeros((4, 2), np.float32))
    with pytest.raises(CbirError, match="returned a manifest row twice"):
        collect(batches + batches[:1], np.zeros((4, 2), np.float32))
    with pytest.raises(CbirError, match=r"vectors of shape \(2, 3\) for 2 rows; expected \[2, 2\]"):
        collect([{"row": np.array([0, 1]), "vector": np.zeros((2, 3), np.float32)}], np.zeros((2, 2), np.float32))


def test_user_error_finds_the_remote_message_in_a_wrapped_traceback():
    remote = RuntimeError("ray::MapWorker.submit()\n  File \"x.py\", line 3\n"
                          "cbir.errors.CbirError: cannot use image a.png: truncated (image file is truncated)\n\n"
                          "The above exception was the direct cause of the following exception:\n"
                          "ray.exceptions.UserCodeException: UDF failed to process a data block.")
    assert str(user_error(remote)) == "cannot use image a.png: truncated (image file is truncated)"
    assert user_error(RuntimeError("worker died")) is None
    try:
        try:
            raise CbirError("inner")
        except CbirError as exc:
            raise RuntimeError("outer") from exc
    except RuntimeError as chained:
        assert str(user_error(chained)) == "inner"


def test_missing_ray_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(CbirError, match=r"needs Ray Data, which is not installed: pip install -e '\.\[ray\]'"):
        import_ray()
    with pytest.raises(CbirError, match="not installed"):
        extract_with_ray([], {"methods": {"hog": HOG}}, "hog", ".", np.zeros((0, 4), np.float32))


# ---------------------------------------------------------------- on Ray (local)


@pytest.mark.slow
def test_deep_features_equal_the_local_engine(ray_local, workspace):
    root, params, paths = workspace
    local, _ = extract_rows(paths, DEEP, params, root)
    out = np.full_like(local, np.nan)
    info = extract_with_ray(paths, params, "mnv2-gem", root, out)
    np.testing.assert_allclose(out, local, atol=1e-5)
    assert info["engine"] == "ray" and info["device"] == "cpu" and info["num_actors"] == 2
    assert info["image_size"] == 64 and info["batch_size"] == 3 and not info["decode_tasks"]
    # the GPU layout (decoding in separate tasks, then the model actors) gives the same rows
    plan = {"num_actors": 1, "num_gpus": 0, "num_cpus": 1, "device": "cpu", "decode_tasks": True}
    split = np.full_like(local, np.nan)
    run = MethodRun.from_params(params, "mnv2-gem")
    weights = ray_local.put(weights_bytes(run, root))
    run_pipeline(ray_local, describe_dataset(ray_local, image_items(paths, root, None), run, plan, 4, weights), split)
    np.testing.assert_allclose(split, local, atol=1e-5)


@pytest.mark.slow
def test_stage_with_ray_engine_writes_the_local_engines_handcrafted_rows(ray_local, workspace):
    root, params, paths = workspace
    run_extract(params, root, method="hog")
    feats = np.load(root / "data" / "features" / "toy" / "hog.npy")
    local, _ = extract_rows(paths, HOG, {"curate": {"max_pixels": 1_000_000}})
    assert feats.shape == local.shape == (11, 9 * 3 * 3 * 2 * 2)
    np.testing.assert_allclose(feats, local, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    meta = json.loads((root / "data" / "features" / "toy" / "hog.json").read_text())
    assert meta["engine"] == "ray" and meta["n"] == 11 and meta["device"] == "cpu"
    assert ray_local.is_initialized()  # an instance the caller started is left running


@pytest.mark.slow
def test_an_undecodable_image_is_one_clear_line(ray_local, workspace, tmp_path):
    root, params, paths = workspace
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"no image data")
    with pytest.raises(CbirError) as caught:
        extract_with_ray(paths[:2] + [bad], params, "hog", root, np.zeros((3, 324), np.float32))
    message = str(caught.value)
    assert message.startswith(f"cannot use image {bad}: ") and "\n" not in message
    torch.set_num_threads(2)
