"""The ``figures`` stage: a paper's figures from the retrievals, the metrics and the features.

Every figure is a PNG (``figures.dpi``, 150 by default) with a vector PDF beside it in
``reports/figures/``, plus ``figures.json`` (file, title, caption, panel count, in reading order)
for the report:

* ``trials_<method>``: the paper's Figures 3-6 — seeded queries plus the method's best and worst
  query (by AP), each beside its top-k with rank, cosine similarity and label (green frame: same
  class as the query, red: another class); the seeded queries are the same for every method;
* ``trials_baseline_vs_best``: the same seeded queries under the baseline (the paper's) method and
  the best method by mAP (the runner-up when the baseline is best);
* ``pk_curves`` / ``pr_curves``: P@k and interpolated precision-recall of every method on one
  axis, with 95% bootstrap bands over queries (seeded);
* ``per_class_p10``: P@10 heat map, methods x classes;
* ``comparison``: P@10 and mAP per method with 95% CI error bars;
* ``embedding_tsne``: 2-D t-SNE maps (PCA to 50 dimensions first, seeded) of the baseline and
  the best method's features, coloured by class;
* ``confusions_<method>``: the most confused (query class, retrieved class) pairs in the top-k,
  with example thumbnails.

Figures are deterministic: seeded choices, stable sorting, one-thread t-SNE, no timestamps in the
files.  They are built on ``matplotlib.figure.Figure`` directly (no pyplot, no global backend), so
the same functions draw inline in a notebook.  Settings (``params['figures']``, all optional):
``n_queries`` 3, ``seed`` 0, ``thumb_size`` 128, ``dpi`` 150, ``n_pairs`` 5, ``n_examples`` 3,
``tsne_max_points`` 2000, ``tsne_perplexity`` 30, ``pca_dims`` 50.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import matplotlib.colors
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cbir.config import dataset_name
from cbir.errors import CbirError
from cbir.fileio import atomic_dir, atomic_path, read_json, write_json

log = logging.getLogger("cbir")

RELEVANT = "#1a9850"
IRRELEVANT = "#d73027"
QUERY = "#2166ac"
#: Okabe-Ito colours (colour-blind safe) for methods; more methods fall back to tab20.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
#: Publication style: small sans-serif fonts, TrueType (Type 42) text in PDFs, no top/right spines.
STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
    "figure.dpi": 100, "axes.grid": False, "lines.linewidth": 1.4,
}
DEFAULTS = {"n_queries": 3, "seed": 0, "thumb_size": 128, "n_pairs": 5, "n_examples": 3,
            "tsne_max_points": 2000, "tsne_perplexity": 30.0, "pca_dims": 50, "dpi": 150}
FIGURES_INDEX = "figures.json"
#: written on every run whatever the methods and data (dvc.yaml's top-level ``plots`` lists them)
ALWAYS_PRESENT = ("comparison", "pk_curves", "pr_curves", "per_class_p10", "trials_baseline_vs_best",
                  "embedding_tsne")
MIN_TSNE_POINTS = 4


# ---------------------------------------------------------------------------------------------
# pure helpers: choices and tables
# ---------------------------------------------------------------------------------------------

def figure_settings(params: Mapping) -> dict:
    """``params['figures']`` over :data:`DEFAULTS`, with types checked (one clear error)."""
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in (params.get("figures") or {}).items() if v is not None})
    try:
        for key in ("n_queries", "seed", "thumb_size", "n_pairs", "n_examples", "tsne_max_points", "pca_dims",
                    "dpi"):
            cfg[key] = int(cfg[key])
        cfg["tsne_perplexity"] = float(cfg["tsne_perplexity"])
    except (TypeError, ValueError) as exc:
        raise CbirError(f"params figures: {exc}; use whole numbers for counts and sizes") from exc
    for key in ("n_queries", "thumb_size", "n_pairs", "n_examples", "tsne_max_points", "pca_dims", "dpi"):
        if cfg[key] < 1:
            raise CbirError(f"params figures.{key} must be >= 1, got {cfg[key]}")
    if cfg["tsne_perplexity"] <= 0:
        raise CbirError(f"params figures.tsne_perplexity must be > 0, got {cfg['tsne_perplexity']}")
    return cfg


def safe_name(name: str) -> str:
    """A file-name-safe version of a method name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """A fixed colour per method (in the given order): Okabe-Ito, then tab20."""
    if len(methods) <= len(OKABE_ITO):
        return {m: OKABE_ITO[i] for i, m in enumerate(methods)}
    cmap = matplotlib.colormaps.get_cmap("tab20")
    return {m: matplotlib.colors.to_hex(cmap(i % 20)) for i, m in enumerate(methods)}


