"""``cbir compare``: every experiment x dataset x method, one metric at a time, on one screen.

Reads ``dvc exp show --json`` (the compact ``metrics/<ds>.json`` of the workspace, the baseline commit and
every experiment) and prints one row per experiment and dataset, one column per method, each row naming its
experiment (``workspace``, the branch or commit, or the experiment's name).  Methods are lettered in the
text table (the legend under it names them) so 10 methods x 2 datasets x several experiments fit 120
columns; the CSV and LaTeX forms carry the full method names.
"""

from __future__ import annotations

import csv
import io
import json
import string
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from cbir.errors import CbirError

METRICS = ("map", "p@10")
WIDTH = 120


def exp_show_json(root: Path) -> list:
    """``dvc exp show --json`` of ``root`` (workspace, baseline commit, experiments)."""
    try:
        done = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "--no-pager"], cwd=root,
                              capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CbirError(f"cannot run dvc exp show ({exc})") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise CbirError(f"dvc exp show failed: {last}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise CbirError("dvc exp show --json did not print JSON") from None


def _revisions(nodes: Iterable, parent: str | None = None) -> Iterable[tuple[str, dict]]:
    """``(experiment name, data)`` of every revision in ``dvc exp show --json``, in its order."""
    for node in nodes or []:
        if not isinstance(node, dict):
            continue
        if "revs" in node:  # an experiment: {name, revs: [...]}
            yield from _revisions(node["revs"], node.get("name"))
            continue
        data = node.get("data") or {}
        rev = str(node.get("rev") or "")
        name = node.get("name") or parent or (rev if rev == "workspace" else rev[:7]) or "?"
        if data:
            yield str(name), data
        yield from _revisions(node.get("experiments") or [], None)


def collect(exp_json: list, metric: str) -> tuple[list[dict], list[str]]:
    """Rows ``{experiment, dataset, <method>: value}`` and the methods in first-seen order."""
    if metric not in METRICS:
        raise CbirError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    rows, methods, seen = [], [], set()
    for name, data in _revisions(exp_json):
        for path, entry in sorted((data.get("metrics") or {}).items()):
            values = (entry or {}).get("data") or {}
            if not path.startswith("metrics/") or not isinstance(values, dict):
                continue
            dataset = Path(path).stem
            row = {"experiment": name, "dataset": dataset}
            for method, cells in values.items():
                if isinstance(cells, dict) and metric in cells:
                    row[method] = cells[metric]
                    if method not in seen:
                        seen.add(method)
                        methods.append(method)
            key = (name, dataset)
            if key not in {(r["experiment"], r["dataset"]) for r in rows}:
                rows.append(row)
    if not rows:
        raise CbirError("no metrics/<dataset>.json in any experiment: run `dvc repro` (or `dvc exp run`) first")
    return rows, methods


def _cell(value) -> str:
    return "" if value is None else f"{float(value):.3f}"


def letters(n: int) -> list[str]:
    alphabet = string.ascii_uppercase
    return [alphabet[i] if i < 26 else alphabet[i // 26 - 1] + alphabet[i % 26] for i in range(n)]


def text_table(rows: list[dict], methods: list[str], metric: str, width: int = WIDTH) -> str:
    codes = letters(len(methods))
    exp_w = min(24, max(len("experiment"), *(len(r["experiment"]) for r in rows)))
    ds_w = min(16, max(len("dataset"), *(len(r["dataset"]) for r in rows)))
    head = f"{'experiment':<{exp_w}} {'dataset':<{ds_w}} " + " ".join(f"{c:>5}" for c in codes)
    lines = [f"{metric} per method (columns lettered; legend below)", head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{_cell(r.get(m)).lstrip('0') or '-':>5}" for m in methods)
        lines.append(f"{r['experiment'][:exp_w]:<{exp_w}} {r['dataset'][:ds_w]:<{ds_w}} {cells}")
    legend, line = [], ""
    for code, method in zip(codes, methods):
        item = f"{code} {method}"
        if line and len(line) + 2 + len(item) > width:
            legend.append(line)
            line = item
        else:
            line = f"{line}  {item}" if line else item
    legend.append(line)
    return "\n".join(lines + [""] + legend) + "\n"


def csv_table(rows: list[dict], methods: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["experiment", "dataset", *methods])
    for r in rows:
        writer.writerow([r["experiment"], r["dataset"], *(_cell(r.get(m)) for m in methods)])
    return out.getvalue()


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%") \
        .replace("#", r"\#")


def latex_table(rows: list[dict], methods: list[str], metric: str) -> str:
    metric_tex = "mAP" if metric == "map" else "P@10"
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{ll" + "r" * len(methods) + "}", r"\toprule",
             "Experiment & Dataset & " + " & ".join(rf"\rotatebox{{90}}{{{_tex(m)}}}" for m in methods) + r" \\",
             r"\midrule"]
    for r in rows:
        lines.append(f"{_tex(r['experiment'])} & {_tex(r['dataset'])} & "
                     + " & ".join(_cell(r.get(m)) for m in methods) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{{metric_tex} of every method per experiment and dataset (dvc exp show).}}",
              r"\label{tab:compare-" + metric.replace("@", "") + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def compare(root: Path, metric: str = "map", fmt: str = "text", exp_json: list | None = None) -> str:
    rows, methods = collect(exp_show_json(root) if exp_json is None else exp_json, metric)
    if fmt == "csv":
        return csv_table(rows, methods)
    if fmt == "latex":
        return latex_table(rows, methods, metric)
    if fmt != "text":
        raise CbirError(f"--format {fmt!r}: choose text, csv or latex")
    return text_table(rows, methods, metric)


def run_compare(root: Path, metric: str = "map", fmt: str = "text") -> None:
    sys.stdout.write(compare(Path(root), metric, fmt))
