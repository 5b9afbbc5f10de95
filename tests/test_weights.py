"""Backbone weights: layout conversion, verification, and the weights stage's outputs and errors."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
import torchvision

from cbir.errors import CbirError
from cbir.features.cnn.backbones import load_trunk, rename_by_order, to_torchvision_layout
from cbir.features.weights import fetch_weight_bytes, prepare_weights
from cbir.stages.weights import run as run_weights
from cbir.fileio import sha256_file


def _renamed(state: dict) -> OrderedDict:
    """The same tensors under other names, as some packages deliver them."""
    return OrderedDict((f"blob{i}", v) for i, v in enumerate(state.values()))


def test_trunk_only_weights_under_other_names_land_in_torchvision_layout():
    torch.manual_seed(1)
    trunk = torchvision.models.mobilenet_v2().features.state_dict()
    converted = to_torchvision_layout("mobilenet_v2", _renamed(trunk))
    assert list(converted) == [f"features.{k}" for k in trunk]
    for (k, v) in trunk.items():
        assert torch.equal(converted[f"features.{k}"], v)
    loaded = load_trunk("mobilenet_v2", converted)
    assert torch.equal(loaded.state_dict()["0.0.weight"], trunk["0.0.weight"])


def test_full_layout_passes_through():
    state = torchvision.models.resnet18().state_dict()
    converted = to_torchvision_layout("resnet18", state)
    assert list(converted) == list(state)
    trunk = load_trunk("resnet18", converted)
    out = trunk(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 512, 2, 2)


def test_wrong_network_is_refused():
    state = torchvision.models.resnet18().state_dict()
    with pytest.raises(CbirError, match="not the same network"):
        to_torchvision_layout("mobilenet_v2", state)
    with pytest.raises(CbirError, match="shape"):
        rename_by_order({"a": torch.zeros(2)}, [("x", torch.Size([3]))])


def test_unknown_architecture():
    with pytest.raises(CbirError, match="unknown backbone architecture"):
        to_torchvision_layout("not_a_net", {})


def test_missing_trunk_tensor_is_refused():
    state = torchvision.models.resnet18().state_dict()
    state.pop("layer4.1.bn2.weight")
    with pytest.raises(CbirError, match="lack 1 trunk tensors"):
        load_trunk("resnet18", state)


def _params(cfg: dict) -> dict:
    return {"backbones": {"mobilenet_v2": cfg}}


def test_weights_stage_from_local_file(tmp_path, random_mobilenet_file):
    cfg = {"arch": "mobilenet_v2", "source": "file", "file": str(random_mobilenet_file),
           "sha256": sha256_file(random_mobilenet_file)}
    run_weights(_params(cfg), "mobilenet_v2", tmp_path)
    saved = torch.load(tmp_path / "models" / "mobilenet_v2.pt", weights_only=True)
    assert len(saved) == 312 and all(k.startswith("features.") for k in saved)
    meta = json.loads((tmp_path / "models" / "mobilenet_v2.json").read_text())
    assert meta["source"] == "file" and meta["sha256"] == cfg["sha256"] and meta["sha256_pinned"]


def test_wrong_checksum_keeps_nothing(tmp_path, random_mobilenet_file):
    cfg = {"arch": "mobilenet_v2", "source": "file", "file": str(random_mobilenet_file), "sha256": "0" * 64}
    with pytest.raises(CbirError, match="sha256 mismatch.*expected 0000.*got [0-9a-f]{64}"):
        run_weights(_params(cfg), "mobilenet_v2", tmp_path)
    assert not (tmp_path / "models" / "mobilenet_v2.pt").exists()
    assert not list((tmp_path / "models").glob("*")) if (tmp_path / "models").exists() else True


def test_missing_weight_file_names_the_fix(tmp_path):
    cfg = {"arch": "resnet50", "source": "torchvision", "file": str(tmp_path / "nope.pth")}
    with pytest.raises(CbirError, match=r"does not exist: fix backbones.resnet50.file"):
        fetch_weight_bytes("resnet50", cfg, tmp_path)


def test_not_a_weight_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("hello")
    with pytest.raises(CbirError, match="not a readable PyTorch weight file"):
        prepare_weights("m", {"arch": "mobilenet_v2", "source": "file", "file": str(bad)}, tmp_path)


def test_offline_torchvision_url_says_both_ways(tmp_path):
    cfg = {"arch": "resnet50", "source": "torchvision", "url": "http://127.0.0.1:9/resnet50-0676ba61.pth"}
    with pytest.raises(CbirError) as info:
        fetch_weight_bytes("resnet50", cfg, tmp_path)
    message = str(info.value)
    assert "resnet50 ImageNet weights are missing" in message
    assert "backbones.resnet50.url" in message and "backbones.resnet50.file=" in message
    assert "\n" not in message