def class_colours(labels: Sequence[str]) -> dict[str, tuple]:
    """A colour per class (sorted): tab10 up to 10 classes, tab20 up to 20, then a hue wheel."""
    labels = sorted(set(labels))
    n = len(labels)
    if n <= 10:
        cmap, values = matplotlib.colormaps.get_cmap("tab10"), range(n)
    elif n <= 20:
        cmap, values = matplotlib.colormaps.get_cmap("tab20"), range(n)
    else:
        cmap, values = matplotlib.colormaps.get_cmap("hsv"), np.linspace(0, 1, n, endpoint=False)
    return {label: tuple(cmap(v)) for label, v in zip(labels, values)}


def pick_queries(query_ids: list[str], n: int, seed: int) -> list[str]:
    """A seeded, order-independent choice of ``n`` query ids."""
    ordered = sorted(query_ids)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(ordered), size=min(n, len(ordered)), replace=False)
    return [ordered[i] for i in sorted(chosen)]


def best_worst_queries(query_ids: Sequence[str], ap: Sequence[float]) -> tuple[str, str] | None:
    """The query ids with the highest and the lowest AP (NaN skipped; ties: smallest id).

    Returns ``None`` when no query has a finite AP.
    """
    frame = pd.DataFrame({"query_id": [str(q) for q in query_ids], "ap": np.asarray(ap, dtype=np.float64)})
    frame = frame[np.isfinite(frame["ap"])]
    if frame.empty:
        return None
    best = frame.sort_values(["ap", "query_id"], ascending=[False, True], kind="stable").iloc[0]["query_id"]
    worst = frame.sort_values(["ap", "query_id"], ascending=[True, True], kind="stable").iloc[0]["query_id"]
    return str(best), str(worst)


def rank_methods(metrics: Mapping[str, Mapping], key: str = "map") -> list[str]:
    """Methods sorted by ``key`` (descending; missing or null last; ties keep the given order)."""
    def score(method: str) -> float:
        value = metrics[method].get(key)
        return -math.inf if value is None or not np.isfinite(value) else float(value)
    return sorted(metrics, key=lambda m: -score(m))


def compared_methods(metrics: Mapping[str, Mapping], baseline: str | None) -> tuple[str, str | None, str]:
    """``(baseline, other, role)``: the baseline against the best method by mAP.

    When the baseline is itself the best, ``other`` is the runner-up (role ``"runner-up"``);
    with a single method ``other`` is ``None``.  A missing baseline means the first method.
    """
    methods = list(metrics)
    if not methods:
        raise CbirError("the metrics file lists no method: run the evaluate stage first")
    if baseline not in metrics:
        baseline = methods[0]
    ranked = rank_methods(metrics)
    if ranked[0] != baseline:
        return baseline, ranked[0], "best"
    others = [m for m in ranked if m != baseline]
    return baseline, (others[0] if others else None), "runner-up"


def confused_pairs(query_labels: Sequence[str], result_labels: Sequence[str],
                   queries_per_label: Mapping[str, int], k: int) -> pd.DataFrame:
    """Wrong results counted by ``(query_label, result_label)``, most frequent first.

    Inputs are aligned per retrieved result (one element per row of the top-k ranking).
    ``rate`` = count / (queries of that class x k), the share of its top-k slots taken by
    that other class.  Ties sort by class names.
    """
    q = np.asarray(query_labels, dtype=object)
    r = np.asarray(result_labels, dtype=object)
    if q.shape != r.shape:
        raise ValueError("query and result labels must line up")
    wrong = pd.DataFrame({"query_label": q[q != r], "result_label": r[q != r]})
    counts = wrong.value_counts(["query_label", "result_label"]).rename("count").reset_index()
    counts["rate"] = counts["count"] / (counts["query_label"].map(queries_per_label).astype(float) * k)
    return counts.sort_values(["count", "query_label", "result_label"], ascending=[False, True, True],
                              kind="stable").reset_index(drop=True)


