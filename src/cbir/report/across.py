"""The table across datasets: methods x datasets, each dataset in its own metrics with 95% intervals (P@10
and mAP for class labels; µAP, recall at precision 0.9 and mAP for copy detection; the headline scores of
the other benchmarks), each dataset's protocol (queries, database size, relevance, metrics) stated under it.

Stage ``across`` (one for the experiment, after every dataset's evaluate) writes ``reports/datasets.md``,
``reports/datasets.csv`` and ``reports/datasets.tex`` from the compact ``metrics/<ds>.json`` of each dataset of
params.yaml, its manifest and, for a benchmark, the kind and query count of its ``judgements.json``; the
README's results block shows the same Markdown (:mod:`cbir.report.readme`).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Mapping

import pandas as pd

from cbir.config import dataset_names, select_dataset
from cbir.data.manifest import read_manifest, split_indices
from cbir.errors import CbirError
from cbir.fileio import read_json, write_text
from cbir.layout import Layout, across_files
from cbir.report.tables import to_latex
from cbir.report.headline import METRICS  # the columns of a dataset, by its kind (None: class labels)

log = logging.getLogger("cbir")
#: written by the curate stage beside a benchmark's manifest (:mod:`cbir.data.benchmarks`)
JUDGEMENTS = "judgements.json"


def _number(value) -> str:
    return "–" if value is None else f"{float(value):.3f}"


def interval(entry: Mapping, key: str) -> str:
    """``mean [lo, hi]`` from a compact metrics entry (``key``, ``key_lo``, ``key_hi``)."""
    if not isinstance(entry, Mapping) or entry.get(key) is None:
        return "–"
    lo, hi = entry.get(f"{key}_lo"), entry.get(f"{key}_hi")
    return _number(entry[key]) + (f" [{_number(lo)}, {_number(hi)}]" if lo is not None and hi is not None else "")


def columns(entry: Mapping) -> tuple:
    """``(compact key, header)`` of a dataset's columns (its ``kind``)."""
    return METRICS.get(entry.get("kind"), METRICS[None])


def protocol_of(manifest_file: Path) -> dict:
    """``{protocol, n_queries, n_database}`` of a curated manifest (what evaluate searched), with ``kind`` and
    ``n_without_reference`` (queries without a relevant database image) when a ``judgements.json`` is beside it."""
    manifest = read_manifest(manifest_file)
    queries, database, _ = split_indices(manifest)
    protocol = str(manifest["protocol"].iloc[0]) if len(manifest) else "?"
    out = {"protocol": protocol, "n_queries": int(len(queries)), "n_database": int(len(database))}
    judgements = Path(manifest_file).parent / JUDGEMENTS
    if judgements.is_file():
        try:
            spec = read_json(judgements)
        except (OSError, ValueError):
            spec = None
        entries = spec.get("queries") if isinstance(spec, Mapping) else None
        if (not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries)
                or spec.get("kind") not in METRICS or spec.get("kind") is None):
            raise CbirError(f"{judgements} is not a judgements file; run `dvc repro curate@{manifest_file.parent.name}`")
        out.update(kind=spec["kind"], n_without_reference=sum(1 for e in entries if not e.get("positives")))
    return out


def collect(root: Path, params: Mapping) -> dict[str, dict]:
    """Per dataset of params.yaml: ``{metrics: {method: compact entry}, protocol...}``."""
    found = {}
    for ds in dataset_names(params):
        paths = Layout(root, select_dataset(params, ds))
        if not paths.compact_metrics.is_file():
            raise CbirError(f"{paths.compact_metrics} not found: run `dvc repro evaluate@{ds}` first")
        if not paths.manifest.is_file():
            raise CbirError(f"{paths.manifest} not found: run `dvc repro curate@{ds}` first")
        found[ds] = {"metrics": read_json(paths.compact_metrics), **protocol_of(paths.manifest)}
    return found


def _methods(found: Mapping[str, dict]) -> list[str]:
    methods: list[str] = []
    for entry in found.values():
        methods += [m for m in entry["metrics"] if m not in methods]
    return methods


