"""Stage ``curate``: decode, clean and split the raw dataset into ``manifest.csv`` and ``curation.json``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from cbir.config import dataset_config
from cbir.data.curate import curate
from cbir.fileio import atomic_group
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
    with atomic_group([paths.manifest, paths.curation]) as (manifest_tmp, curation_tmp):  # replaced together
        manifest.to_csv(manifest_tmp, index=False)
        curation_tmp.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    log.info("curate %s: wrote %s (%d rows: %d query, %d database) and %s in %.1f s", paths.dataset,
             paths.manifest, len(manifest), report["split"]["n_query"], report["split"]["n_database"],
             paths.curation, time.perf_counter() - start)
    return manifest, report
