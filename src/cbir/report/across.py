"""The table across datasets: methods x datasets, P@10 and mAP with 95% intervals, each dataset's protocol
(queries, database size) stated under it.

Stage ``across`` (one for the experiment, after every dataset's evaluate) writes ``reports/datasets.md``,
``reports/datasets.csv`` and ``reports/datasets.tex`` from the compact ``metrics/<ds>.json`` of each dataset of
params.yaml and its manifest; the README's results block shows the same Markdown (:mod:`cbir.report.readme`).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Mapping

from cbir.config import dataset_names, select_dataset
from cbir.data.manifest import read_manifest, split_indices
from cbir.errors import CbirError
from cbir.fileio import read_json, write_text
from cbir.layout import Layout, across_files

log = logging.getLogger("cbir")
METRICS = (("p@10", "P@10"), ("map", "mAP"))


def _number(value) -> str:
    return "–" if value is None else f"{float(value):.3f}"


def interval(entry: Mapping, key: str) -> str:
    """``mean [lo, hi]`` from a compact metrics entry (``key``, ``key_lo``, ``key_hi``)."""
    if not isinstance(entry, Mapping) or entry.get(key) is None:
        return "–"
    lo, hi = entry.get(f"{key}_lo"), entry.get(f"{key}_hi")
    return _number(entry[key]) + (f" [{_number(lo)}, {_number(hi)}]" if lo is not None and hi is not None else "")


def protocol_of(manifest_file: Path) -> dict:
    """``{protocol, n_queries, n_database}`` of a curated manifest (what evaluate searched)."""
    manifest = read_manifest(manifest_file)
    queries, database, _ = split_indices(manifest)
    protocol = str(manifest["protocol"].iloc[0]) if len(manifest) else "?"
    return {"protocol": protocol, "n_queries": int(len(queries)), "n_database": int(len(database))}


def collect(root: Path, params: Mapping) -> dict[str, dict]:
    """Per dataset of params.yaml: ``{metrics: {method: compact entry}, protocol...}``."""
    found = {}
    for ds in dataset_names(params):
        paths = Layout(root, select_dataset(params, ds))
        if not paths.compact_metrics.is_file():
            raise CbirError(f"{paths.compact_metrics} not found: run `dvc repro summarize@{ds}` first")
        if not paths.manifest.is_file():
            raise CbirError(f"{paths.manifest} not found: run `dvc repro curate@{ds}` first")
        found[ds] = {"metrics": read_json(paths.compact_metrics), **protocol_of(paths.manifest)}
    return found


def _methods(found: Mapping[str, dict]) -> list[str]:
    methods: list[str] = []
    for entry in found.values():
        methods += [m for m in entry["metrics"] if m not in methods]
    return methods


def protocol_line(ds: str, entry: Mapping) -> str:
    name = {"leave_one_out": "leave-one-out (every image queries the others)",
            "holdout": "held-out queries"}.get(entry.get("protocol"), str(entry.get("protocol")))
    return f"`{ds}`: {name}, {entry.get('n_queries')} queries against {entry.get('n_database')} database images"


def markdown(found: Mapping[str, dict]) -> str:
    datasets = list(found)
    head = "| method | " + " | ".join(f"{ds} {label}" for ds in datasets for _, label in METRICS) + " |"
    lines = [head, "|---|" + "---|" * (2 * len(datasets))]
    for method in _methods(found):
        cells = [interval(found[ds]["metrics"].get(method) or {}, key) for ds in datasets for key, _ in METRICS]
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    notes = ["", "Mean over queries [95% percentile bootstrap interval]; per dataset:", ""]
    notes += [f"- {protocol_line(ds, found[ds])}" for ds in datasets]
    return "\n".join(lines + notes)


def csv_text(found: Mapping[str, dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "dataset", "protocol", "n_queries", "n_database",
                     "p@10", "p@10_lo", "p@10_hi", "map", "map_lo", "map_hi"])
    for method in _methods(found):
        for ds, entry in found.items():
            m = entry["metrics"].get(method)
            if not m:
                continue
            writer.writerow([method, ds, entry["protocol"], entry["n_queries"], entry["n_database"],
                             *(m.get(k) for k in ("p@10", "p@10_lo", "p@10_hi", "map", "map_lo", "map_hi"))])
    return out.getvalue()


def _tex(text: str) -> str:
    return str(text).replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")


def latex(found: Mapping[str, dict]) -> str:
    datasets = list(found)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "cc" * len(datasets) + "}",
             r"\toprule",
             " & " + " & ".join(rf"\multicolumn{{2}}{{c}}{{{_tex(ds)}}}" for ds in datasets) + r" \\",
             "Method & " + " & ".join(label for _ in datasets for _, label in METRICS) + r" \\", r"\midrule"]
    for method in _methods(found):
        cells = [interval(found[ds]["metrics"].get(method) or {}, key) for ds in datasets for key, _ in METRICS]
        lines.append(_tex(method) + " & " + " & ".join(cells) + r" \\")
    protocols = "; ".join(_tex(protocol_line(ds, found[ds]).replace("`", "")) for ds in datasets)
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{P@10 and mAP per method and dataset, mean [95\% bootstrap interval]. {protocols}.}}",
              r"\label{tab:across-datasets}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def run(params: dict, root: str | Path) -> None:
    """Stage ``across``: ``reports/datasets.{md,csv,tex}`` for the experiment's datasets."""
    root = Path(root)
    found = collect(root, params)
    files = across_files(root)
    write_text(files["md"], "# Results across datasets\n\n" + markdown(found) + "\n")
    write_text(files["csv"], csv_text(found))
    write_text(files["tex"], latex(found))
    log.info("across: %d datasets x %d methods -> %s (+ .csv, .tex)", len(found), len(_methods(found)), files["md"])