#: what each kind of dataset is scored against, and how
SCORING = {None: "relevant = same class; P@10, mAP",
           "pairs": "copy detection: relevant = the image a query was made from; µAP and R@P90 (recall at "
                    "precision 0.9) over the (query, top-k) pairs of all queries pooled by score, mAP over the "
                    "queries with a reference",
           "revisitop": "revisitop's Medium and Hard protocols, trapezoidal AP",
           "ukbench": "the same object's 4 images; N-S (0–4, the query counted), mAP",
           "groups": "the same group, the query itself ignored; mAP"}


def protocol_line(ds: str, entry: Mapping) -> str:
    """``ds``: queries, database size and the scoring of one dataset."""
    kind = entry.get("kind")
    if kind:
        absent = entry.get("n_without_reference")
        queries = (f"{entry.get('n_queries')} benchmark queries"
                   + (f" ({absent} without a reference in the database)" if absent else ""))
    else:
        name = {"leave_one_out": "leave-one-out (every image queries the others)",
                "holdout": "held-out queries"}.get(entry.get("protocol"), str(entry.get("protocol")))
        queries = f"{name}, {entry.get('n_queries')} queries"
    return f"`{ds}`: {queries} against {entry.get('n_database')} database images; {SCORING.get(kind, SCORING[None])}"


def markdown(found: Mapping[str, dict]) -> str:
    datasets = list(found)
    head = "| method | " + " | ".join(f"{ds} {label}" for ds in datasets for _, label in columns(found[ds])) + " |"
    lines = [head, "|---|" + "---|" * sum(len(columns(found[ds])) for ds in datasets)]
    for method in _methods(found):
        cells = [interval(found[ds]["metrics"].get(method) or {}, key) for ds in datasets
                 for key, _ in columns(found[ds])]
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    notes = ["", "Mean over queries [95% percentile bootstrap interval]; per dataset:", ""]
    notes += [f"- {protocol_line(ds, found[ds])}" for ds in datasets]
    return "\n".join(lines + notes)


def csv_text(found: Mapping[str, dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "dataset", "protocol", "n_queries", "n_database", "metric", "mean", "lo", "hi"])
    for method in _methods(found):
        for ds, entry in found.items():
            m = entry["metrics"].get(method)
            if not m:
                continue
            protocol = f"benchmark:{entry['kind']}" if entry.get("kind") else entry["protocol"]
            for key, _ in columns(entry):
                if m.get(key) is not None:
                    writer.writerow([method, ds, protocol, entry["n_queries"], entry["n_database"], key,
                                     m[key], m.get(f"{key}_lo"), m.get(f"{key}_hi")])
    return out.getvalue()


def _tex(text: str) -> str:
    return str(text).replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")


def latex(found: Mapping[str, dict]) -> str:
    """``reports/datasets.tex``: each dataset a column group, its metrics' means with the interval on a second
    line; wider than ``\\textwidth`` by the width model (:func:`cbir.report.tables.to_latex`): one block of
    whole dataset groups after another."""
    datasets = list(found)
    display = pd.DataFrame({"Method": _methods(found)})
    headers, groups = ["Method"], [None]
    for ds in datasets:
        for key, label in columns(found[ds]):
            cells = []
            for method in display["Method"]:
                entry = found[ds]["metrics"].get(method) or {}
                lo, hi = entry.get(f"{key}_lo"), entry.get(f"{key}_hi")
                text = _number(entry.get(key))
                cells.append(text + (f"\n[{_number(lo)}, {_number(hi)}]" if lo is not None and hi is not None
                                     and entry.get(key) is not None else ""))
            display[f"{ds}\t{key}"] = cells
            headers.append(label.replace("µ", r"$\mu$"))
            groups.append(_tex(ds))
    protocols = ". ".join(_tex(protocol_line(ds, found[ds]).replace("`", "")) for ds in datasets)
    caption = f"Each dataset's metrics per method, mean with its 95\\% bootstrap interval below. {protocols}."
    return to_latex(display, caption, "tab:across-datasets", headers=headers, groups=groups)


def write_across(params: dict, root: str | Path) -> None:
    """``reports/datasets.{md,csv,tex}`` for the experiment's datasets (stage ``across``)."""
    root = Path(root)
    found = collect(root, params)
    files = across_files(root)
    write_text(files["md"], "# Results across datasets\n\n" + markdown(found) + "\n")
    write_text(files["csv"], csv_text(found))
    write_text(files["tex"], latex(found))
    log.info("across: %d datasets x %d methods -> %s (+ .csv, .tex)", len(found), len(_methods(found)), files["md"])
