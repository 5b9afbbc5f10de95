"""Reading a features file: ``[N, D]`` float32 rows aligned with the manifest, finite, memory-mapped,
and verified on every read against the hashes its ``.json`` sidecar recorded when it was extracted.

``<method>.json`` records ``manifest_sha256`` (every column of the manifest the features were computed
from, in row order: ids, paths, labels, splits, sizes, file hashes, protocol;
:func:`cbir.data.manifest.manifest_digest`), ``manifest_columns`` (each column's own digest, so a refusal
names what changed) and ``features_sha256`` (the ``.npy`` file itself).  :func:`read_features`, the one
reader (retrieve, evaluate, figures, ``query`` and ``serve``), refuses features whose rows were permuted
or edited, or whose manifest changed since (a row moved from the database to the queries, a label or a
path edited), in one line naming the file, the changed columns and the stage to rerun.

The extract stage writes the ``.npy`` and its ``.json`` together (:func:`cbir.fileio.atomic_group`), so a
failure between the two renames leaves the old pair.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cbir.data.manifest import changed_columns, column_digests, manifest_digest  # noqa: F401 (re-exported)
from cbir.errors import CbirError
from cbir.fileio import sha256_file

log = logging.getLogger("cbir")

#: the sidecar keys written by the extract stage and checked by :func:`read_features`
HASH_KEYS = ("manifest_sha256", "features_sha256")


def info_path(path: Path) -> Path:
    """The ``.json`` sidecar of a features file."""
    return Path(path).with_suffix(".json")


def extract_stage(path: Path, method: str) -> str:
    """The DVC stage that writes the features file ``path`` (``data/features/<ds>/<method>.npy``: every method of
    the dataset is one stage, ``extract@<ds>``)."""
    return f"extract@{Path(path).parent.name}"


def integrity_record(path: Path, manifest: pd.DataFrame) -> dict:
    """``{manifest_sha256, manifest_columns, features_sha256}`` of the features file at ``path``, computed
    from ``manifest`` (what the extract stage adds to the sidecar)."""
    columns = column_digests(manifest)
    return {"manifest_sha256": manifest_digest(manifest, columns), "manifest_columns": columns,
            "features_sha256": sha256_file(path)}


def recorded_hashes(path: Path, method: str) -> dict:
    """The hashes the sidecar of ``path`` recorded; a missing or older sidecar is one clear error."""
    info = info_path(path)
    rerun = f"run `dvc repro {extract_stage(path, method)}` (add -f -s if DVC sees no change)"
    try:
        record = json.loads(info.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CbirError(f"features {path} have no {info.name} beside them: {rerun}") from None
    except (OSError, ValueError) as exc:
        raise CbirError(f"cannot read {info} ({type(exc).__name__}): {rerun}") from None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in HASH_KEYS):
        raise CbirError(f"{info} records no integrity hashes (written by an older extract): {rerun}")
    return {**{k: record[k] for k in HASH_KEYS}, "manifest_columns": record.get("manifest_columns")}


def verify_features(path: Path, method: str, manifest: pd.DataFrame) -> str:
    """Check the features file at ``path`` against its sidecar and ``manifest``; returns its sha256."""
    path = Path(path)
    recorded = recorded_hashes(path, method)
    rerun = f"run `dvc repro {extract_stage(path, method)}` (add -f -s if DVC sees no change)"
    if manifest_digest(manifest) != recorded["manifest_sha256"]:
        changed = changed_columns(recorded["manifest_columns"], manifest)
        raise CbirError(f"{path} was computed from another manifest than the one now there (column(s) "
                        f"{', '.join(changed) or 'order'} changed since extract: lines swapped, moved between "
                        f"splits or edited): {rerun}")
    actual = sha256_file(path)
    if actual != recorded["features_sha256"]:
        raise CbirError(f"{path} does not match {info_path(path).name} (rows permuted or edited): {rerun}")
    return actual


def read_features(path: Path, method: str, manifest: pd.DataFrame) -> np.ndarray:
    """Feature matrix of ``method`` at ``path``, checked against ``manifest`` (row count, then the rows
    it was computed from) and against its own recorded hash (memory-mapped)."""
    path = Path(path)
    n_rows = len(manifest)
    if not path.is_file():
        raise CbirError(f"features for method {method!r} not found at {path}: build them with "
                        f"`dvc repro {extract_stage(path, method)}`")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CbirError(f"cannot read features {path} ({exc}): re-run `dvc repro {extract_stage(path, method)}`") from None
    if features.ndim != 2:
        raise CbirError(f"features {path} have shape {features.shape}, expected [N, D]: "
                        f"re-run `dvc repro {extract_stage(path, method)}`")
    if features.shape[0] != n_rows:
        raise CbirError(f"features {path} have {features.shape[0]} rows but the manifest has {n_rows}: "
                        f"re-run `dvc repro {extract_stage(path, method)}` after curate")
    verify_features(path, method, manifest)
    features = np.asarray(features, dtype=np.float32)
    if not all_finite(features):
        raise CbirError(f"features {path} contain NaN or infinite values: "
                        f"re-run `dvc repro {extract_stage(path, method)}`")
    log.info("read %s %s (hashes verified)", path, features.shape)
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
