"""Charts of the metrics: method comparison, P@k and PR curves with bands, per-class heat map,
t-SNE maps and the confused-classes gallery.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib
import matplotlib.colors
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cbir.figures.gallery import Cell, gallery_figure
from cbir.figures.style import (
    IRRELEVANT,
    MAX_CURVES_PER_PANEL,
    METHOD_MARKERS,
    MIN_PRINTED_PT,
    PRINTED_WIDTH_IN,
    QUERY,
    STYLE,
    class_colours,
    message_figure,
    method_colours,
)
from cbir.figures.thumbnails import framed, shorten, side_by_side


def _ci_errors(values: Sequence[float], cis: Sequence[Sequence[float | None] | None]) -> np.ndarray:
    """``[2, M]`` non-negative error-bar lengths from values and ``[lo, hi]`` (missing: 0)."""
    err = np.zeros((2, len(values)))
    for i, (v, ci) in enumerate(zip(values, cis)):
        if ci and ci[0] is not None and ci[1] is not None and np.isfinite(v):
            err[:, i] = max(v - ci[0], 0.0), max(ci[1] - v, 0.0)
    return err


def comparison_figure(metrics: dict, baseline: str | None = None):
    """P@10 and mAP per method with 95% bootstrap confidence intervals (error bars)."""
    methods = list(metrics)
    colours = method_colours(methods)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(max(5.0, 0.9 * len(methods) + 2.4), 2.8))
        axes = fig.subplots(1, 2, squeeze=False)
        for ax, key, name in zip(axes[0], ("p@10", "map"), ("P@10", "mAP")):
            values = [np.nan if metrics[m].get(key) is None else float(metrics[m][key]) for m in methods]
            cis = [(metrics[m].get("ci95") or {}).get(key) for m in methods]
            ax.bar(range(len(methods)), np.nan_to_num(values), yerr=_ci_errors(values, cis), capsize=3,
                   color=[colours[m] for m in methods], edgecolor="black", linewidth=0.5,
                   hatch=None, error_kw={"elinewidth": 0.8})
            if baseline in methods:
                ax.patches[methods.index(baseline)].set_hatch("///")
            ax.set_xticks(range(len(methods)), [shorten(m, 22) for m in methods], rotation=30, ha="right")
            ax.set_ylim(0, 1.05)
            ax.set_ylabel(name)
            ax.set_title(f"{name} (95% CI)")
            tops = np.nan_to_num(values) + _ci_errors(values, cis)[1]
            for i, v in enumerate(values):
                if np.isfinite(v):
                    ax.text(i, min(tops[i] + 0.02, 0.98), f"{v:.3f}", ha="center", va="bottom", fontsize=6)
        fig.tight_layout()
    return fig


def curves_figure(curves: pd.DataFrame, x: str, xlabel: str, ylabel: str, title: str,
                  methods: Sequence[str] | None = None, xlim: tuple | None = None, bands: bool | None = None):
    """One line per ``method`` of ``curves`` (columns ``method, <x>, precision[, lo, hi]``), each with its
    colour and marker shape; at most ``MAX_CURVES_PER_PANEL`` per panel (more methods: panels stacked
    one above the other, sharing both axes). ``bands`` (95% bands from ``lo``/``hi``): default only where a panel has at most
    3 curves, where they stay readable."""
    methods = list(methods) if methods is not None else list(dict.fromkeys(curves["method"]))
    colours = method_colours(methods)
    n_panels = max(1, -(-len(methods) // MAX_CURVES_PER_PANEL))
    per = -(-len(methods) // n_panels) if methods else 0
    groups = [methods[i:i + per] for i in range(0, len(methods), per)] or [[]]
    with matplotlib.rc_context(STYLE):
        # panels stacked (the width stays a page's), room for each legend outside the data on the right
        fig = Figure(figsize=(5.0, 2.8 + 2.2 * (len(groups) - 1)))
        axes = fig.subplots(len(groups), 1, squeeze=False, sharex=True, sharey=True)[:, 0]
        for ax, group in zip(axes, groups):
            show_bands = bands if bands is not None else len(group) <= 3
            for i, method in enumerate(group):
                part = curves[curves["method"] == method].sort_values(x)
                if part.empty:
                    continue
                ax.plot(part[x], part["precision"], color=colours[method], label=shorten(method, 24),
                        marker=METHOD_MARKERS[i % len(METHOD_MARKERS)], markersize=3,
                        markevery=max(1, len(part) // 10))
                if show_bands and {"lo", "hi"} <= set(part.columns) and part[["lo", "hi"]].notna().any().any():
                    ax.fill_between(part[x], part["lo"], part["hi"], color=colours[method], alpha=0.18,
                                    linewidth=0)
            ax.set_ylabel(ylabel)
            ax.set_ylim(0, 1.02)
            if xlim is not None:
                ax.set_xlim(*xlim)
            if pd.api.types.is_integer_dtype(curves[x]):
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(True, linewidth=0.3, alpha=0.5)
            if group:
                ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        axes[-1].set_xlabel(xlabel)
        if len(groups) == 1:
            axes[0].set_title(title)
        else:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig


def per_class_heatmap(per_class: pd.DataFrame, value: str = "p@10", methods: Sequence[str] | None = None,
                      title: str = "P@10 per class"):
    """Heat map of ``value`` from ``per_class.csv``: methods x classes, transposed (classes as rows) when
    there are more classes than methods, so the columns are the fewer.

    Sized for the printed page (``PRINTED_WIDTH_IN``): the cell numbers are ``MIN_PRINTED_PT`` points or
    more once the figure is printed at that width, and are left out (the colour bar remains) where the
    columns are too many for that.
    """
    methods = list(methods) if methods is not None else list(dict.fromkeys(per_class["method"]))
    table = per_class.pivot_table(index="method", columns="label", values=value, aggfunc="first", dropna=False)
    table = table.reindex(index=methods, columns=sorted(table.columns))
    transposed = table.shape[1] > table.shape[0]
    if transposed:
        table = table.T
    n_r, n_c = table.shape
    with matplotlib.rc_context(STYLE):
        cell_font = MIN_PRINTED_PT
        row_names = [shorten(str(r), 22) for r in table.index]
        col_names = [shorten(str(c), 22) for c in table.columns]
        label_w = 0.35 + 0.058 * max([len(n) for n in row_names] + [1])  # y tick labels (7 pt) and y label
        colorbar_w = 0.65
        text_w = cell_font * 2.3 / 72.0 + 0.03  # "0.00" at cell_font points, with a margin
        cell_w = min(0.6, max(text_w, (PRINTED_WIDTH_IN - label_w - colorbar_w) / max(n_c, 1)))
        width = label_w + colorbar_w + cell_w * n_c
        numbers = width <= PRINTED_WIDTH_IN * 1.001  # else printed smaller than cell_font: colours only
        height = 0.9 + 0.055 * max([len(n) for n in col_names] + [1]) + 0.26 * n_r
        fig = Figure(figsize=(max(width, 3.0), height))
        ax = fig.subplots()
        image = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(n_c), col_names, rotation=45, ha="right")
        ax.set_yticks(range(n_r), row_names)
        ax.set_xlabel("method" if transposed else "class")
        ax.set_ylabel("class" if transposed else "")
        ax.set_title(title)
        if numbers:
            for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=cell_font,
                            color="black" if v > 0.6 else "white")
        for spine in ax.spines.values():
            spine.set_visible(False)
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label=value.upper().replace("MAP", "mAP"))
        fig.tight_layout()
    return fig


def embedding_figure(panels: Sequence[tuple[str, np.ndarray, Sequence[str]]], title: str = ""):
    """Side-by-side 2-D maps: ``(title, xy [N, 2], labels [N])`` per panel, coloured by class."""
    all_labels = sorted({str(lab) for _, _, labels in panels for lab in labels})
    colours = class_colours(all_labels)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.3 * len(panels) + 1.6, 3.4))
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, (name, xy, labels) in zip(axes[0], panels):
            labels = np.asarray([str(lab) for lab in labels], dtype=object)
            size = float(np.clip(4000.0 / max(len(labels), 1), 3.0, 24.0))
            for label in all_labels:
                rows = labels == label
                if rows.any():
                    ax.scatter(xy[rows, 0], xy[rows, 1], s=size, color=colours[label], label=label,
                               linewidths=0, alpha=0.85)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name)
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
        if len(all_labels) <= 20:
            handles, names = axes[0][0].get_legend_handles_labels()
            fig.legend(handles, [shorten(n, 22) for n in names], loc="center right", markerscale=2,
                       title="class", fontsize=6)
            fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 0.95 if title else 1))
        else:
            fig.tight_layout(rect=(0, 0, 1, 0.95 if title else 1))
        if title:
            fig.suptitle(title, fontsize=9)
    return fig


def confusion_gallery(rows: Sequence[dict], title: str = ""):
    """One row per confused pair: its counts, then (query | wrong result) example thumbnails.

    ``rows``: dicts with ``query_label, result_label, count, rate`` and ``examples``: a list of
    {query_image, result_image, rank, score}.
    """
    if not rows:
        return message_figure("no wrong result in the top-k: nothing confused", title)
    ncols = 1 + max(1, max(len(r["examples"]) for r in rows))
    cells = [[Cell(caption=f"{shorten(row['query_label'], 22)}\n→ {shorten(row['result_label'], 22)}\n"
                           f"{row['count']} results ({row['rate']:.1%} of top-k)")]
             + [Cell(side_by_side(framed(ex["query_image"], QUERY), framed(ex["result_image"], IRRELEVANT)),
                     f"query | #{ex['rank']}  {ex['score']:.3f}") for ex in row["examples"]]
             for row in rows]
    return gallery_figure(cells, [1.9] + [2.3] * (ncols - 1), image_height=1.05, caption_lines=1, title=title)
