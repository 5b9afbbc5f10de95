"""Results tables of the standard benchmarks in the literature's columns (``reports/<ds>/tables/benchmark.*``):

* ROxford5k / RParis6k: Medium and Hard mAP side by side (``ROxf M``, ``ROxf H``, ``RPar M``, ``RPar H``;
  :func:`revisitop_frame` takes one or both datasets), Easy beside them in the CSV;
* Holidays: mAP (INRIA's trapezoidal AP) and the plain mAP; UKBench: N-S (0–4) and mAP;
* copy detection (Copydays, neardup): µAP and recall at precision 0.9, then µAP per transformation family
  (``benchmark_families``).

Numbers are percentages (one decimal) as the papers print them, except N-S (two decimals). Each table is
CSV (the numbers at that printed precision), Markdown and LaTeX (booktabs, the best value per column in bold, set to fit
``\\textwidth`` with :func:`cbir.report.tables.to_latex`'s width model). :func:`report_section` is the
benchmark's section of ``reports/<ds>/report.md``: the same tables, copy detection's with 95% intervals and
per family µAP, recall at precision 0.9 and mAP.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import pandas as pd

from cbir.fileio import atomic_path, write_text

SHORT = {"roxford5k": "ROxf", "rparis6k": "RPar"}


def _get(entry: Mapping, *keys):
    for key in keys:
        if not isinstance(entry, Mapping) or entry.get(key) is None:
            return float("nan")
        entry = entry[key]
    return float(entry)


def revisitop_frame(by_dataset: Mapping[str, Mapping[str, Mapping]]) -> pd.DataFrame:
    """``method`` then, per dataset (ROxf before RPar), ``<ds> M`` and ``<ds> H`` mAP (×100), and ``<ds> E``."""
    methods = list(dict.fromkeys(m for metrics in by_dataset.values() for m in metrics))
    order = sorted(by_dataset, key=lambda d: (d != "roxford5k", d))
    rows = []
    for method in methods:
        row = {"method": method}
        for ds in order:
            bench = (by_dataset[ds].get(method) or {}).get("benchmark") or {}
            short = SHORT.get(ds, ds)
            for protocol, letter in (("medium", "M"), ("hard", "H")):
                row[f"{short} {letter}"] = 100 * _get(bench, protocol, "map")
        for ds in order:
            bench = (by_dataset[ds].get(method) or {}).get("benchmark") or {}
            row[f"{SHORT.get(ds, ds)} E"] = 100 * _get(bench, "easy", "map")
        rows.append(row)
    return pd.DataFrame(rows)


def benchmark_frames(dataset: str, metrics: Mapping[str, Mapping]) -> dict[str, tuple[pd.DataFrame, str]]:
    """``{table name: (numbers, caption)}`` for the benchmark behind ``metrics`` (empty for class-level data)."""
    kinds = {(e.get("benchmark") or {}).get("kind") for e in metrics.values() if isinstance(e, Mapping)}
    kinds.discard(None)
    if not kinds:
        return {}
    kind = sorted(kinds)[0]
    name = dataset.replace("_", r"\_")
    benches = {m: e.get("benchmark") or {} for m, e in metrics.items() if isinstance(e, Mapping)}
    if kind == "revisitop":
        return {"benchmark": (revisitop_frame({dataset: metrics}),
                              f"{name}: mAP (\\%) under the Medium (M), Hard (H) and Easy (E) protocols, "
                              "revisitop's trapezoidal AP, queries cropped to their box.")}
    if kind == "groups":
        frame = pd.DataFrame([{"method": m, "mAP": 100 * _get(b, "map") if "map" in b else 100 * _get(metrics[m], "map"),
                               "plain mAP": 100 * _get(b, "plain_map")} for m, b in benches.items()])
        return {"benchmark": (frame, f"{name}: mAP (\\%) as INRIA's holidays\\_map.py scores it (trapezoidal AP), "
                                     "the query itself ignored; plain (non-interpolated) mAP beside it.")}
    if kind == "ukbench":
        frame = pd.DataFrame([{"method": m, "N-S": _get(b, "ns"), "mAP": 100 * _get(metrics[m], "map")}
                              for m, b in benches.items()])
        return {"benchmark": (frame, f"{name}: N-S score (0--4, the query counted) and mAP (\\%).")}
    frame = pd.DataFrame([{"method": m, "µAP": 100 * _get(b, "micro_ap"),
                           "R@P90": 100 * _get(b, "recall@p0.9"), "mAP": 100 * _get(metrics[m], "map")}
                          for m, b in benches.items()])
    families = sorted({f for b in benches.values() for f in (b.get("families") or {})})
    per_family = pd.DataFrame([{"method": m, **{f: 100 * _get(b, "families", f, "micro_ap") for f in families}}
                               for m, b in benches.items()])
    top_k = next((b.get("top_k") for b in benches.values() if b.get("top_k")), None)
    return {"benchmark": (frame, f"{name}: copy detection, µAP over all (query, top-{top_k}) pairs, recall at "
                                 "precision 0.9 and mAP (\\%)."),
            "benchmark_families": (per_family, f"{name}: µAP (\\%) per transformation family.")}


def digits(column: str) -> int:
    """Printed decimals of a benchmark column: two for N-S (0–4), one for the percentages."""
    return 2 if column == "N-S" else 1


def printed(frame: pd.DataFrame) -> pd.DataFrame:
    """The numbers at their printed precision (what the CSV holds: ``18.7``, never ``18.736900000000002``)."""
    return frame.round({c: digits(c) for c in frame.columns[1:]})


def display(frame: pd.DataFrame, bold=None) -> pd.DataFrame:
    """Text cells: one decimal (two for N-S); the best value per column through ``bold``; NaN as an en dash."""
    out = frame.copy().astype(object)
    for column in frame.columns[1:]:
        places = digits(column)
        values = pd.to_numeric(frame[column], errors="coerce").round(places)  # ties at the printed precision
        best = values.max() if values.notna().any() else None
        cells = []
        for v in values:
            text = "–" if v is None or math.isnan(v) else f"{v:.{places}f}"
            if bold is not None and best is not None and not math.isnan(v) and v == best and len(values) > 1:
                text = bold(text)
            cells.append(text)
        out[column] = cells
    return out


def to_markdown(frame: pd.DataFrame, caption: str) -> str:
    shown = display(frame, lambda t: f"**{t}**")
    lines = ["| " + " | ".join(map(str, shown.columns)) + " |",
             "|" + "|".join([":--"] + ["--:"] * (len(shown.columns) - 1)) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    plain = caption.replace("\\%", "%").replace("\\_", "_").replace("--", "–")
    return plain + "\n\n" + "\n".join(lines) + "\n"


def write_benchmark_tables(folder: Path, dataset: str, metrics: Mapping[str, Mapping], to_latex) -> list[Path]:
    """``benchmark*.{csv,md,tex}`` in ``folder``; returns the files written."""
    written = []
    for key, (frame, caption) in benchmark_frames(dataset, metrics).items():
        with atomic_path(folder / f"{key}.csv") as tmp:
            printed(frame).to_csv(tmp, index=False)
        write_text(folder / f"{key}.md", to_markdown(frame, caption))
        latex = display(frame, lambda t: rf"\textbf{{{t}}}")
        write_text(folder / f"{key}.tex", to_latex(latex, caption.replace("µ", r"$\mu$"), f"tab:{dataset}-{key}"))
        written += [folder / f"{key}.csv", folder / f"{key}.md", folder / f"{key}.tex"]
    return written


def _pct(value, lo_hi=None) -> str:
    """``76.7 [69.3, 83.7]`` (percent) or an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{100 * float(value):.1f}"
    if lo_hi and lo_hi[0] is not None and lo_hi[1] is not None:
        text += f" [{100 * float(lo_hi[0]):.1f}, {100 * float(lo_hi[1]):.1f}]"
    return text


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":--"] + ["--:"] * (len(head) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def pairs_section(metrics: Mapping[str, Mapping]) -> str:
    """Copy detection's scores: overall with 95% intervals, then per transformation family (percent)."""
    benches = {m: e.get("benchmark") or {} for m, e in metrics.items() if isinstance(e, Mapping)}
    first = next(iter(benches.values()), {})
    overall = [[f"`{m}`", _pct(b.get("micro_ap"), b.get("micro_ap_ci95")),
                _pct(b.get("recall@p0.9"), b.get("recall@p0.9_ci95")),
                _pct(metrics[m].get("map"), (metrics[m].get("ci95") or {}).get("map"))] for m, b in benches.items()]
    families = sorted({f for b in benches.values() for f in (b.get("families") or {})})
    counts = ", ".join(f"{f} {(first.get('families') or {}).get(f, {}).get('n_queries', '?')}" for f in families)
    blocks = [f"Copy detection: a query's only relevant image is the database image it was made from; "
              f"{first.get('n_positives', '?')} of the queries have one. µAP pools the (query, top-{first.get('top_k')}) "
              "pairs of all queries by score (DISC21's micro-AP: a query without a reference adds only false "
              "pairs); R@P90 is the recall at the score threshold that keeps precision at 0.9 or more; mAP is over "
              "the queries with a reference. Percent, mean [95% bootstrap interval over queries; µAP and R@P90 "
              "pool the pairs of each resample again].",
              _table(["method", "µAP", "R@P90", "mAP"], overall),
              f"Per transformation family (queries: {counts}; indicative, no intervals):"]
    for key, label in (("micro_ap", "µAP"), ("recall@p0.9", "R@P90"), ("map", "mAP")):
        rows = [[f"`{m}`", *(_pct(((b.get("families") or {}).get(f) or {}).get(key)) for f in families)]
                for m, b in benches.items()]
        blocks += [f"{label} (%) per family:", _table(["method", *families], rows)]
    return "\n\n".join(blocks)


def report_section(dataset: str, metrics: Mapping[str, Mapping]) -> str:
    """The benchmark's section of the Markdown report (ending in a blank line), or ``""`` for class-level data."""
    frames = benchmark_frames(dataset, metrics)
    if not frames:
        return ""
    kind = sorted({(e.get("benchmark") or {}).get("kind") for e in metrics.values() if isinstance(e, Mapping)} - {None})[0]
    body = pairs_section(metrics) if kind == "pairs" else "\n".join(
        to_markdown(frame, caption) for frame, caption in frames.values()).strip()
    files = ", ".join(f"`{name}`" for name in frames)
    return (f"## Benchmark scores (`{dataset}`)\n\n{body}\n\nThe same numbers as tables: "
            f"`reports/{dataset}/tables/` {files} (CSV, Markdown, LaTeX).\n\n")
