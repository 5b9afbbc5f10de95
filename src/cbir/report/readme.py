"""The README's generated results block: one table per dataset present in ``metrics/``, then a short
cross-dataset summary (per dataset, the best deep and the best traditional method by P@10).

Written by ``python -m cbir readme`` (``make repro`` runs it after ``dvc repro``), never by a DVC
stage, so no stage writes an undeclared file.  The block sits between the
``<!-- results:start -->`` / ``<!-- results:end -->`` markers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from cbir.fileio import read_json, write_text
from cbir.report.markdown import cell, metrics_table
from cbir.report.tables import best_by

log = logging.getLogger("cbir")
START, END = "<!-- results:start -->", "<!-- results:end -->"


def dataset_context(dataset: str, metrics: dict) -> str:
    """One line of context for a dataset's table, from committed files only (a fresh clone writes the same):
    the query and database counts of its metrics; every image querying the others is leave-one-out."""
    entry = next(iter(metrics.values()), {}) if metrics else {}
    n_queries, n_database = entry.get("n_queries"), entry.get("n_database")
    if not isinstance(n_queries, int) or not isinstance(n_database, int):
        return f"Dataset `{dataset}` (mean [95% CI]):"
    protocol = "leave-one-out" if n_queries == n_database + 1 else "held-out queries"
    return (f"Dataset `{dataset}`, {protocol}: {n_queries} queries against {n_database} database images "
            "(mean [95% CI]):")


def dataset_metrics(root: Path, dataset: str) -> dict:
    """The full metrics of a dataset (``reports/<ds>/metrics.json``), else its compact DVC metrics file."""
    full = Path(root) / "reports" / dataset / "metrics.json"
    metrics = read_json(full if full.is_file() else Path(root) / "metrics" / f"{dataset}.json")
    return metrics if isinstance(metrics, dict) else {}


def method_kinds(root: Path, dataset: str, metrics: dict) -> dict[str, str]:
    """``deep``/``handcrafted``/… of each method: ``data/features/<ds>/<m>.json`` ``config.kind`` when present,
    else the ``kind`` the evaluate stage recorded, else ``params.yaml``'s method config."""
    params_file = Path(root) / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8")) if params_file.is_file() else {}
    declared = (params or {}).get("methods") or {}
    kinds = {}
    for method, entry in metrics.items():
        info = Path(root) / "data" / "features" / dataset / f"{method}.json"
        kind = ((read_json(info).get("config") or {}).get("kind") if info.is_file() else None) \
            or (entry.get("kind") if isinstance(entry, dict) else None) or (declared.get(method) or {}).get("kind")
        kinds[method] = str(kind or "")
    return kinds


def summary_table(root: Path, datasets: dict[str, dict]) -> str:
    """Per dataset, the best deep and the best traditional (handcrafted) method by P@10, with 95% CIs."""
    lines = ["| dataset | best deep method | P@10 [95% CI] | best traditional method | P@10 [95% CI] |",
             "|---|---|---|---|---|"]
    for dataset, metrics in datasets.items():
        kinds = method_kinds(root, dataset, metrics)
        cells = []
        for kind in ("deep", "handcrafted"):
            best = best_by(metrics, kinds, kind)
            cells += [f"`{best}`", cell(metrics[best], "p@10")] if best else ["–", "–"]
        lines.append(f"| `{dataset}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_block(root: str | Path) -> str:
    """One results table per dataset in ``root/metrics/`` (read from the committed metrics and reports
    only), then the cross-dataset summary."""
    blocks, datasets = [], {}
    for path in sorted((Path(root) / "metrics").glob("*.json")):
        metrics = dataset_metrics(Path(root), path.stem)
        if metrics:
            datasets[path.stem] = metrics
            blocks.append(f"{dataset_context(path.stem, metrics)}\n\n{metrics_table(metrics)}")
    if not blocks:
        return "_No results yet: run `make repro`._"
    blocks.append("Across datasets: the best deep and the best traditional method by P@10 (mean [95% CI]):\n\n"
                  + summary_table(Path(root), datasets))
    return "\n\n".join(blocks)


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
