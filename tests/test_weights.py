"""Backbone weights: layout conversion, verification, and the weights stage's outputs and errors."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
import torchvision

from cbir.errors import CbirError
from cbir.features.cnn.backbones import (
    load_trunk,
    rename_by_order,
    to_torchvision_layout,
)
from cbir.features.weights import (
    expected_hash,
    fetch_weight_bytes,
    prepare_weights,
    torchvision_url,
)
from cbir.fileio import sha256_file
from cbir.stages.weights import run as run_weights


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
    cfg = {"arch": "mobilenet_v2", "source": "file", "format": "torch", "file": str(random_mobilenet_file),
           "sha256": sha256_file(random_mobilenet_file)}
    run_weights(_params(cfg), "mobilenet_v2", tmp_path)
    saved = torch.load(tmp_path / "models" / "mobilenet_v2.pt", weights_only=True)
    assert len(saved) == 312 and all(k.startswith("features.") for k in saved)
    meta = json.loads((tmp_path / "models" / "mobilenet_v2.json").read_text())
    assert meta["source"] == "file" and meta["sha256"] == cfg["sha256"] and meta["sha256_pinned"]


def test_wrong_checksum_keeps_nothing(tmp_path, random_mobilenet_file):
    cfg = {"arch": "mobilenet_v2", "source": "file", "format": "torch", "file": str(random_mobilenet_file), "sha256": "0" * 64}
    with pytest.raises(CbirError, match="sha256 mismatch.*expected 0000.*got [0-9a-f]{64}"):
        run_weights(_params(cfg), "mobilenet_v2", tmp_path)
    assert not (tmp_path / "models" / "mobilenet_v2.pt").exists()
    assert not list((tmp_path / "models").glob("*")) if (tmp_path / "models").exists() else True


def test_missing_weight_file_names_the_fix(tmp_path):
    cfg = {"arch": "resnet50", "source": "torchvision", "format": "torch", "file": str(tmp_path / "nope.pth")}
    with pytest.raises(CbirError, match=r"does not exist: fix backbones.resnet50.file"):
        fetch_weight_bytes("resnet50", cfg, tmp_path)


def test_not_a_weight_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("hello")
    with pytest.raises(CbirError, match="not a readable PyTorch weight file"):
        prepare_weights("m", {"arch": "mobilenet_v2", "source": "file", "format": "torch", "file": str(bad), "allow_unverified": True},
                        tmp_path)


def test_offline_torchvision_url_says_both_ways(tmp_path):
    cfg = {"arch": "resnet50", "source": "torchvision", "format": "torch", "url": "http://127.0.0.1:9/resnet50-0676ba61.pth"}
    with pytest.raises(CbirError) as info:
        fetch_weight_bytes("resnet50", cfg, tmp_path)
    message = str(info.value)
    assert "resnet50 ImageNet weights are missing" in message
    assert "backbones.resnet50.url" in message and "backbones.resnet50.file=" in message
    assert "\n" not in message


def _random_resnet50(path):
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def fake_v1(tmp_path_factory):
    """A randomly initialised ResNet50 saved under the name of torchvision's IMAGENET1K_V1 file."""
    return _random_resnet50(tmp_path_factory.mktemp("w") / "resnet50-0676ba61.pth")


def test_a_local_file_is_verified_like_a_download(fake_v1, tmp_path):
    cfg = {"arch": "resnet50", "source": "torchvision", "format": "torch", "weights": "IMAGENET1K_V1", "file": str(fake_v1)}
    with pytest.raises(CbirError) as info:
        prepare_weights("resnet50", cfg, tmp_path)
    message = str(info.value)
    assert "sha256 mismatch for the resnet50 weights (resnet50-0676ba61.pth)" in message
    assert "expected 0676ba61..." in message and f"got {sha256_file(fake_v1)}" in message
    assert "IMAGENET1K_V1" in message and "\n" not in message


def test_a_pinned_sha256_accepts_the_file_it_names(fake_v1, tmp_path):
    cfg = {"arch": "resnet50", "source": "torchvision", "format": "torch", "weights": "IMAGENET1K_V1", "file": str(fake_v1),
           "sha256": sha256_file(fake_v1)}
    state, provenance = prepare_weights("resnet50", cfg, tmp_path)
    assert provenance["verified"] is True and provenance["check"].startswith("pinned sha256")
    assert provenance["file"] == "resnet50-0676ba61.pth" and len(state) == 320
    with pytest.raises(CbirError, match=r"expected 0{64} \(pinned sha256"):
        prepare_weights("resnet50", {**cfg, "sha256": "0" * 64}, tmp_path)


def test_unverifiable_weights_need_the_explicit_opt_out(fake_v1, tmp_path):
    cfg = {"arch": "resnet50", "source": "file", "format": "torch", "file": str(fake_v1)}
    with pytest.raises(CbirError, match="cannot be verified.*allow_unverified=true"):
        prepare_weights("resnet50", cfg, tmp_path)
    _, provenance = prepare_weights("resnet50", {**cfg, "allow_unverified": True}, tmp_path)
    assert provenance["verified"] is False and "allow_unverified" in provenance["check"]


def test_imagenet_v2_can_be_selected_and_names_are_checked():
    v2 = {"arch": "resnet50", "source": "torchvision", "format": "torch", "weights": "IMAGENET1K_V2"}
    assert torchvision_url("resnet50", v2).endswith("/resnet50-11ad3fa6.pth")
    assert expected_hash("resnet50", v2) == ("11ad3fa6", "torchvision hash prefix 11ad3fa6 of IMAGENET1K_V2")
    assert expected_hash("resnet50", {**v2, "weights": "IMAGENET1K_V1"})[0] == "0676ba61"
    with pytest.raises(CbirError, match="not one of torchvision's resnet50 weights"):
        torchvision_url("resnet50", {**v2, "weights": "V3"})


def test_every_configured_backbone_can_be_verified(repo_root):
    """Each conf/backbone file names a pinned sha256 or a torchvision hash prefix: none relies on the opt-out."""
    import yaml

    for path in sorted((repo_root / "conf" / "backbone").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        expected, how = expected_hash(path.stem, cfg)
        assert expected and cfg.get("allow_unverified") is False, f"{path.name}: {how}"


def test_weight_files_are_written_deterministically(tmp_path, random_mobilenet_file):
    cfg = {"arch": "mobilenet_v2", "source": "file", "format": "torch", "file": str(random_mobilenet_file),
           "sha256": sha256_file(random_mobilenet_file)}
    digests = []
    for run in ("a", "b"):
        run_weights(_params(cfg), "mobilenet_v2", tmp_path / run)
        digests.append(sha256_file(tmp_path / run / "models" / "mobilenet_v2.pt"))
    assert digests[0] == digests[1]
