"""LaTeX tables that fit an ``article`` page: :func:`to_latex` (booktabs; intervals on a second row), the
width model it lays tables out by, and the escaping of names and of characters beyond ASCII.

:func:`text_width` models the width pdflatex sets a cell at (Computer Modern 10 pt: ``CMR10_WIDTHS``; bold
and ``\\scriptsize`` scaled), and a table wider than ``TEXTWIDTH_PT`` is set as several ``tabular`` blocks,
each repeating the first column (whole column groups per block where they fit). On the tables of the default
experiment before this layout, the model gave 641.7, 362.8 and 80.8 pt of overflow where pdflatex reported
641, 362 and 80 pt. Columns with one value in every row (queries, database size, baseline) go to the
caption. Needs ``\\usepackage{booktabs}`` (and ``graphicx`` only where a block is scaled).
"""

from __future__ import annotations

import unicodedata
from typing import Mapping, Sequence

import pandas as pd

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