def stratified_subsample(labels: Sequence[str], max_points: int, seed: int) -> np.ndarray:
    """Sorted row indices of ``min(N, max_points)`` rows, classes in proportion (seeded).

    Quotas are ``max_points * class share``, rounded down, the remainder going to the classes
    with the largest fractional parts (ties: class name order).
    """
    labels = np.asarray(labels, dtype=object)
    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    classes, counts = np.unique(labels.astype(str), return_counts=True)
    exact = max_points * counts / n
    quota = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - quota), kind="stable")[: max_points - quota.sum()]
    quota[extra] += 1
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(labels.astype(str) == c), size=q, replace=False)
            for c, q in zip(classes, quota) if q > 0]
    return np.sort(np.concatenate(keep))


def embed_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0, pca_dims: int = 50) -> np.ndarray:
    """2-D t-SNE of the rows of ``features`` after PCA to ``pca_dims`` dimensions (both seeded)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    if n < MIN_TSNE_POINTS:
        raise CbirError(f"a t-SNE map needs at least {MIN_TSNE_POINTS} images, got {n}")
    dims = min(pca_dims, n, x.shape[1])
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=seed, svd_solver="full").fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=min(float(perplexity), (n - 1) / 3.0), init="pca",
                learning_rate="auto", random_state=seed, n_jobs=1)
    with threadpool_limits(limits=1):  # one thread: reproducible sums, and no OpenMP spin on small maps
        return tsne.fit_transform(x)


def curve_with_band(values: np.ndarray, n_bootstrap: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column means of ``[Q, L]`` values (NaN skipped) and their 95% percentile bootstrap band."""
    from cbir.evaluation import bootstrap_ci

    values = np.asarray(values, dtype=np.float64)
    with np.errstate(all="ignore"):
        finite = np.isfinite(values).sum(axis=0)
        mean = np.where(finite > 0, np.nansum(values, axis=0) / np.maximum(finite, 1), np.nan)
    lo, hi = bootstrap_ci(values, n_bootstrap, seed)
    return mean, lo, hi


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------

def thumbnail(path: Path, size: int) -> np.ndarray:
    """The image at ``path`` fitted into a white ``size`` x ``size`` square (aspect kept)."""
    from PIL import Image, ImageOps

    from cbir.data.images import open_rgb

    image = open_rgb(path)
    return np.asarray(ImageOps.pad(image, (size, size), method=Image.Resampling.LANCZOS, color=(255, 255, 255)))


class Thumbnails:
    """Thumbnails of manifest rows by ``image_id``, each decoded once."""

    def __init__(self, manifest: pd.DataFrame, root: Path, size: int):
        self.paths = dict(zip(manifest["image_id"].astype(str), manifest["path"]))
        self.root, self.size, self.cache = Path(root), size, {}

    def __call__(self, image_id: str) -> np.ndarray:
        if image_id not in self.cache:
            if image_id not in self.paths:
                raise CbirError(f"image {image_id!r} of a retrieval file is not in the manifest: "
                                "re-run `dvc repro` so retrieval and curation agree")
            self.cache[image_id] = thumbnail(self.root / self.paths[image_id], self.size)
        return self.cache[image_id]


