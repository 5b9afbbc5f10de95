"""The charts that compare methods (stage ``summarize``): method comparison, P@k and PR curves, P@10 per class,
the baseline against the best method's trials and the t-SNE maps, drawn through a :class:`FigureWriter`; a
benchmark (``ctx["kind"]``) draws its own charts instead of the class-level ones
(:mod:`cbir.figures.benchmark_summary`), its trials marked by its judgements and its t-SNE coloured by role.

``ctx`` and ``inputs`` are the figures stage's dicts (:mod:`cbir.figures.figure_files`): settings, manifest and
thumbnails; metrics, plot tables, the compared methods' rankings, per-query AP and the seeded queries.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from cbir.features.store import read_features
from cbir.settings import need
from cbir.figures.charts import comparison_figure, curves_figure, embedding_figure, per_class_heatmap
from cbir.figures.select import embed_2d, stratified_subsample
from cbir.figures.style import MIN_TSNE_POINTS, FigureWriter, message_figure
from cbir.figures.thumbnails import shorten
from cbir.figures.trials import build_trials, comparison_trials_figure, sample_trials_figure
from cbir.figures.benchmark_charts import role_embedding_figure
from cbir.figures.benchmark_summary import LEGEND, draw_charts, title_of
from cbir.figures.judged import roles
from cbir.report.headline import flat, headline, label

log = logging.getLogger("cbir")


def fmt(value) -> str:
    """A metric for a caption: three decimals, or n/a."""
    return "n/a" if value is None or not np.isfinite(value) else f"{float(value):.3f}"


def draw_summary(params: Mapping, ctx: Mapping, inputs: Mapping, writer: FigureWriter, emit,
                 maps_made: Mapping | None = None) -> tuple[list, list, dict]:
    """The charts comparing methods, in reading order: (those before the trials, those after them, and the
    t-SNE coordinates of each mapped method). ``maps_made`` (method -> coordinates) are used, not recomputed."""
    cfg, ds, paths, manifest = ctx["cfg"], ctx["ds"], ctx["paths"], ctx["manifest"]
    baseline, other, role = inputs["baseline"], inputs["other"], inputs["role"]
    kind = ctx.get("kind")
    by = label(headline(kind))
    before: list[dict] = []
    after: list[dict] = []
    # the t-SNE maps (the slowest computation) start first, in the workers, while the other figures are built
    n_rows = len(manifest)
    colour_by = (manifest["label"].to_numpy() if kind is None else
                 roles(manifest["image_id"], manifest["split"], ctx["judged"]))
    sample = stratified_subsample(colour_by, cfg["tsne_max_points"], cfg["seed"])
    labels_shown = colour_by[sample]
    tsne_caption = (f"t-SNE (PCA to {cfg['pca_dims']} dimensions first, {cfg['tsne_iterations']} iterations, "
                    f"seed {cfg['seed']}) of {len(sample)} of {n_rows} images, coloured by "
                    + ("class." if kind is None else "role: queries, the database images judged relevant to a query, "
                       "and the rest."))
    maps = None
    made = dict(maps_made or {})
    if len(sample) >= MIN_TSNE_POINTS:
        maps = [(method, f"{method} ({role_name})", made[method] if method in made else
                 writer.run(embed_2d, read_features(paths.features(method), method, manifest)[sample], cfg["seed"],
                            cfg["tsne_perplexity"], cfg["pca_dims"], cfg["tsne_iterations"]))
                for method, role_name in ((baseline, "baseline"), (other, role)) if method is not None]
    if kind is not None:
        draw_charts(ctx, inputs, emit, before, inputs["ranking_of"])
    else:
        _class_charts(params, ctx, inputs, emit, before)
    _after(ctx, inputs, emit, after, by)
    coordinates = {}
    if maps is not None:
        for method, name, future in maps:
            coordinates[method] = future if isinstance(future, np.ndarray) else writer.result(future, f"t-SNE map of {name}")
        panels = [(name, coordinates[method], labels_shown) for method, name, _ in maps]
        if kind is None:
            emit(after, "embedding_tsne", "Embedding maps (t-SNE)", tsne_caption,
                 embedding_figure, panels, title=f"t-SNE of the embeddings, {ds}")
        else:
            emit(after, "embedding_tsne", "Embedding maps (t-SNE)", tsne_caption,
                 role_embedding_figure, panels, title=f"t-SNE of the embeddings, {title_of(ds, kind)}")
    else:
        log.warning("figures: only %d images, too few for a t-SNE map", len(sample))
        emit(after, "embedding_tsne", "Embedding maps (t-SNE)", f"No map: {len(sample)} images are too few for t-SNE.",
             message_figure, f"{len(sample)} images: too few for a t-SNE map (needs {MIN_TSNE_POINTS})",
             f"t-SNE of the embeddings, {ds}")
    return before, after, coordinates


def _class_charts(params: Mapping, ctx: Mapping, inputs: Mapping, emit, before: list) -> None:
    """Class labels' charts: P@10 and mAP bars, P@k and PR curves, P@10 per class."""
    ds, methods, metrics, baseline = ctx["ds"], ctx["methods"], inputs["metrics"], inputs["baseline"]
    emit(before, "comparison", "Method comparison",
         f"P@10 and mAP per method with 95% bootstrap confidence intervals; the baseline `{baseline}` is hatched.",
         comparison_figure, metrics, baseline)
    pk = inputs["pk"]
    ks = pk["k"].max()
    emit(before, "pk_curves", "Precision at k",
         f"Mean P@k over queries for k = 1..{ks}, with the 95% percentile bootstrap band over queries "
         f"(evaluation seed {need(need(params, 'evaluation'), 'seed', 'evaluation')}).",
         curves_figure, pk, "k", "k (results inspected)", "P@k", f"Precision at k, {ds}", methods,
         xlim=(1, ks) if ks > 1 else None)
    emit(before, "pr_curves", "Precision-recall",
         "11-point interpolated precision-recall, mean over queries with a relevant item, with the 95% "
         "percentile bootstrap band over queries.",
         curves_figure, inputs["pr"], "recall", "recall", "interpolated precision", f"Precision-recall, {ds}",
         methods, xlim=(0, 1))
    emit(before, "per_class_p10", "P@10 per class", "Mean P@10 of each class's queries, per method.",
         per_class_heatmap, inputs["per_class"], "p@10", methods, title=f"P@10 per class, {ds}")


