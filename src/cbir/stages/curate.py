"""Stage ``curate``: decode, clean and split the raw dataset into ``manifest.csv`` and ``curation.json``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cbir.config import dataset_config
from cbir.data.benchmarks import JUDGEMENTS_FILE
from cbir.data.curate import curate
from cbir.fileio import atomic_path, write_json
from cbir.layout import Layout

log = logging.getLogger("cbir")


def run(params: dict, root: str | Path) -> tuple:
    """Write the manifest and the curation report; return ``(manifest, report)``."""
    dataset = dataset_config(params)
    paths = Layout(root, params)
    start = time.perf_counter()
    log.info("curate %s: reading %s", paths.dataset, paths.raw_dir)
    manifest, report = curate(paths.raw_dir, dataset, params.get("curate") or {}, params.get("split") or {},
                              Path(root))
    judgements = report.pop("judgements", None)  # benchmarks' per-query relevance, beside the manifest
    with atomic_path(paths.manifest) as tmp:
        manifest.to_csv(tmp, index=False)
    write_json(paths.curation, report)
    if judgements is not None:
        write_json(paths.curated_dir / JUDGEMENTS_FILE, judgements)
    elif (paths.curated_dir / JUDGEMENTS_FILE).exists():
        (paths.curated_dir / JUDGEMENTS_FILE).unlink()
    log.info("curate %s: wrote %s (%d rows: %d query, %d database) and %s in %.1f s", paths.dataset,
             paths.manifest, len(manifest), report["split"]["n_query"], report["split"]["n_database"],
             paths.curation, time.perf_counter() - start)
    return manifest, report
