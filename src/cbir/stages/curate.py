"""Stage ``curate``: decode, clean and split the raw dataset into ``manifest.csv`` and ``curation.json``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from cbir.config import dataset_config
from cbir.data.benchmarks import JUDGEMENTS_FILE
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
    judgements = report.pop("judgements", None)  # benchmarks' per-query relevance, beside the manifest
    documents = {paths.manifest: None, paths.curation: report}
    if judgements is not None:
        documents[paths.curated_dir / JUDGEMENTS_FILE] = judgements
    with atomic_group(list(documents)) as temps:  # replaced together, or not at all
        for (target, data), tmp in zip(documents.items(), temps):
            if data is None:
                manifest.to_csv(tmp, index=False)
            else:
                tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    if judgements is None and (paths.curated_dir / JUDGEMENTS_FILE).exists():
        (paths.curated_dir / JUDGEMENTS_FILE).unlink()
    log.info("curate %s: wrote %s (%d rows: %d query, %d database) and %s in %.1f s", paths.dataset,
             paths.manifest, len(manifest), report["split"]["n_query"], report["split"]["n_database"],
             paths.curation, time.perf_counter() - start)
    return manifest, report