def framed(image: np.ndarray, colour: str, width: int = 3) -> np.ndarray:
    """``image`` with a coloured border of ``width`` pixels drawn inside it."""
    out = np.array(image, dtype=np.uint8, copy=True)
    rgb = (np.array(matplotlib.colors.to_rgb(colour)) * 255).round().astype(np.uint8)
    out[:width], out[-width:], out[:, :width], out[:, -width:] = rgb, rgb, rgb, rgb
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two equal-height RGB images next to each other with a white gap."""
    spacer = np.full((left.shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


def shorten(text: str, width: int = 16) -> str:
    """``text`` cut to ``width`` characters with an ellipsis."""
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------------------------
# sample trials
# ---------------------------------------------------------------------------------------------

def build_trials(ranking: pd.DataFrame, manifest: pd.DataFrame, query_ids: list[str], root: Path,
                 k: int, thumb_size: int, thumbs: Thumbnails | None = None) -> list[dict]:
    """Assemble the data of ``sample_trials_figure`` from a retrieval CSV and the manifest.

    Results keep the retrieval file's order (sorted by ``rank``) and its scores.
    """
    rows = manifest.assign(image_id=manifest["image_id"].astype(str)).set_index("image_id")
    thumbs = thumbs or Thumbnails(manifest, root, thumb_size)
    ranking = ranking.assign(query_id=ranking["query_id"].astype(str), image_id=ranking["image_id"].astype(str))
    trials = []
    for qid in query_ids:
        if qid not in rows.index:
            raise CbirError(f"query {qid!r} is not in the manifest: re-run `dvc repro` so retrieval and curation agree")
        hits = ranking[ranking["query_id"] == qid].sort_values("rank", kind="stable").head(k)
        qlabel = rows.at[qid, "label"]
        trials.append({
            "query": {"image_id": qid, "label": qlabel, "image": thumbs(qid)},
            "results": [{
                "image_id": h.image_id, "rank": int(h.rank), "score": float(h.score),
                "label": rows.at[h.image_id, "label"], "relevant": rows.at[h.image_id, "label"] == qlabel,
                "image": thumbs(h.image_id),
            } for h in hits.itertuples()],
        })
    return trials


def sample_trials_figure(trials: list[dict], thumb_size: int = 128, title: str = "",
                         row_labels: Sequence[str] | None = None):
    """One row per query: the query image, then its ranked results.

    ``trials``: dicts with ``query`` ({image, label, image_id}) and ``results`` (a list of
    {image, label, image_id, rank, score, relevant}) in retrieval order.  Each result is titled
    ``#rank  cosine`` and its label, framed green (same class as the query) or red.
    ``row_labels`` (one per trial) are written beside the query, e.g. why it was chosen.
    """
    if not trials:
        raise CbirError("no queries to draw: the retrieval file has no query; re-run `dvc repro retrieve`")
    if row_labels is not None and len(row_labels) != len(trials):
        raise ValueError("row_labels must have one entry per trial")
    ncols = 1 + max(1, max(len(t["results"]) for t in trials))
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(1.2 * ncols + 0.4, 1.5 * len(trials) + 0.5))
        axes = fig.subplots(len(trials), ncols, squeeze=False)
        for i, (row, trial) in enumerate(zip(axes, trials)):
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
                ax.axis("off")
            q = trial["query"]
            row[0].axis("on")
            row[0].imshow(q["image"])
            row[0].set_title(f"query\n{shorten(q['label'], 18)}", fontsize=7, fontweight="bold", color=QUERY)
            if row_labels is not None:
                row[0].set_ylabel(row_labels[i], fontsize=7, rotation=90, labelpad=4)
            for spine in row[0].spines.values():
                spine.set_visible(True)
                spine.set_color(QUERY)
                spine.set_linewidth(2.5)
            for ax, res in zip(row[1:], trial["results"]):
                ax.axis("on")
                ax.imshow(res["image"])
                colour = RELEVANT if res["relevant"] else IRRELEVANT
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_color(colour)
                    spine.set_linewidth(2.5)
                ax.set_title(f"#{res['rank']}  {res['score']:.3f}\n{shorten(res['label'])}", fontsize=6,
                             color=colour)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig


def trial_rows(query_ids: Sequence[str], seeded: Sequence[str], ap: Mapping[str, float]) -> tuple[list[str], list[str]]:
    """Rows of a method's trials figure: the seeded queries, then its best and worst query.

    Returns ``(query_ids, row_labels)``; a query chosen twice appears once with both reasons.
    """
    reasons: dict[str, list[str]] = {q: ["seeded"] for q in seeded}
    extremes = best_worst_queries(list(query_ids), [ap.get(q, np.nan) for q in query_ids])
    if extremes is not None:
        for reason, qid in zip(("best AP", "worst AP"), extremes):
            reasons.setdefault(qid, []).append(reason)
    order = list(reasons)
    labels = []
    for qid in order:
        value = ap.get(qid, np.nan)
        ap_text = f"AP {value:.3f}" if value is not None and np.isfinite(value) else "AP n/a"
        labels.append(f"{' + '.join(reasons[qid])}\n{ap_text}")
    return order, labels


def comparison_trials_figure(trials_a: list[dict], trials_b: list[dict], method_a: str, method_b: str,
                             ap_a: Mapping[str, float], ap_b: Mapping[str, float], title: str = ""):
    """The same queries under two methods: for each query a row of ``method_a`` then of ``method_b``."""
    if [t["query"]["image_id"] for t in trials_a] != [t["query"]["image_id"] for t in trials_b]:
        raise ValueError("both methods must show the same queries in the same order")
    trials, labels = [], []
    for ta, tb in zip(trials_a, trials_b):
        qid = ta["query"]["image_id"]
        for method, trial, ap in ((method_a, ta, ap_a), (method_b, tb, ap_b)):
            value = ap.get(qid, np.nan)
            trials.append(trial)
            labels.append(f"{shorten(method, 20)}\nAP {value:.3f}" if np.isfinite(value) else shorten(method, 20))
    return sample_trials_figure(trials, title=title, row_labels=labels)


# ---------------------------------------------------------------------------------------------
# charts
# ---------------------------------------------------------------------------------------------

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
                  methods: Sequence[str] | None = None, xlim: tuple | None = None):
    """One line per ``method`` of ``curves`` (columns ``method, <x>, precision[, lo, hi]``) with its band."""
    methods = list(methods) if methods is not None else list(dict.fromkeys(curves["method"]))
    colours = method_colours(methods)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.6, 2.8))
        ax = fig.subplots()
        for method in methods:
            part = curves[curves["method"] == method].sort_values(x)
            if part.empty:
                continue
            ax.plot(part[x], part["precision"], color=colours[method], label=method,
                    marker="o" if len(part) <= 12 else None, markersize=2.5)
            if {"lo", "hi"} <= set(part.columns) and part[["lo", "hi"]].notna().any().any():
                ax.fill_between(part[x], part["lo"], part["hi"], color=colours[method], alpha=0.18, linewidth=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        if xlim is not None:
            ax.set_xlim(*xlim)
        if pd.api.types.is_integer_dtype(curves[x]):
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(True, linewidth=0.3, alpha=0.5)
        ax.legend(loc="best")
        fig.tight_layout()
    return fig


def per_class_heatmap(per_class: pd.DataFrame, value: str = "p@10", methods: Sequence[str] | None = None,
                      title: str = "P@10 per class"):
    """Methods (rows) x classes (columns) heat map of ``value`` from ``per_class.csv``."""
    methods = list(methods) if methods is not None else list(dict.fromkeys(per_class["method"]))
    table = per_class.pivot_table(index="method", columns="label", values=value, aggfunc="first", dropna=False)
    table = table.reindex(index=methods, columns=sorted(table.columns))
    n_m, n_c = table.shape
    with matplotlib.rc_context(STYLE):
        longest = max([len(shorten(c, 20)) for c in table.columns] + [1])
        fig = Figure(figsize=(min(18.0, 2.2 + 0.42 * n_c), 1.0 + 0.32 * n_m + 0.05 * longest))
        ax = fig.subplots()
        image = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(n_c), [shorten(c, 20) for c in table.columns], rotation=45, ha="right")
        ax.set_yticks(range(n_m), [shorten(m, 22) for m in table.index])
        ax.set_xlabel("class")
        ax.set_title(title)
        if n_c * n_m <= 600:
            for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5.5,
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


def confusion_examples(ranking: pd.DataFrame, labels: Mapping[str, str], pair: tuple[str, str],
                       n: int) -> pd.DataFrame:
    """Up to ``n`` wrong results of a (query class, result class) pair, most similar first.

    One example per query (so the examples differ); ties sort by query id and rank.
    """
    frame = ranking.assign(query_label=ranking["query_id"].map(labels), result_label=ranking["image_id"].map(labels))
    frame = frame[(frame["query_label"] == pair[0]) & (frame["result_label"] == pair[1])]
    frame = frame.sort_values(["score", "query_id", "rank"], ascending=[False, True, True], kind="stable")
    return frame.drop_duplicates("query_id").head(n).reset_index(drop=True)


def message_figure(text: str, title: str = ""):
    """A small figure that only says ``text`` (when there is nothing to draw)."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.5, 1.2))
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, text, ha="center", va="center")
        if title:
            ax.set_title(title)
    return fig


