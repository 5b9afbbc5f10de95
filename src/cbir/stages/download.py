"""Stage ``download``: fill ``data/raw/<dataset>/`` from the configured source (+ ``_source.json``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cbir.config import dataset_config
from cbir.data.local import CopyLimits
from cbir.data.sources import fetch
from cbir.layout import Layout

log = logging.getLogger("cbir")


def run(params: dict, root: str | Path) -> dict:
    """Fetch the dataset into its raw folder; return the provenance."""
    dataset = dataset_config(params)
    paths = Layout(root, params)
    start = time.perf_counter()
    log.info("download %s: source %s -> %s", paths.dataset, dataset["source"], paths.raw_dir)
    provenance = fetch(dataset, paths.raw_dir, cache_dir=paths.downloads_dir, limits=CopyLimits.from_params(params))
    log.info("download %s: wrote %s (%s files, %s bytes) in %.1f s", paths.dataset, paths.raw_dir,
             provenance.get("n_files"), provenance.get("bytes"), time.perf_counter() - start)
    return provenance
