"""Reading a features file: ``[N, D]`` float32 rows aligned with the manifest, finite, memory-mapped."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cbir.errors import CbirError

log = logging.getLogger("cbir")

def read_features(path: Path, method: str, n_rows: int) -> np.ndarray:
    """Feature matrix of ``method`` at ``path``, checked against the manifest's row count (memory-mapped)."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(f"features not found at {path}: run `dvc repro extract@{method}` first")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise CbirError(f"cannot read features {path} ({exc}): re-run `dvc repro extract@{method}`") from exc
    if features.ndim != 2:
        raise CbirError(f"features {path} have shape {features.shape}, expected [N, D]: "
                        f"re-run `dvc repro extract@{method}`")
    if features.shape[0] != n_rows:
        raise CbirError(f"features {path} have {features.shape[0]} rows but the manifest has {n_rows}: "
                        f"re-run `dvc repro extract@{method}` after curate")
    features = np.asarray(features, dtype=np.float32)
    if not all_finite(features):
        raise CbirError(f"features {path} contain NaN or infinite values: "
                        f"re-run `dvc repro extract@{method}`")
    log.info("read %s %s", path, features.shape)
    return features


def all_finite(x: np.ndarray, rows: int = 65536) -> bool:
    """``np.isfinite(x).all()`` a block of rows at a time (no full-size boolean copy of a large memmap)."""
    return all(np.isfinite(x[i:i + rows]).all() for i in range(0, x.shape[0], rows))


def select_rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``features[rows]``; a view (no copy of a memory-mapped file) when ``rows`` is one ascending run."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        return features[rows[0]:rows[-1] + 1]
    return features[rows]