def confusion_gallery(rows: Sequence[dict], title: str = ""):
    """One row per confused pair: its counts, then (query | wrong result) example thumbnails.

    ``rows``: dicts with ``query_label, result_label, count, rate`` and ``examples``: a list of
    {query_image, result_image, rank, score}.
    """
    if not rows:
        return message_figure("no wrong result in the top-k: nothing confused", title)
    with matplotlib.rc_context(STYLE):
        ncols = 1 + max(1, max(len(r["examples"]) for r in rows))
        fig = Figure(figsize=(1.9 + 2.3 * (ncols - 1), 1.45 * len(rows) + 0.4))
        axes = fig.subplots(len(rows), ncols, squeeze=False,
                            gridspec_kw={"width_ratios": [0.8] + [1.0] * (ncols - 1)})
        for axrow, row in zip(axes, rows):
            for ax in axrow:
                ax.axis("off")
            axrow[0].text(0.0, 0.5, f"{shorten(row['query_label'], 22)}\n→ {shorten(row['result_label'], 22)}\n"
                          f"{row['count']} results ({row['rate']:.1%} of top-k)", ha="left", va="center",
                          fontsize=7, transform=axrow[0].transAxes)
            for ax, ex in zip(axrow[1:], row["examples"]):
                ax.imshow(side_by_side(framed(ex["query_image"], QUERY), framed(ex["result_image"], IRRELEVANT)))
                ax.set_title(f"query | #{ex['rank']}  {ex['score']:.3f}", fontsize=6)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig


