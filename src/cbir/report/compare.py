"""``cbir compare``: every experiment x dataset x method, one metric at a time, on one screen.

Reads ``dvc exp show --json`` (the compact ``metrics/<ds>.json`` of the workspace, the baseline commit and
every experiment) and prints one row per experiment and dataset, one column per method, each row naming its
experiment (``workspace``, the branch or commit, or the experiment's name). The metric is any key of the
compact files (``micro_ap``, ``recall@p0.9``, ``e_map``/``m_map``/``h_map``, ``ns``, ``map_lo``…); datasets
without it are left out. Without one, each dataset shows its own headline metric
(:mod:`cbir.report.headline`: P@10 for class labels, µAP for copy detection, …), named in the row.  Methods are lettered in the
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
from cbir.report.headline import headline, kind_of, label

WIDTH = 120
#: ``--metric`` for each dataset's own headline metric
HEADLINE = "headline"


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


def _files(exp_json: list) -> Iterable[tuple[str, str, dict]]:
    """``(experiment, dataset, {method: compact entry})`` of every ``metrics/<ds>.json`` in every revision."""
    for name, data in _revisions(exp_json):
        for path, entry in sorted((data.get("metrics") or {}).items()):
            values = (entry or {}).get("data") or {}
            if path.startswith("metrics/") and isinstance(values, dict):
                yield name, Path(path).stem, {m: c for m, c in values.items() if isinstance(c, dict)}


def collect(exp_json: list, metric: str | None) -> tuple[list[dict], list[str]]:
    """Rows ``{experiment, dataset, metric, <method>: value}`` and the methods in first-seen order.

    ``metric`` None, ``""`` or ``"headline"``: each dataset's headline metric. A key no file holds is one line
    naming the keys there are."""
    files = list(_files(exp_json))
    if not files:
        raise CbirError("no metrics/<dataset>.json in any experiment: run `dvc repro` (or `dvc exp run`) first")
    own = metric in (None, "", HEADLINE)
    valid = sorted({key for _, _, values in files for cells in values.values() for key in cells})
    if not own and metric not in valid:
        raise CbirError(f"--metric {metric!r} is in no metrics/<dataset>.json: choose one of {', '.join(valid)} "
                        f"(or leave it out for each dataset's headline metric)")
    rows, methods, seen = [], [], set()
    for name, dataset, values in files:
        key = headline(kind_of(values)) if own else metric
        if (name, dataset) in seen or not any(key in cells for cells in values.values()):
            continue
        seen.add((name, dataset))
        row = {"experiment": name, "dataset": dataset, "metric": key}
        for method, cells in values.items():
            if key in cells:
                row[method] = cells[key]
                if method not in methods:
                    methods.append(method)
        rows.append(row)
    return rows, methods


def _cell(value) -> str:
    return "" if value is None else f"{float(value):.3f}"


def letters(n: int) -> list[str]:
    alphabet = string.ascii_uppercase
    return [alphabet[i] if i < 26 else alphabet[i // 26 - 1] + alphabet[i % 26] for i in range(n)]


def text_table(rows: list[dict], methods: list[str], metric: str | None, width: int = WIDTH) -> str:
    codes = letters(len(methods))
    exp_w = min(24, max(len("experiment"), *(len(r["experiment"]) for r in rows)))
    ds_w = min(16, max(len("dataset"), *(len(r["dataset"]) for r in rows)))
    keys = sorted({r["metric"] for r in rows})
    shown = keys[0] if len(keys) == 1 else None
    key_w = 0 if shown else min(12, max(len("metric"), *(len(k) for k in keys)))
    metric_col = f"{'metric':<{key_w}} " if key_w else ""
    head = f"{'experiment':<{exp_w}} {'dataset':<{ds_w}} {metric_col}" + " ".join(f"{c:>5}" for c in codes)
    what = shown if shown else "each dataset's headline metric"
    lines = [f"{what} per method (columns lettered; legend below)", head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{_cell(r.get(m)).lstrip('0') or '-':>5}" for m in methods)
        key = f"{r['metric'][:key_w]:<{key_w}} " if key_w else ""
        lines.append(f"{r['experiment'][:exp_w]:<{exp_w}} {r['dataset'][:ds_w]:<{ds_w}} {key}{cells}")
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
    writer.writerow(["experiment", "dataset", "metric", *methods])
    for r in rows:
        writer.writerow([r["experiment"], r["dataset"], r["metric"], *(_cell(r.get(m)) for m in methods)])
    return out.getvalue()


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%") \
        .replace("#", r"\#")


def latex_table(rows: list[dict], methods: list[str], metric: str | None) -> str:
    keys = sorted({r["metric"] for r in rows})
    one = len(keys) == 1
    what = _tex(label(keys[0])).replace("µ", r"$\mu$") if one else "Each dataset's headline metric"
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{ll" + ("" if one else "l") + "r" * len(methods) + "}", r"\toprule",
             "Experiment & Dataset & " + ("" if one else "Metric & ")
             + " & ".join(rf"\rotatebox{{90}}{{{_tex(m)}}}" for m in methods) + r" \\", r"\midrule"]
    for r in rows:
        lines.append(f"{_tex(r['experiment'])} & {_tex(r['dataset'])} & "
                     + ("" if one else _tex(label(r["metric"])).replace("µ", r"$\mu$") + " & ")
                     + " & ".join(_cell(r.get(m)) for m in methods) + r" \\")
    tag = keys[0] if one else HEADLINE
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{{what} of every method per experiment and dataset (dvc exp show).}}",
              r"\label{tab:compare-" + "".join(c for c in tag if c.isalnum() or c in "-_").replace("_", "-") + "}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def compare(root: Path, metric: str | None = None, fmt: str = "text", exp_json: list | None = None) -> str:
    rows, methods = collect(exp_show_json(root) if exp_json is None else exp_json, metric)
    if fmt == "csv":
        return csv_table(rows, methods)
    if fmt == "latex":
        return latex_table(rows, methods, metric)
    if fmt != "text":
        raise CbirError(f"--format {fmt!r}: choose text, csv or latex")
    return text_table(rows, methods, metric)


def run_compare(root: Path, metric: str | None = None, fmt: str = "text") -> None:
    sys.stdout.write(compare(Path(root), metric, fmt))
