"""The report's tables for a paper: the main table, the per-class tables and the paired tests, as CSV
(numbers, for pandas) and LaTeX (booktabs; the best value per column in bold, 95% intervals below the
means).

Every LaTeX table fits an ``article`` page: :func:`cbir.report.latex.to_latex` lays it out by its width model
(re-exported here with the rest of :mod:`cbir.report.latex`). A benchmark's tables show its own metrics
(:func:`shown_metrics`) and no per-class tables.

p-values have one format everywhere (:func:`format_p`): 3 significant digits, ``< 1e-4`` below
1e-4 and ``< 1e-3`` (etc.) at the resolution of the permutation test (``1 / (n_permutations + 1)``),
never ``9.999e-05``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cbir.fileio import atomic_path, write_text
from cbir.report.benchmark_tables import write_benchmark_tables
from cbir.report.headline import SHOWN, flat, kind_of, label
from cbir.report.latex import CAPTION_COLUMNS, constants_to_caption, to_latex
from cbir.report.latex import CMR10_WIDTHS, TEXTWIDTH_PT, ascii_tex, text_width  # noqa: F401 (the API, re-exported)

DECIMALS = 3
#: p-values below this print as ``< 1e-4``
P_FLOOR = 1e-4


def column_header(key: str) -> str:
    """``p@10`` → ``P@10``, ``map`` → ``mAP``, ``map@10`` → ``mAP@10``; a benchmark's keys by their name
    (``micro_ap`` → ``µAP``, ``m_map`` → ``mAP M``)."""
    named = label(key)
    if named != key:
        return named
    return "mAP" + key[3:] if key.startswith("map") else key.upper()


def table_columns(metrics: Mapping[str, Mapping]) -> list[str]:
    """The main table's metric columns: every ``p@k`` (by k), then ``r@10``, ``map``, ``map@10`` when present."""
    keys = {key for entry in metrics.values() for key in entry}
    pks = sorted((k for k in keys if k.startswith("p@") and k[2:].isdigit()), key=lambda k: int(k[2:]))
    return pks + [k for k in ("r@10", "map", "map@10") if k in keys]


def format_p(p, n_permutations: int | None = None) -> str:
    """A p-value as text, the one format of every table and report: 3 significant digits
    (``0.126``, ``0.0200``, ``0.000900``, ``1.00``); ``< 1e-4`` below ``P_FLOOR``; ``< 1e-k`` at the permutation test's floor
    ``1 / (n_permutations + 1)`` (the true p is below it); NaN is an en dash."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    p = float(p)
    if n_permutations:
        floor = 1.0 / (int(n_permutations) + 1)
        if p <= floor * (1 + 1e-9):
            return f"< 1e{max(math.ceil(math.log10(floor)), round(math.log10(P_FLOOR)))}"
    if p < P_FLOOR:
        return "< 1e-4"
    return f"{p:#.3g}"


def number_text(value) -> str:
    """A value to 3 decimals; missing or undefined is an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.{DECIMALS}f}"


def shown_metrics(metrics: Mapping[str, Mapping]) -> tuple[dict, list[str]]:
    """The metrics a dataset's tables show and their keys: class labels' as they are (:func:`table_columns`);
    a benchmark's own (:func:`cbir.report.headline.flat`: µAP and R@P90, E/M/H mAP and mP@10, N-S, …) with
    each method's ``kind``, ``n_queries`` and ``n_database``."""
    kind = kind_of(metrics)
    if kind is None:
        return dict(metrics), table_columns(metrics)
    values = flat(metrics, kind)
    out = {m: {**values[m], **{k: e.get(k) for k in ("kind", "n_queries", "n_database", "n_queries_without_relevant")
                               if k in e}} for m, e in metrics.items()}
    return out, [key for key, _, _ in SHOWN[kind]]


def main_frame(metrics: Mapping[str, Mapping], kinds: Mapping[str, str] | None = None,
               keys: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per method: ``method, kind``, then for each metric (``keys``, default :func:`table_columns`)
    its mean, ``_lo`` and ``_hi`` (95% CI), then ``queries, database``."""
    rows = []
    keys = list(keys) if keys is not None else table_columns(metrics)
    for method, entry in metrics.items():
        row = {"method": method, "kind": (kinds or {}).get(method) or entry.get("kind") or ""}
        for key in keys:
            lo, hi = (entry.get("ci95") or {}).get(key) or (None, None)
            row.update({key: entry.get(key), f"{key}_lo": lo, f"{key}_hi": hi})
        row.update(queries=entry.get("n_queries"), database=entry.get("n_database"))
        rows.append(row)
    return pd.DataFrame(rows)


def _bold_best(values: Sequence, bold) -> list[str]:
    """``bold(text)`` around the cells equal (at the printed precision) to the column's best."""
    rounded = [None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), DECIMALS)
               for v in values]
    best = max((v for v in rounded if v is not None), default=None)
    return [bold(number_text(v)) if r is not None and r == best else number_text(v) for v, r in zip(values, rounded)]


def main_display(frame: pd.DataFrame, bold, sep: str = " ") -> pd.DataFrame:
    """``main_frame`` as text cells ``mean [lo, hi]``, the best mean of each column through ``bold``
    (``sep="\\n"``: the interval on a line of its own, as the LaTeX table sets it)."""
    keys = [c for c in frame.columns if c not in ("method", "kind", "queries", "database")
            and not c.endswith(("_lo", "_hi"))]
    out = pd.DataFrame({"method": frame["method"]})
    for key in keys:
        means = _bold_best(frame[key].tolist(), bold)
        out[column_header(key)] = [m if lo is None or pd.isna(lo) else f"{m}{sep}[{number_text(lo)}, {number_text(hi)}]"
                                   for m, lo, hi in zip(means, frame[f"{key}_lo"], frame[f"{key}_hi"])]
    out["queries"], out["database"] = frame["queries"].astype(str), frame["database"].astype(str)
    return out