def save_figure(fig, target: Path, dpi: int = 150) -> list[Path]:
    """PNG (``dpi``) and a vector PDF beside it, each written atomically and without timestamps."""
    written = []
    with matplotlib.rc_context(STYLE):
        for suffix, kwargs in ((".png", {"dpi": dpi, "metadata": {"Software": None}}),
                               (".pdf", {"metadata": {"CreationDate": None, "Creator": None, "Producer": None}})):
            path = Path(target).with_suffix(suffix)
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=suffix[1:], facecolor="white", **kwargs)
            written.append(path)
    return written


def drawn_panels(fig) -> int:
    """Axes that show something (an image, a line, a patch or a collection), colour bars excluded."""
    return sum(1 for ax in fig.axes if ax.get_label() != "<colorbar>"
               and (ax.images or ax.lines or ax.patches or ax.collections))


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------

def _read_csv(path: Path, what: str, columns: set[str]) -> pd.DataFrame:
    if not path.is_file():
        raise CbirError(f"{path} not found: run `dvc repro {what}` first")
    frame = pd.read_csv(path, dtype={"method": str, "query_id": str, "image_id": str, "label": str})
    missing = columns - set(frame.columns)
    if missing:
        raise CbirError(f"{path} lacks columns {sorted(missing)}: re-run `dvc repro {what}`")
    return frame


def pr_curves_with_band(params: dict, root: Path, methods: Sequence[str], pr: pd.DataFrame) -> pd.DataFrame:
    """``method, recall, precision, lo, hi``: ``pr.csv``'s band if it has one, else a seeded bootstrap
    over the per-query interpolated curves recomputed from the features (as the evaluate stage does)."""
    if {"lo", "hi"} <= set(pr.columns):
        return pr
    from cbir import evaluation as ev
    from cbir.stages_eval import prepare

    cfg = params.get("evaluation") or {}
    n_bootstrap, seed = int(cfg.get("n_bootstrap", 1000)), int(cfg.get("seed", params.get("seed", 0)))
    block = int((params.get("retrieval") or {}).get("block_size", 1024))
    parts = []
    for method in methods:
        data = prepare(params, method, root)
        labels = data["manifest"]["label"].to_numpy()
        stats = ev.ranking_statistics(data["queries"], data["database"], labels[data["query_rows"]],
                                      labels[data["database_rows"]], ks=[1], exclude=data["exclude"],
                                      curve_k=1, block_size=block)
        rows = stats.interpolated[np.isfinite(stats.interpolated).all(axis=1)]
        mean, lo, hi = curve_with_band(rows, n_bootstrap, seed)
        parts.append(pd.DataFrame({"method": method, "recall": ev.RECALL_LEVELS, "precision": mean,
                                   "lo": lo, "hi": hi}))
    return pd.concat(parts, ignore_index=True)


def _fmt(value) -> str:
    """A metric for a caption: three decimals, or n/a."""
    return "n/a" if value is None or not np.isfinite(value) else f"{float(value):.3f}"


def _features(root: Path, ds: str, method: str, n_rows: int) -> np.ndarray:
    from cbir.stages_eval import read_features

    return read_features(root, ds, method, n_rows)


