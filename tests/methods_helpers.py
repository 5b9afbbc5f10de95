"""Run a method config on a list of image files, as the extract stage does (for tests)."""

from __future__ import annotations

import numpy as np

from cbir.features.methods import build_method


def extract_rows(paths, method_cfg, params=None, root=".", name="m"):
    """``(features [N, D], run info)`` of ``method_cfg`` for ``paths`` (no decoding worker, no progress bar)."""
    params = {**(params or {}), "methods": {name: dict(method_cfg)}}
    method = build_method(name, params, root, n_images=len(paths))
    out = np.empty((len(paths), method.dim), dtype=np.float32)
    info = method.extract(list(paths), out, progress=False, num_workers=0)
    return out, info
