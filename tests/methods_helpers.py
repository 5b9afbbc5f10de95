"""Run a method config on a list of image files, as the extract stage does; real images and deep-method
params for the runtime tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from cbir.data.images import MAX_PIXELS
from cbir.features.methods import build_method

REPO = Path(__file__).resolve().parents[1]
#: the sections building a method reads beyond its own config; their values default to conf/'s
SHARED = ("device", "download", "curate", "extract")


def with_defaults(params: dict) -> dict:
    """``params`` over the composed ``params.yaml``'s shared sections (conf/ holds every default), each
    section merged key by key, so a test names only the values it is about."""
    base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    merged = dict(params)
    for key in SHARED:
        if isinstance(base[key], dict):
            merged[key] = {**base[key], **(params.get(key) or {})}
        else:
            merged.setdefault(key, base[key])
    return merged


def from_conf(option: str, **values) -> dict:
    """``conf/<option>.yaml`` (e.g. ``dataset/synthetic``: every key its code reads) with ``values`` over it."""
    return {**yaml.safe_load((REPO / "conf" / f"{option}.yaml").read_text(encoding="utf-8")), **values}


def extract_rows(paths, method_cfg, params=None, root=".", name="m"):
    """``(features [N, D], run info)`` of ``method_cfg`` for ``paths`` (no decoding worker, no progress bar)."""
    params = with_defaults({**(params or {}), "methods": {name: dict(method_cfg)}})
    method = build_method(name, params, root, n_images=len(paths))
    out = np.empty((len(paths), method.dim), dtype=np.float32)
    info = method.extract(list(paths), out, progress=False, num_workers=0)
    return out, info


STAMPS = Path("/usr/share/tuxpaint/stamps")


def real_images(n: int = 12) -> list[Path]:
    """Real photographs and drawings: the Tux Paint stamps (Debian tuxpaint-stamps-default), sorted, spread."""
    found = sorted(STAMPS.rglob("*.png")) if STAMPS.is_dir() else []
    assert len(found) >= n, "the Tux Paint stamps are not installed: run `make setup` (tuxpaint-stamps-default)"
    return found[:: len(found) // n][:n]


def params_for(weights, runtime="openvino", precision="fp32", image_size=96):
    return with_defaults({
        "device": "cpu",
        "curate": {"max_pixels": MAX_PIXELS},
        "extract": {"compile": False, "runtime": runtime, "precision": precision},
        "backbones": {"mobilenet_v2": {"arch": "mobilenet_v2", "source": "file", "format": "torch", "file": str(weights),
                                       "allow_unverified": True,  # a random network: nothing to verify
                                       "image_size": image_size, "batch_size": 5}},
    })