def run_figures(params: dict, root: Path) -> None:
    """Stage shell: ``reports/figures/`` (PNG + PDF + ``figures.json``), replaced as a whole."""
    from cbir.features.extract import manifest_path, read_manifest

    root = Path(root)
    start = time.perf_counter()
    ds = dataset_name(params)
    cfg = figure_settings(params)
    methods = list(params.get("methods") or {})
    if not methods:
        raise CbirError("params has no methods: add at least one under methods")
    manifest = read_manifest(manifest_path(root, params))
    manifest["image_id"] = manifest["image_id"].astype(str)
    labels = dict(zip(manifest["image_id"], manifest["label"].astype(str)))
    metrics_file = root / "metrics" / f"{ds}.json"
    if not metrics_file.exists():
        raise CbirError(f"{metrics_file} not found: run the evaluate stage first")
    metrics = read_json(metrics_file)
    missing = [m for m in methods if m not in metrics]
    if missing:
        raise CbirError(f"{metrics_file} has no entry for {', '.join(missing)}: re-run `dvc repro evaluate`")
    metrics = {m: metrics[m] for m in methods}
    plots = root / "reports" / "plots"
    per_query = _read_csv(plots / "per_query.csv", "evaluate", {"method", "query_id", "ap"})
    pk = _read_csv(plots / "pk.csv", "evaluate", {"method", "k", "precision"})
    pr = _read_csv(plots / "pr.csv", "evaluate", {"method", "recall", "precision"})
    per_class = _read_csv(plots / "per_class.csv", "evaluate", {"method", "label", "p@10"})
    k = int((params.get("retrieval") or {}).get("k", 10))
    baseline, other, role = compared_methods(metrics, (params.get("evaluation") or {}).get("baseline"))
    thumbs = Thumbnails(manifest, root, cfg["thumb_size"])

    rankings, ap = {}, {}
    for method in methods:
        csv = root / "data" / "retrieval" / ds / f"{method}.csv"
        rankings[method] = _read_csv(csv, f"retrieve@{method}", {"query_id", "rank", "image_id", "score"})
        part = per_query[per_query["method"] == method]
        ap[method] = dict(zip(part["query_id"], part["ap"].astype(float)))
    query_ids = sorted(rankings[methods[0]]["query_id"].unique().tolist())
    seeded = pick_queries(query_ids, cfg["n_queries"], cfg["seed"])
    index: list[dict] = []
    out_dir = root / "reports" / "figures"

    with atomic_dir(out_dir) as tmp:
        def emit(fig, name: str, title: str, caption: str) -> None:
            panels = drawn_panels(fig)
            save_figure(fig, tmp / name, cfg["dpi"])
            index.append({"name": name, "png": f"{name}.png", "pdf": f"{name}.pdf", "title": title,
                          "caption": caption, "panels": panels})

        emit(comparison_figure(metrics, baseline), "comparison", "Method comparison",
             f"P@10 and mAP per method with 95% bootstrap confidence intervals; the baseline `{baseline}` is hatched.")
        ks = pk["k"].max()
        emit(curves_figure(pk, "k", "k (results inspected)", "P@k", f"Precision at k, {ds}", methods,
                           xlim=(1, ks) if ks > 1 else None),
             "pk_curves", "Precision at k",
             f"Mean P@k over queries for k = 1..{ks}, with the 95% percentile bootstrap band over queries "
             f"(evaluation seed {(params.get('evaluation') or {}).get('seed', 0)}).")
        pr_band = pr_curves_with_band(params, root, methods, pr)
        emit(curves_figure(pr_band, "recall", "recall", "interpolated precision", f"Precision-recall, {ds}",
                         methods, xlim=(0, 1)),
             "pr_curves", "Precision-recall",
             "11-point interpolated precision-recall, mean over queries with a relevant item, with the 95% "
             "percentile bootstrap band over queries.")
        emit(per_class_heatmap(per_class, "p@10", methods, title=f"P@10 per class, {ds}"), "per_class_p10",
             "P@10 per class", "Mean P@10 of each class's queries, per method.")

        for method in methods:
            order, row_labels = trial_rows(query_ids, seeded, ap[method])
            trials = build_trials(rankings[method], manifest, order, root, k, cfg["thumb_size"], thumbs)
            fig = sample_trials_figure(trials, title=f"{ds}: {method}, cosine top-{k} "
                                       "(green frame: same class as the query, red: another class)",
                                       row_labels=row_labels)
            emit(fig, f"trials_{safe_name(method)}", f"Sample trials: {method}",
                 f"Query (blue) beside its top-{k} under `{method}`, each with rank, cosine similarity and "
                 f"label; {len(seeded)} seeded queries (seed {cfg['seed']}, the same for every method) and the "
                 f"method's best and worst query by AP.")
        ta = build_trials(rankings[baseline], manifest, seeded, root, k, cfg["thumb_size"], thumbs)
        if other is not None:
            tb = build_trials(rankings[other], manifest, seeded, root, k, cfg["thumb_size"], thumbs)
            fig = comparison_trials_figure(ta, tb, baseline, other, ap[baseline], ap[other],
                                           title=f"{ds}: baseline {baseline} vs {role} {other} (by mAP), top-{k}")
            emit(fig, "trials_baseline_vs_best", f"Baseline `{baseline}` against the {role} method `{other}`",
                 f"The same seeded queries under the baseline `{baseline}` (mAP {_fmt(metrics[baseline].get('map'))}) "
                 f"and the {role} method by mAP, `{other}` (mAP {_fmt(metrics[other].get('map'))}).")
        else:
            fig = sample_trials_figure(ta, title=f"{ds}: {baseline} (the only method), top-{k}",
                                       row_labels=[shorten(baseline, 20)] * len(ta))
            emit(fig, "trials_baseline_vs_best", f"Baseline `{baseline}` (the only method)",
                 f"The seeded queries under `{baseline}`, the only method configured: nothing to compare with.")

        n_rows = len(manifest)
        sample = stratified_subsample(manifest["label"].to_numpy(), cfg["tsne_max_points"], cfg["seed"])
        caption = (f"t-SNE (PCA to {cfg['pca_dims']} dimensions first, seed {cfg['seed']}) of {len(sample)} of "
                   f"{n_rows} images, coloured by class.")
        if len(sample) >= MIN_TSNE_POINTS:
            panels = []
            for method, role_name in ((baseline, "baseline"), (other, role)):
                if method is None:
                    continue
                xy = embed_2d(_features(root, ds, method, n_rows)[sample], cfg["seed"], cfg["tsne_perplexity"],
                              cfg["pca_dims"])
                panels.append((f"{method} ({role_name})", xy, manifest["label"].to_numpy()[sample]))
            fig = embedding_figure(panels, title=f"t-SNE of the embeddings, {ds}")
        else:
            log.warning("figures: only %d images, too few for a t-SNE map", len(sample))
            fig = message_figure(f"{len(sample)} images: too few for a t-SNE map (needs {MIN_TSNE_POINTS})",
                                 f"t-SNE of the embeddings, {ds}")
            caption = f"No map: {len(sample)} images are too few for t-SNE."
        emit(fig, "embedding_tsne", "Embedding maps (t-SNE)", caption)

        per_label = manifest[manifest["image_id"].isin(query_ids)]["label"].value_counts().to_dict()
        for method in methods:
            top = rankings[method][rankings[method]["rank"] <= k]
            pairs = confused_pairs(top["query_id"].map(labels), top["image_id"].map(labels), per_label, k)
            rows = []
            for pair in pairs.head(cfg["n_pairs"]).to_dict("records"):
                examples = confusion_examples(top, labels, (pair["query_label"], pair["result_label"]),
                                              cfg["n_examples"])
                rows.append({"query_label": pair["query_label"], "result_label": pair["result_label"],
                             "count": int(pair["count"]), "rate": float(pair["rate"]),
                             "examples": [{"query_image": thumbs(e.query_id), "result_image": thumbs(e.image_id),
                                           "rank": int(e.rank), "score": float(e.score)}
                                          for e in examples.itertuples()]})
            emit(confusion_gallery(rows, title=f"{ds}: most confused class pairs, {method}, top-{k}"),
                 f"confusions_{safe_name(method)}", f"Confused classes: {method}",
                 f"The {len(rows)} (query class → retrieved class) pairs most often wrong in the top-{k} of "
                 f"`{method}`, with the most similar wrong results (query framed blue, result red).")
        write_json(tmp / FIGURES_INDEX, index)
        for path in (tmp, *tmp.iterdir()):  # temporary files are private; published ones are not
            path.chmod(0o755 if path.is_dir() else 0o644)
    log.info("figures: read %s, %d retrieval files and %s; wrote %d figures (PNG + PDF) to %s in %.1fs",
             manifest_path(root, params), len(methods), plots, len(index), out_dir, time.perf_counter() - start)
