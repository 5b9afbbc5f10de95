"""The README's generated results block: one table per dataset present in ``metrics/``.

Written by ``python -m cbir readme`` (``make repro`` runs it after ``dvc repro``), never by a DVC
stage, so no stage writes an undeclared file.  The block sits between the
``<!-- results:start -->`` / ``<!-- results:end -->`` markers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cbir.fileio import read_json, write_text
from cbir.report.markdown import metrics_table

log = logging.getLogger("cbir")
START, END = "<!-- results:start -->", "<!-- results:end -->"


def dataset_context(root: Path, dataset: str) -> str:
    """One line of context for a dataset's table, from its curation report when present."""
    curation = Path(root) / "data" / "curated" / dataset / "curation.json"
    if not curation.is_file():
        return f"Dataset `{dataset}` (mean [95% CI]):"
    split = read_json(curation).get("split") or {}
    return (f"Dataset `{dataset}`, {split.get('protocol')} protocol, {split.get('n_query')} queries against "
            f"{split.get('n_database')} database images (mean [95% CI]):")


def results_block(root: str | Path) -> str:
    """One results table per dataset in ``root/metrics/``, read from the metrics files only."""
    blocks = []
    for path in sorted((Path(root) / "metrics").glob("*.json")):
        metrics = read_json(path)
        if isinstance(metrics, dict) and metrics:
            blocks.append(f"{dataset_context(root, path.stem)}\n\n{metrics_table(metrics)}")
    return "\n\n".join(blocks) or "_No results yet: run `make repro`._"


def update_readme(readme: Path, table: str) -> bool:
    """Replace the text between the results markers; returns whether README changed."""
    if not readme.exists():
        return False
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        return False
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    new = f"{before}{START}\n{table}\n{END}{after}"
    if new != text:
        mode = readme.stat().st_mode & 0o777
        write_text(readme, new)
        readme.chmod(mode)  # the temporary file was private; keep README's own permissions
    return new != text


def write_readme_results(root: str | Path) -> bool:
    """Regenerate the README's results block from ``metrics/``; returns whether README changed."""
    readme = Path(root) / "README.md"
    changed = update_readme(readme, results_block(root))
    log.info("readme: %s the results block of %s", "rewrote" if changed else "kept", readme)
    return changed
