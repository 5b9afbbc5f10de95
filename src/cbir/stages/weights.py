"""Stage ``weights``: fetch a backbone's pretrained weights, verify them, store ``models/<name>.pt`` (+ ``.json``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cbir.errors import CbirError
from cbir.features.weights import prepare_weights, save_state_dict
from cbir.fileio import atomic_path, sha256_file, write_json
from cbir.layout import weights_file

log = logging.getLogger("cbir")


def run(params: dict, name: str, root: str | Path) -> None:
    """Write the backbone's weights (torchvision layout) and their provenance atomically."""
    backbones = params.get("backbones") or {}
    if name not in backbones:
        raise CbirError(f"backbone {name!r} is not in params.yaml (known: {', '.join(sorted(backbones)) or 'none'})")
    start = time.perf_counter()
    state, provenance = prepare_weights(name, dict(backbones[name]))
    out = weights_file(root, name)
    with atomic_path(out) as tmp:
        save_state_dict(state, tmp)
    provenance["file_sha256"] = sha256_file(out)
    write_json(out.with_suffix(".json"), provenance)
    log.info("weights %s: %s -> %s (%d tensors, sha256 %s) in %.1fs", name, provenance["source"], out,
             len(state), provenance["sha256"][:12], time.perf_counter() - start)