def per_class_frame(per_class: pd.DataFrame, value: str, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per class: ``class, queries``, then ``value`` (``p@10``, ``p@20``) of each method."""
    if per_class is None or per_class.empty or value not in per_class.columns:
        return pd.DataFrame()
    methods = list(methods) if methods is not None else list(dict.fromkeys(per_class["method"]))
    table = per_class.pivot_table(index="label", columns="method", values=value, aggfunc="first", dropna=False)
    table = table.reindex(columns=[m for m in methods if m in table.columns]).sort_index()
    counts = per_class.drop_duplicates("label").set_index("label")["n_queries"]
    table.insert(0, "queries", counts.reindex(table.index).to_numpy())
    table.index.name, table.columns.name = "class", None
    return table.reset_index()


def per_class_display(frame: pd.DataFrame, bold) -> pd.DataFrame:
    """Text cells; the best method of each class (row) through ``bold``."""
    methods = [c for c in frame.columns if c not in ("class", "queries")]
    cells = [_bold_best(row, bold) for row in frame[methods].astype(float).to_numpy().tolist()]
    out = pd.DataFrame(cells, columns=methods)
    out.insert(0, "queries", frame["queries"].astype(str).to_numpy())
    out.insert(0, "class", frame["class"].astype(str).to_numpy())
    return out


def tests_display(frame: pd.DataFrame, n_permutations: int | None) -> pd.DataFrame:
    """Paired tests as text: mean differences to 3 decimals, p-values by :func:`format_p`."""
    out = frame.copy()
    for column in out.columns:
        if column.startswith("p_"):
            out[column] = [format_p(p, n_permutations if column in ("p_permutation", "p_holm") else None)
                           for p in out[column]]
        elif column == "mean_diff_ap":
            out[column] = [f"{v:+.{DECIMALS}f}" if pd.notna(v) else "–" for v in out[column]]
    return out.astype(str)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_tables(folder: Path, dataset: str, metrics: Mapping[str, Mapping], per_class: pd.DataFrame,
                 significance: pd.DataFrame, pairs: pd.DataFrame, n_permutations: int | None,
                 kinds: Mapping[str, str] | None = None) -> list[Path]:
    """Every table as ``<name>.csv`` + ``<name>.tex`` in ``folder``; returns the files written (sorted).

    The CSVs hold every column; the LaTeX tables move constant columns into the caption and leave the
    Wilcoxon p-values out of the all-pairs table (they are in ``pairs.csv``) so that each fits the page.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bold = (lambda text: rf"\textbf{{{text}}}")
    name = dataset.replace("_", r"\_")
    variants = sorted({str(e.get("ap")) for e in metrics.values() if isinstance(e, Mapping) and e.get("ap")})
    ap_note = f" mAP: {' / '.join(variants)} AP." if variants else ""
    shown, keys = shown_metrics(metrics)
    tables = {"main": (main_frame(shown, kinds, keys), lambda f: main_display(f, bold, sep="\n"),
                       f"Retrieval quality on {name}: mean over queries, 95\\% bootstrap CI below; best in bold."
                       + ap_note)}
    for value in ("p@10", "p@20") if kind_of(metrics) is None else ():  # a benchmark's labels are not classes
        frame = per_class_frame(per_class, value, list(metrics))
        if not frame.empty and frame.drop(columns=["class", "queries"]).notna().any().any():
            tables[f"per_class_{value.replace('@', '')}"] = (
                frame, lambda f: per_class_display(f, bold),
                f"{column_header(value)} per class on {name}; best method per class in bold.")
    if significance is not None and not significance.empty:
        tables["significance"] = (significance, lambda f: tests_display(f, n_permutations),
                                  f"Paired tests of per-query AP against the baseline on {name} (Holm over the "
                                  "comparisons).")
    if pairs is not None and not pairs.empty:
        tables["pairs"] = (pairs, lambda f: tests_display(f, n_permutations).drop(columns=["p_wilcoxon"],
                                                                                   errors="ignore"),
                           f"Paired tests of per-query AP, every pair of methods on {name} (Holm over all "
                           "pairs; $\\Delta$AP = a $-$ b; Wilcoxon signed-rank $p$ in pairs.csv).")
    written = []
    for key, (frame, display, caption) in tables.items():
        _write_csv(frame, folder / f"{key}.csv")
        shown, note = constants_to_caption(display(frame), {**CAPTION_COLUMNS, "queries": "{} queries per class"}
                                           if key.startswith("per_class") else None)
        write_text(folder / f"{key}.tex", to_latex(shown, f"{caption} {note}".strip(), f"tab:{dataset}-{key}"))
        written += [folder / f"{key}.csv", folder / f"{key}.tex"]
    written += write_benchmark_tables(folder, dataset, metrics, to_latex)  # a benchmark's own columns
    for stale in folder.glob("*"):
        if stale.is_file() and stale not in written:
            stale.unlink()
    return sorted(written)


def best_by(metrics: Mapping[str, Mapping], kinds: Mapping[str, str], kind: str, key: str = "p@10") -> str | None:
    """The method of ``kind`` with the highest ``key`` (first listed on ties), ``None`` when there is none."""
    candidates = [(m, e.get(key)) for m, e in metrics.items()
                  if kinds.get(m) == kind and e.get(key) is not None and not np.isnan(float(e[key]))]
    return max(candidates, key=lambda c: float(c[1]))[0] if candidates else None
