"""The README's generated results block: the table across datasets (methods x datasets, each dataset's own
metrics with 95% intervals: P@10 and mAP for class labels, µAP, R@P90 and mAP for copy detection; each
dataset's protocol stated under it; :mod:`cbir.report.across`), a link to each dataset's report, then a short
summary (per dataset, the best deep and the best traditional method by the dataset's first metric).

Written by ``python -m cbir readme`` (``make repro`` runs it after ``dvc repro``), never by a DVC
stage, so no stage writes an undeclared file.  The block sits between the
``<!-- results:start -->`` / ``<!-- results:end -->`` markers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from cbir.fileio import read_json, write_text
from cbir.report.across import METRICS, columns, interval
from cbir.report.across import markdown as across_markdown
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


def summary_table(root: Path, datasets: dict[str, dict], found: dict[str, dict]) -> str:
    """Per dataset, the best deep and the best traditional (handcrafted) method by the dataset's first metric
    (P@10 for class labels, µAP for copy detection), with 95% CIs."""
    lines = ["| dataset | by | best deep method | mean [95% CI] | best traditional method | mean [95% CI] |",
             "|---|---|---|---|---|---|"]
    for dataset, metrics in datasets.items():
        kinds = method_kinds(root, dataset, metrics)
        key, label = columns(found[dataset])[0]
        compact = found[dataset]["metrics"]
        cells = []
        for kind in ("deep", "handcrafted"):
            best = best_by(compact, kinds, kind, key)
            cells += [f"`{best}`", interval(compact[best], key)] if best else ["–", "–"]
        lines.append(f"| `{dataset}` | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compact_entry(entry: dict) -> dict:
    """A full metrics entry (``key`` + ``ci95.key = [lo, hi]``, a benchmark's scores under ``benchmark``) as a
    compact one (``key``, ``key_lo``, ``key_hi``); a compact entry keeps the keys of the table's columns."""
    out = {}
    if not isinstance(entry, dict):
        return out
    for key in ("p@10", "map"):
        if key in entry:
            out[key] = entry[key]
            lo_hi = (entry.get("ci95") or {}).get(key) or entry.get(f"{key}_lo") and \
                [entry.get(f"{key}_lo"), entry.get(f"{key}_hi")]
            if lo_hi:
                out[f"{key}_lo"], out[f"{key}_hi"] = lo_hi
    bench = entry.get("benchmark")
    if isinstance(bench, dict):
        out.update(bench.get("compact") or {})
    else:
        keys = {f"{k}{end}" for cols in METRICS.values() for k, _ in cols for end in ("", "_lo", "_hi")}
        out.update({k: v for k, v in entry.items() if k in keys and k not in out})
    return out


def protocol_entry(metrics: dict) -> dict:
    """``{protocol, n_queries, n_database}`` from the full metrics, with a benchmark's ``kind`` and its queries
    without a reference (``n_without_reference``)."""
    entry = next(iter(metrics.values()), {}) if metrics else {}
    n_queries, n_database = entry.get("n_queries", "?"), entry.get("n_database", "?")
    loo = isinstance(n_queries, int) and isinstance(n_database, int) and n_queries == n_database + 1
    out = {"protocol": "leave_one_out" if loo else "holdout", "n_queries": n_queries, "n_database": n_database}
    kind = (entry.get("benchmark") or {}).get("kind") if isinstance(entry.get("benchmark"), dict) else None
    if kind in METRICS:
        out.update(kind=kind, n_without_reference=entry.get("n_queries_without_relevant") or 0)
    return out


def experiment_datasets(root: Path) -> list[str]:
    """The datasets of params.yaml's experiment that have committed metrics, else every ``metrics/*.json``."""
    present = [p.stem for p in sorted((Path(root) / "metrics").glob("*.json"))]
    params_file = Path(root) / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8")) if params_file.is_file() else {}
    named = [ds for ds in ((params or {}).get("datasets") or {}) if ds in present]
    return named or present


def results_block(root: str | Path) -> str:
    """The table across the experiment's datasets (read from the committed metrics and reports only), a
    link to each dataset's report, then the best-method summary."""
    datasets = {}
    for ds in experiment_datasets(Path(root)):
        metrics = dataset_metrics(Path(root), ds)
        if metrics:
            datasets[ds] = metrics
    if not datasets:
        return "_No results yet: run `make repro`._"
    found = {ds: {"metrics": {m: compact_entry(e) for m, e in metrics.items()}, **protocol_entry(metrics)}
             for ds, metrics in datasets.items()}
    shown = "; ".join(f"`{ds}` " + ", ".join(label for _, label in columns(entry)) for ds, entry in found.items())
    blocks = [f"Across datasets, each in its own metrics ({shown}) per method (mean [95% CI]); the full tables, "
              "figures and tests are in each dataset's report ("
              + ", ".join(f"[`{ds}`](reports/{ds}/report.md)" for ds in datasets)
              + "), the same table as CSV and LaTeX in `reports/datasets.csv` / `.tex`.\n\n" + across_markdown(found)]
    blocks.append("Best per dataset: the best deep and the best traditional method by the dataset's first metric "
                  "(mean [95% CI]):\n\n" + summary_table(Path(root), datasets, found))
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
