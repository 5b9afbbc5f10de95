"""The ``download`` and ``curate`` stages: thin shells that read params, call the pure code, write outputs.

Paths (relative to ``root``):

* ``data/raw/<dataset.name>/``            the collection as delivered + ``_source.json`` (provenance)
* ``data/downloads/``                     resumable download cache (archives, ``*.part``)
* ``data/curated/<dataset.name>/manifest.csv`` and ``curation.json``
  (Fashion-MNIST also writes ``data/curated/<name>/images/``)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cbir.data.curate import curate
from cbir.data.sources import fetch
from cbir.errors import CbirError
from cbir.fileio import atomic_path, write_json

log = logging.getLogger("cbir")


def _dataset(params: dict) -> tuple[dict, str]:
    dataset = params.get("dataset") or {}
    name = dataset.get("name")
    if not name or not dataset.get("source"):
        raise CbirError("params.yaml: dataset.name and dataset.source are required (pick one of conf/dataset/*.yaml)")
    if "/" in str(name) or str(name).startswith("."):
        raise CbirError(f"dataset.name={name!r} must be a plain folder name")
    return dict(dataset), str(name)


def raw_dir(root: Path, name: str) -> Path:
    return Path(root) / "data" / "raw" / name


def curated_dir(root: Path, name: str) -> Path:
    return Path(root) / "data" / "curated" / name


def run_download(params: dict, root: str | Path) -> dict:
    """Fill ``data/raw/<name>/`` from the configured source; return the provenance."""
    root = Path(root)
    dataset, name = _dataset(params)
    target = raw_dir(root, name)
    start = time.perf_counter()
    log.info("download %s: source %s -> %s", name, dataset["source"], target)
    provenance = fetch(dataset, target, cache_dir=root / "data" / "downloads")
    log.info("download %s: wrote %s (%s files, %s bytes) in %.1f s", name, target, provenance.get("n_files"),
             provenance.get("bytes"), time.perf_counter() - start)
    return provenance


def run_curate(params: dict, root: str | Path) -> tuple:
    """Write ``data/curated/<name>/manifest.csv`` and ``curation.json``; return ``(manifest, report)``."""
    root = Path(root)
    dataset, name = _dataset(params)
    source_dir = raw_dir(root, name)
    out_dir = curated_dir(root, name)
    start = time.perf_counter()
    log.info("curate %s: reading %s", name, source_dir)
    manifest, report = curate(source_dir, dataset, params.get("curate") or {}, params.get("split") or {}, root)
    with atomic_path(out_dir / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False)
    write_json(out_dir / "curation.json", report)
    log.info("curate %s: wrote %s (%d rows: %d query, %d database) and %s in %.1f s", name,
             out_dir / "manifest.csv", len(manifest), report["split"]["n_query"], report["split"]["n_database"],
             out_dir / "curation.json", time.perf_counter() - start)
    return manifest, report
