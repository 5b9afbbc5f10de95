"""The charts of a benchmark, each in the benchmark's own terms: its metrics as bars with 95% intervals,
copy detection's pooled precision-recall with the P90 operating point, µAP per transformation family, the
distractor-only queries' top scores and the misses, UKBench's N-S distribution, and t-SNE maps coloured by
each image's role. Every colour is colour-blind safe (Okabe-Ito) and never the only cue (shapes, hatching).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cbir.figures.gallery import Cell, gallery_figure
from cbir.figures.style import IRRELEVANT, METHOD_MARKERS, QUERY, RELEVANT, STYLE, method_colours
from cbir.figures.thumbnails import framed, shorten

#: the t-SNE roles: colour (Okabe-Ito), marker, drawing order (the few on top)
ROLE_STYLE = {"query": ("#D55E00", "^", 3), "reference": ("#0072B2", "o", 2), "relevant": ("#0072B2", "o", 2),
              "distractor": ("#999999", ".", 1), "other": ("#999999", ".", 1)}


def _message(text: str, title: str):
    """A figure that only says ``text``, under a title of one or two lines."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.5, 1.0 + 0.2 * (title.count("\n") + 1)))
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.4, text, ha="center", va="center")
        if title:
            ax.set_title(title)
        fig.tight_layout()
    return fig


def _errors(values: Sequence[float], cis: Sequence) -> np.ndarray:
    err = np.zeros((2, len(values)))
    for i, (v, ci) in enumerate(zip(values, cis)):
        if ci and ci[0] is not None and ci[1] is not None and np.isfinite(v):
            err[:, i] = max(v - ci[0], 0.0), max(ci[1] - v, 0.0)
    return err


def metric_bars_figure(flat: Mapping[str, Mapping], shown: Sequence[tuple], baseline: str | None = None,
                       title: str = ""):
    """One panel per ``(key, header, top)`` of ``shown``: the metric per method (``flat``: ``{method: {key,
    ci95: {key: [lo, hi]}}}``) with its 95% interval where there is one; the baseline hatched."""
    methods = list(flat)
    colours = method_colours(methods)
    with matplotlib.rc_context(STYLE):
        n = len(shown)
        per_row = min(n, 3)
        rows = -(-n // per_row)
        fig = Figure(figsize=(max(5.0, (0.45 * len(methods) + 1.2) * per_row), 2.6 * rows + 0.3))
        axes = fig.subplots(rows, per_row, squeeze=False).ravel()
        for ax, (key, header, top) in zip(axes, shown):
            values = [np.nan if flat[m].get(key) is None else float(flat[m][key]) for m in methods]
            cis = [(flat[m].get("ci95") or {}).get(key) for m in methods]
            err = _errors(values, cis)
            ax.bar(range(len(methods)), np.nan_to_num(values), yerr=err if any(cis) else None, capsize=3,
                   color=[colours[m] for m in methods], edgecolor="black", linewidth=0.5, error_kw={"elinewidth": 0.8})
            if baseline in methods:
                ax.patches[methods.index(baseline)].set_hatch("///")
            ax.set_xticks(range(len(methods)), [shorten(m, 22) for m in methods], rotation=30, ha="right")
            ax.set_ylim(0, top * 1.05)
            ax.set_ylabel(header)
            ax.set_title(header + (" (95% CI)" if any(cis) else ""))
            for i, v in enumerate(values):
                if np.isfinite(v):
                    ax.text(i, min(v + err[1, i] + 0.02 * top, 0.98 * top * 1.05), f"{v:.3f}", ha="center",
                            va="bottom", fontsize=6)
        for ax in axes[n:]:
            ax.set_axis_off()
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig


def pooled_pr_figure(curves: Mapping[str, pd.DataFrame], points: Mapping[str, dict | None], title: str = ""):
    """Each method's precision-recall over the pooled (query, result) pairs, its P90 operating point (the
    highest recall at precision >= 0.9) marked with a black-edged marker."""
    methods = list(curves)
    colours = method_colours(methods)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(5.0, 3.0))
        ax = fig.subplots()
        for i, method in enumerate(methods):
            curve = curves[method]
            marker = METHOD_MARKERS[i % len(METHOD_MARKERS)]
            ax.plot(curve["recall"], curve["precision"], color=colours[method], label=shorten(method, 24),
                    marker=marker, markersize=3, markevery=max(1, len(curve) // 8))
            point = points.get(method)
            if point is not None:
                ax.plot([point["recall"]], [point["precision"]], marker=marker, markersize=7,
                        color=colours[method], markeredgecolor="black", linestyle="none")
        ax.axhline(0.9, color="black", linewidth=0.6, linestyle=":")
        ax.text(0.01, 0.905, "precision 0.9", fontsize=6, va="bottom")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall (true pairs found)")
        ax.set_ylabel("precision")
        ax.grid(True, linewidth=0.3, alpha=0.5)
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        fig.tight_layout()
    return fig


def value_heatmap(table: pd.DataFrame, label: str, title: str = ""):
    """Methods (rows) x columns of ``table``, coloured on the range of its values (not 0–1, so differences
    show), each cell written to 2 decimals in black or white by its shade; NaN cells blank."""
    values = table.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.05, hi + 0.05
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(max(4.0, 1.6 + 0.5 * table.shape[1]), 1.2 + 0.26 * table.shape[0]))
        ax = fig.subplots()
        image = ax.imshow(values, cmap="cividis", vmin=lo, vmax=hi, aspect="auto")
        ax.set_xticks(range(table.shape[1]), [shorten(str(c), 16) for c in table.columns], rotation=45, ha="right")
        ax.set_yticks(range(table.shape[0]), [shorten(str(r), 22) for r in table.index])
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if (v - lo) / (hi - lo) > 0.55 else "white")
        for spine in ax.spines.values():
            spine.set_visible(False)
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label=label)
        ax.set_title(title)
        fig.tight_layout()
    return fig


