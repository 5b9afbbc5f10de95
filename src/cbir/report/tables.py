"""The report's tables for a paper: the main table, the per-class tables and the paired tests, as CSV
(numbers, for pandas) and LaTeX (booktabs; the best value per column in bold, 95% intervals below the
means).

Every LaTeX table fits an ``article`` page: :func:`text_width` models the width pdflatex sets a cell
at (Computer Modern 10 pt: ``CMR10_WIDTHS``; bold and ``\\scriptsize`` scaled), and a table wider
than ``TEXTWIDTH_PT`` is set as several ``tabular`` blocks, each repeating the first column. On the
tables of the default experiment before this layout, the model gave 641.7, 362.8 and 80.8 pt of
overflow where pdflatex reported 641, 362 and 80 pt. Columns with one value in every row (queries,
database size, baseline) go to the caption. Needs ``\\usepackage{booktabs}``.

p-values have one format everywhere (:func:`format_p`): 3 significant digits, ``< 1e-4`` below
1e-4 and ``< 1e-3`` (etc.) at the resolution of the permutation test (``1 / (n_permutations + 1)``),
never ``9.999e-05``.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cbir.fileio import atomic_path, write_text
from cbir.report.benchmark_tables import write_benchmark_tables
from cbir.report.headline import SHOWN, flat, kind_of, label

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


LATEX_HEADERS = {"mean_diff_ap": r"$\Delta$AP", "p_permutation": "perm.", "p_wilcoxon": "Wilcoxon",
                 "p_holm": "Holm", "n": "$n$"}
#: columns set under one spanning header
LATEX_GROUPS = {"p_permutation": "$p$", "p_wilcoxon": "$p$", "p_holm": "$p$"}
LATEX_HEADERS.update({"µAP": r"$\mu$AP"})  # copy detection (cbir.report.benchmark_tables)

#: ``\textwidth`` of LaTeX's ``article`` class at 10 pt (letter and A4 paper alike), and ``\tabcolsep``
TEXTWIDTH_PT = 345.0
TABCOLSEP_PT = 6.0
#: advance widths of the printable ASCII characters ``!``..``~`` in Computer Modern Roman 10 pt
#: (cmr10's font metrics, in 1/1000 em; the codes where OT1 puts another glyph are never emitted bare)
CMR10_WIDTHS = dict(zip(range(33, 127), map(float, """
277.778 500 833.333 500 833.333 777.778 277.778 388.889 388.889 500 777.778 277.778 333.333 277.778 500 500 500
500 500 500 500 500 500 500 500 277.778 277.778 277.778 777.778 472.222 472.222 777.778 750 708.333 722.222
763.889 680.556 652.778 784.722 750 361.111 513.889 777.778 625 916.667 750 777.778 680.556 777.778 736.111
555.556 722.222 750 750 1027.78 750 750 611.111 277.778 500 277.778 500 277.778 277.778 500 555.556 444.444
555.556 444.444 305.556 500 555.556 277.778 305.556 527.778 277.778 833.333 555.556 500 555.556 527.778 391.667
394.444 388.889 555.556 527.778 722.222 527.778 527.778 444.444 500 1000 500 500""".split())))
SPACE_PT = 3.33333
#: bold extended (cmbx10) and ``\scriptsize`` (cmr7 at 7 pt) relative to cmr10, rounded up
BOLD_SCALE, SCRIPTSIZE_SCALE = 1.15, 0.8
#: the widths (pt at 10 pt) of the macros the tables emit
_MACROS = {"---": 10.0, r"\_": 3.6, r"\%": 8.33333, r"\&": 7.77778, r"\#": 8.33333, r"\$": 5.0, "$<$": 7.77778,
           "$-$": 7.77778, r"$\Delta$": 8.33333, r"$\mu$": 6.02, "$p$": 5.03, "$n$": 6.0, "--": 5.0,
           r"\textbackslash{}": 5.0, r"\textasciitilde{}": 5.0, r"\textasciicircum{}": 5.0, r"\{": 5.0, r"\}": 5.0,
           r"$\pm$": 7.77778, r"$\to$": 10.0, r"$\times$": 7.77778, r"$\leq$": 7.77778, r"$\geq$": 7.77778,
           r"\ldots{}": 13.3333, r"$\cdot$": 2.77778, r"$\alpha$": 6.40278, r"$\sigma$": 5.71181,
           "$^2$": 3.5}
_SCOPES = ((r"\textbf{", BOLD_SCALE), (r"{\scriptsize ", SCRIPTSIZE_SCALE))


def text_width(tex: str, scale: float = 1.0) -> float:
    """Width in pt at which LaTeX sets ``tex`` (a table cell: text, the macros in ``_MACROS``,
    ``\\textbf{…}`` and ``{\\scriptsize …}``) in Computer Modern 10 pt; unknown characters count 1 em."""
    total, i = 0.0, 0
    while i < len(tex):
        for opening, factor in _SCOPES:
            if tex.startswith(opening, i):
                depth, j = 1, i + len(opening)
                while j < len(tex) and depth:
                    depth += {"{": 1, "}": -1}.get(tex[j], 0) if tex[j - 1] != "\\" else 0
                    j += 1
                total += text_width(tex[i + len(opening):j - 1], scale * factor)
                i = j
                break
        else:
            for macro, width in _MACROS.items():
                if tex.startswith(macro, i):
                    total += width * scale
                    i += len(macro)
                    break
            else:
                char = tex[i]
                total += scale * (SPACE_PT if char == " " else CMR10_WIDTHS.get(ord(char), 1000.0) / 100.0)
                i += 1
    return total


def _blocks(first: float, widths: Sequence[float], limit: float) -> list[list[int]]:
    """Column indices (after the first) per ``tabular``: as few blocks as fit ``limit``, each led by the
    first column, filled in order and then evened out."""
    blocks: list[list[int]] = [[]]
    used = first
    for j, w in enumerate(widths):
        if blocks[-1] and used + w > limit:
            blocks.append([])
            used = first
        blocks[-1].append(j)
        used += w
    if len(blocks) > 1:  # same column count per block where that still fits
        per = -(-len(widths) // len(blocks))
        even = [list(range(a, min(a + per, len(widths)))) for a in range(0, len(widths), per)]
        if len(even) == len(blocks) and all(first + sum(widths[j] for j in b) <= limit for b in even):
            blocks = even
    return blocks


def _group_blocks(first: float, widths: Sequence[float], groups: Sequence, limit: float) -> list[list[int]]:
    """Like :func:`_blocks`, but whole column groups (runs of equal ``groups``) per block where they fit; a group
    wider than a block on its own is split by :func:`_blocks`."""
    runs: list[list[int]] = []
    for j, group in enumerate(groups):
        if runs and group is not None and groups[runs[-1][-1]] == group:
            runs[-1].append(j)
        else:
            runs.append([j])
    blocks: list[list[int]] = []
    used = limit + 1.0
    for run in runs:
        need = sum(widths[j] for j in run)
        if first + need > limit:  # alone too wide: split it
            blocks += [[run[j] for j in part] for part in _blocks(first, [widths[j] for j in run], limit)]
            used = limit + 1.0
        elif blocks and used + need <= limit:
            blocks[-1] += run
            used += need
        else:
            blocks.append(list(run))
            used = first + need
    return blocks


def to_latex(display: pd.DataFrame, caption: str, label: str, textwidth: float = TEXTWIDTH_PT,
             headers: Sequence[str] | None = None, groups: Sequence[str | None] | None = None) -> str:
    """A booktabs ``table`` of text cells (already formatted; ``\\textbf`` kept, names escaped; characters
    beyond ASCII as pdflatex's macros, :func:`ascii_tex`).

    A cell ``"a\\nb"`` sets ``b`` on a second row in ``\\scriptsize`` (the interval under a mean). Columns
    of ``LATEX_GROUPS`` (or of equal ``groups``, one per column, LaTeX-ready) share a spanning header;
    ``headers`` (LaTeX-ready, one per column) replace the column names. Wider than ``textwidth``: several
    ``tabular`` blocks, each led by the first column (whole groups per block where they fit; see
    :func:`text_width`); a block that cannot fit even with one column is scaled to ``\\textwidth``
    (``\\resizebox``, needs ``graphicx``).
    """
    columns = list(display.columns)
    cells = []
    for j, column in enumerate(columns):
        values = [str(v) for v in display[column]]
        if j == 0 or all("\\textbf" not in v for v in values):
            values = [_escape(v) for v in values]
        cells.append([ascii_tex(v.replace("–", "--")) for v in values])
    headers = list(headers) if headers is not None else [LATEX_HEADERS.get(c, _escape(str(c))) for c in columns]
    headers = [ascii_tex(h) for h in headers]
    group_of = list(groups) if groups is not None else [LATEX_GROUPS.get(c) for c in columns]
    lines_of = [[v.split("\n") for v in col] for col in cells]
    widths = []
    for j, col in enumerate(lines_of):
        lines = [text_width(headers[j])]
        for parts in col:
            lines += [text_width(parts[0])] + [text_width(p, SCRIPTSIZE_SCALE) for p in parts[1:]]
        widths.append(max(lines) + 2 * TABCOLSEP_PT)
    blocks = (_group_blocks(widths[0], widths[1:], group_of[1:], textwidth) if groups is not None
              else _blocks(widths[0], widths[1:], textwidth))
    out = [r"\begin{table}[t]", r"\centering", rf"\caption{{{ascii_tex(caption)}}}", rf"\label{{{label}}}"]
    for b, block in enumerate(blocks):
        picked = [0] + [j + 1 for j in block]
        scaled = sum(widths[j] for j in picked) > textwidth
        if b:
            out += [r"\par\medskip"]
        out += ([r"\resizebox{\textwidth}{!}{%"] if scaled else [])
        out += [rf"\begin{{tabular}}{{l{'r' * (len(picked) - 1)}}}", r"\toprule"]
        groups = [group_of[j] for j in picked]
        if any(groups):
            spans, rules, j = [], [], 0
            while j < len(picked):
                n = 1
                while groups[j] and j + n < len(picked) and groups[j + n] == groups[j]:
                    n += 1
                spans.append(rf"\multicolumn{{{n}}}{{c}}{{{groups[j]}}}" if groups[j] else "")
                if groups[j]:
                    rules.append(rf"\cmidrule(lr){{{j + 1}-{j + n}}}")
                j += n
            out += [" & ".join(spans) + r" \\", " ".join(rules)]
        out += [" & ".join(headers[j] for j in picked) + r" \\", r"\midrule"]
        for i in range(len(display)):
            parts = [lines_of[j][i] for j in picked]
            out.append(" & ".join(p[0] for p in parts) + r" \\")
            if any(len(p) > 1 for p in parts):
                out.append(" & ".join(r"{\scriptsize " + p[1] + "}" if len(p) > 1 else "" for p in parts) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"] + (["}"] if scaled else [])
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


#: constant columns moved from a LaTeX table into its caption, with their wording
CAPTION_COLUMNS = {"queries": "{} queries", "database": "{} database images", "baseline": "baseline {}",
                   "n": "{} paired queries"}


def constants_to_caption(display: pd.DataFrame,
                         wording: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, str]:
    """``display`` without the columns of ``wording`` (default ``CAPTION_COLUMNS``) that hold one value
    in every row, and the caption text naming those values (``"60 queries, 679 database images."``)."""
    wording = CAPTION_COLUMNS if wording is None else wording
    notes, keep = [], []
    for column in display.columns:
        values = set(display[column].astype(str)) if column in wording else set()
        if len(values) == 1 and len(display) > 1:
            notes.append(wording[column].format(_escape(values.pop())))
        else:
            keep.append(column)
    text = ", ".join(notes)
    return display[keep], (text[:1].upper() + text[1:] + "." if notes else "")


#: characters beyond ASCII the reports print, as pdflatex sets them without inputenc's Unicode tables
NON_ASCII = {"Δ": r"$\Delta$", "µ": r"$\mu$", "μ": r"$\mu$", "±": r"$\pm$", "→": r"$\to$", "×": r"$\times$",
             "≤": r"$\leq$", "≥": r"$\geq$", "–": "--", "—": "---", "…": r"\ldots{}", "−": "$-$", "·": r"$\cdot$",
             "α": r"$\alpha$", "σ": r"$\sigma$", "²": r"$^2$", "’": "'", "‘": "`", "“": "``", "”": "''"}


def ascii_tex(text: str) -> str:
    """``text`` with every character beyond ASCII as a LaTeX macro (``NON_ASCII``), else its ASCII base letter
    (``é`` → ``e``), else ``?``: pdflatex with the default font encoding sets the result (``Δ`` stops it)."""
    if text.isascii():
        return text
    out = []
    for char in text:
        if char.isascii():
            out.append(char)
        elif char in NON_ASCII:
            out.append(NON_ASCII[char])
        else:
            base = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
            out.append(base or "?")
    return "".join(out)


def _escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                       ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"),
                       ("^", r"\textasciicircum{}")):
        if char in text and not (char in "{}\\" and "\\textbf" in text):
            text = text.replace(char, repl)
    return text.replace("<", "$<$")


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
