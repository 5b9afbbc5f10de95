"""Run a method config on a list of image files, as the extract stage does; real images and deep-method
params for the runtime tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbir.features.methods import build_method


def extract_rows(paths, method_cfg, params=None, root=".", name="m"):
    """``(features [N, D], run info)`` of ``method_cfg`` for ``paths`` (no decoding worker, no progress bar)."""
    params = {**(params or {}), "methods": {name: dict(method_cfg)}}
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
    return {
        "device": "cpu",
        "curate": {"max_pixels": 40_000_000},
        "extract": {"compile": False, "runtime": runtime, "precision": precision},
        "backbones": {"mobilenet_v2": {"arch": "mobilenet_v2", "source": "file", "file": str(weights),
                                       "allow_unverified": True,  # a random network: nothing to verify
                                       "image_size": image_size, "batch_size": 5}},
    }
