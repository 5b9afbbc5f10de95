"""Writing a features file the way the extract stage does: the ``.npy`` and a ``.json`` sidecar with the
hashes that every reader verifies (tests that build features by hand use this)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cbir.features.store import info_path, integrity_record


def write_features(path: Path, x: np.ndarray, manifest: pd.DataFrame, **info) -> Path:
    """``np.save(path, x)`` plus the sidecar recording the manifest rows and the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    rehash(path, manifest, **info)
    return path


def rehash(path: Path, manifest: pd.DataFrame, **info) -> None:
    """Record the current ``.npy`` (as a fresh extract would), keeping the sidecar's other keys."""
    sidecar = info_path(path)
    record = json.loads(sidecar.read_text()) if sidecar.is_file() else {"n": int(len(manifest))}
    record.update(info, **integrity_record(path, manifest))
    sidecar.write_text(json.dumps(record, indent=2) + "\n")