def trial_extras(ctx: Mapping, query_ids) -> dict:
    """``build_trials``' keyword arguments for a benchmark: the judged statuses, copy detection's references
    and revisitop's query boxes (empty for class labels)."""
    if ctx.get("kind") is None:
        return {}
    extras: dict = {"judged": ctx["statuses"]}
    queries = ctx["judged"]["queries"]
    if ctx["kind"] == "pairs":
        extras["references"] = {q: [str(r) for r in (queries.get(q) or {}).get("positives") or []] for q in query_ids}
    if ctx["kind"] == "revisitop":
        extras["query_images"] = ctx["boxed"](query_ids)
    return extras


def _after(ctx: Mapping, inputs: Mapping, emit, after: list, by: str) -> None:
    """``trials_baseline_vs_best``: the seeded queries under the baseline and the best method by the
    dataset's headline metric ``by`` (the runner-up when the baseline is best)."""
    cfg, ds, manifest, k, kind = ctx["cfg"], ctx["ds"], ctx["manifest"], ctx["k"], ctx.get("kind")
    metrics, baseline, other, role = inputs["metrics"], inputs["baseline"], inputs["other"], inputs["role"]
    key = headline(kind)
    value = flat(metrics, kind)
    rankings, ap = inputs["rankings"], inputs["ap"]
    seeded = inputs["seeded"]
    extras = trial_extras(ctx, seeded)
    marks = "" if kind is None else f"; {LEGEND[kind]}"
    ta = build_trials(rankings[baseline], manifest, seeded, ctx["root"], k, cfg["thumb_size"], ctx["thumbs"], **extras)
    if other is not None:
        tb = build_trials(rankings[other], manifest, seeded, ctx["root"], k, cfg["thumb_size"], ctx["thumbs"], **extras)
        emit(after, "trials_baseline_vs_best", f"Baseline `{baseline}` against the {role} method `{other}`",
             f"The same seeded queries under the baseline `{baseline}` ({by} {fmt(value[baseline].get(key))}) "
             f"and the {role} method by {by}, `{other}` ({by} {fmt(value[other].get(key))}){marks}.",
             comparison_trials_figure, ta, tb, baseline, other, ap[baseline], ap[other],
             title=f"{ds if kind is None else title_of(ds, kind)}: baseline {baseline} vs {role} {other} (by {by}), "
                   f"top-{k}")
    else:
        emit(after, "trials_baseline_vs_best", f"Baseline `{baseline}` (the only method)",
             f"The seeded queries under `{baseline}`, the only method configured: nothing to compare with.",
             sample_trials_figure, ta, title=f"{ds if kind is None else title_of(ds, kind)}: {baseline} "
                                             f"(the only method), top-{k}",
             row_labels=[shorten(baseline, 20)] * len(ta))
