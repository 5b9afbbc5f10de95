"""Results tables of the standard benchmarks in the literature's columns (``reports/<ds>/tables/benchmark.*``):

* ROxford5k / RParis6k: Medium and Hard mAP side by side (``ROxf M``, ``ROxf H``, ``RPar M``, ``RPar H``;
  :func:`revisitop_frame` takes one or both datasets), Easy beside them in the CSV;
* Holidays: mAP; UKBench: N-S (0–4) and mAP;
* copy detection (Copydays, neardup): µAP and recall at precision 0.9, then µAP per transformation family
  (``benchmark_families``).

Numbers are percentages (one decimal) as the papers print them, except N-S (two decimals). Each table is
CSV (the numbers), Markdown and LaTeX (booktabs, the best value per column in bold, set to fit
``\\textwidth`` with :func:`cbir.report.tables.to_latex`'s width model).
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
        frame = pd.DataFrame([{"method": m, "Holidays mAP": 100 * _get(metrics[m], "map")} for m in benches])
        return {"benchmark": (frame, f"{name}: mAP (\\%), the query itself ignored.")}
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


def display(frame: pd.DataFrame, bold=None) -> pd.DataFrame:
    """Text cells: one decimal (two for N-S); the best value per column through ``bold``; NaN as an en dash."""
    out = frame.copy().astype(object)
    for column in frame.columns[1:]:
        values = pd.to_numeric(frame[column], errors="coerce")
        best = values.max() if values.notna().any() else None
        digits = 2 if column == "N-S" else 1
        cells = []
        for v in values:
            text = "–" if v is None or math.isnan(v) else f"{v:.{digits}f}"
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
            frame.to_csv(tmp, index=False)
        write_text(folder / f"{key}.md", to_markdown(frame, caption))
        latex = display(frame, lambda t: rf"\textbf{{{t}}}")
        write_text(folder / f"{key}.tex", to_latex(latex, caption.replace("µ", r"$\mu$"), f"tab:{dataset}-{key}"))
        written += [folder / f"{key}.csv", folder / f"{key}.md", folder / f"{key}.tex"]
    return written