def distractor_scores_figure(scores: Mapping[str, pd.Series], thresholds: Mapping[str, float | None],
                             title: str = ""):
    """Per method, the top score of every query without a reference (each one a false alarm at any lower
    threshold), as a strip of points, with the method's P90 threshold as a black bar."""
    methods = list(scores)
    if not any(len(v) for v in scores.values()):
        return _message("every query has its source in the database: no distractor-only query", title)
    colours = method_colours(methods)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(max(4.5, 0.45 * len(methods) + 1.5), 2.8))
        ax = fig.subplots()
        for i, method in enumerate(methods):
            values = np.sort(scores[method].to_numpy(dtype=float))
            offsets = np.linspace(-0.25, 0.25, len(values)) if len(values) > 1 else np.zeros(len(values))
            ax.scatter(i + offsets, values, s=8, color=colours[method], marker="o", linewidths=0)
            if thresholds.get(method) is not None:
                ax.plot([i - 0.35, i + 0.35], [thresholds[method]] * 2, color="black", linewidth=1.2)
        ax.set_xticks(range(len(methods)), [shorten(m, 22) for m in methods], rotation=30, ha="right")
        ax.set_ylabel("top-1 score (cosine)")
        ax.set_title(title)
        ax.grid(True, axis="y", linewidth=0.3, alpha=0.5)
        fig.tight_layout()
    return fig


def ns_distribution_figure(ns: Mapping[str, pd.Series], title: str = ""):
    """Per method, the share of queries with 0, 1, 2, 3 and 4 relevant images in their top 4 (grouped bars,
    hatched by count) and the N-S score in the legend."""
    methods = list(ns)
    colours = method_colours(methods)
    width = 0.8 / max(len(methods), 1)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(5.0, 2.8))
        ax = fig.subplots()
        for i, method in enumerate(methods):
            counts = ns[method].value_counts(normalize=True).reindex(range(5), fill_value=0.0)
            ax.bar(np.arange(5) + (i - (len(methods) - 1) / 2) * width, counts.to_numpy(), width=width,
                   color=colours[method], edgecolor="black", linewidth=0.4,
                   label=f"{shorten(method, 22)} (N-S {ns[method].mean():.2f})")
        ax.set_xticks(range(5), [str(c) for c in range(5)])
        ax.set_xlabel("relevant images in the top 4")
        ax.set_ylabel("share of queries")
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        fig.tight_layout()
    return fig


def misses_gallery(rows: Sequence[dict], k: int, title: str = ""):
    """One row per missed query: the query (black), what outranks its reference at rank 1 (vermillion) and
    the reference (blue) with its rank and score, or a note that it is not in the top ``k``."""
    if not rows:
        return _message(f"every query with a reference finds it at rank 1: no miss in the top-{k}", title)
    cells = []
    for row in rows:
        ref = (Cell(framed(row["reference_image"], RELEVANT), f"reference #{int(row['ref_rank'])}  "
                    f"{row['ref_score']:.3f}", colour=RELEVANT)
               if np.isfinite(row["ref_rank"]) else
               Cell(framed(row["reference_image"], RELEVANT), f"reference: not in top-{k}", colour=RELEVANT))
        cells.append([Cell(framed(row["query_image"], QUERY), shorten(row["query_label"], 20)),
                      Cell(framed(row["top_image"], IRRELEVANT), f"#1  {row['top_score']:.3f}", colour=IRRELEVANT),
                      ref])
    return gallery_figure(cells, [1.3, 1.3, 1.5], image_height=1.0, caption_lines=1, title=title)


def role_embedding_figure(panels: Sequence[tuple[str, np.ndarray, Sequence[str]]], title: str = ""):
    """Side-by-side 2-D maps (``(title, xy, roles)`` per panel), coloured and shaped by role
    (:data:`ROLE_STYLE`: queries, the database images judged relevant to one, the rest)."""
    present = [r for r in ROLE_STYLE if any(r in set(roles) for _, _, roles in panels)]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.3 * len(panels) + 1.6, 3.4))
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, (name, xy, roles) in zip(axes[0], panels):
            roles = np.asarray(roles, dtype=object)
            size = float(np.clip(4000.0 / max(len(roles), 1), 3.0, 24.0))
            for role in sorted(present, key=lambda r: ROLE_STYLE[r][2]):
                pick = roles == role
                if pick.any():
                    colour, marker, order = ROLE_STYLE[role]
                    ax.scatter(xy[pick, 0], xy[pick, 1], s=size * (1.6 if order > 1 else 1.0), color=colour,
                               marker=marker, label=role, linewidths=0, alpha=0.85, zorder=order)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name)
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
        handles, names = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, names, loc="center right", markerscale=1.5, title="role", fontsize=6)
        fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 0.95 if title else 1))
        if title:
            fig.suptitle(title, fontsize=9)
    return fig
