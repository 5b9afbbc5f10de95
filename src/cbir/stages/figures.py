"""Stage ``figures``: a paper's figures from the retrievals, the metrics and the features.

Every figure is a PNG (``figures.dpi``, 150 by default) with a vector PDF beside it in
``reports/<ds>/figures/``, plus ``figures.json`` (file, title, caption, panel count, in reading order)
for the report:

* ``trials_<method>``: the paper's Figures 3-6 — seeded queries plus the method's best and worst
  query (by AP), each beside its top-k with rank, cosine similarity and label (blue frame and a dot: same
  class as the query, vermillion frame and a cross: another class); the seeded queries are the same for every method;
* ``trials_baseline_vs_best``: the same seeded queries under the baseline (the paper's) method and
  the best method by mAP (the runner-up when the baseline is best);
* ``pk_curves`` / ``pr_curves``: P@k and interpolated precision-recall of every method on one
  axis, with the evaluate stage's 95% bootstrap bands over queries;
* ``per_class_p10``: P@10 heat map, methods x classes;
* ``comparison``: P@10 and mAP per method with 95% CI error bars;
* ``embedding_tsne``: 2-D t-SNE maps (PCA to 50 dimensions first, seeded) of the baseline and
  the best method's features, coloured by class;
* ``confusions_<method>``: the most confused (query class, retrieved class) pairs in the top-k,
  with example thumbnails.

Figures are deterministic: seeded choices, stable sorting, one-thread t-SNE, no timestamps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cbir.data.manifest import read_manifest
from cbir.errors import CbirError
from cbir.features.store import read_features
from cbir.figures.charts import (
    comparison_figure,
    confusion_gallery,
    curves_figure,
    embedding_figure,
    per_class_heatmap,
)
from cbir.figures.select import (
    compared_methods,
    confused_pairs,
    confusion_examples,
    embed_2d,
    pick_queries,
    stratified_subsample,
    trial_rows,
)
from cbir.figures.style import (
    FIGURES_INDEX,
    MIN_TSNE_POINTS,
    FigureWriter,
    figure_settings,
    message_figure,
    safe_name,
)
from cbir.figures.thumbnails import Thumbnails, shorten
from cbir.figures.trials import (
    build_trials,
    comparison_trials_figure,
    sample_trials_figure,
)
from cbir.fileio import atomic_dir, read_json, write_json
from cbir.layout import Layout

log = logging.getLogger("cbir")


def _read_csv(path: Path, what: str, columns: set[str]) -> pd.DataFrame:
    if not path.is_file():
        raise CbirError(f"{path} not found: run `dvc repro {what}` first")
    frame = pd.read_csv(path, dtype={"method": str, "query_id": str, "image_id": str, "label": str},
                        keep_default_na=False, na_values=[""])  # a class named NA stays "NA"
    missing = columns - set(frame.columns)
    if missing:
        raise CbirError(f"{path} lacks columns {sorted(missing)}: re-run `dvc repro {what}`")
    return frame


def _fmt(value) -> str:
    """A metric for a caption: three decimals, or n/a."""
    return "n/a" if value is None or not np.isfinite(value) else f"{float(value):.3f}"


def run(params: dict, root: str | Path) -> None:
    """Write ``reports/<ds>/figures/`` (PNG + PDF + ``figures.json``), replaced as a whole."""
    root = Path(root)
    paths = Layout(root, params)
    start = time.perf_counter()
    ds = paths.dataset
    if not params.get("methods"):
        raise CbirError("params has no methods: add at least one under methods")
    cfg = figure_settings(params)
    methods = cfg["methods"]  # figures.methods: a subset, in its order (null: all)
    manifest = read_manifest(paths.manifest)
    manifest["image_id"] = manifest["image_id"].astype(str)
    labels = dict(zip(manifest["image_id"], manifest["label"].astype(str)))
    metrics_file = paths.metrics
    if not metrics_file.exists():
        raise CbirError(f"{metrics_file} not found: run the evaluate stage first")
    metrics = read_json(metrics_file)
    missing = [m for m in methods if m not in metrics]
    if missing:
        raise CbirError(f"{metrics_file} has no entry for {', '.join(missing)}: re-run `dvc repro evaluate`")
    metrics = {m: metrics[m] for m in methods}
    per_query = _read_csv(paths.plot("per_query"), "evaluate", {"method", "query_id", "ap"})
    pk = _read_csv(paths.plot("pk"), "evaluate", {"method", "k", "precision"})
    pr = _read_csv(paths.plot("pr"), "evaluate", {"method", "recall", "precision", "lo", "hi"})
    per_class = _read_csv(paths.plot("per_class"), "evaluate", {"method", "label", "p@10"})
    k = int((params.get("retrieval") or {}).get("k", 10))
    baseline, other, role = compared_methods(metrics, (params.get("evaluation") or {}).get("baseline"))
    thumbs = Thumbnails(manifest, root, cfg["thumb_size"])

    rankings, ap = {}, {}
    for method in methods:
        csv = paths.retrieval(method)
        rankings[method] = _read_csv(csv, f"retrieve@{paths.dataset}-{method}", {"query_id", "rank", "image_id", "score"})
        part = per_query[per_query["method"] == method]
        ap[method] = dict(zip(part["query_id"], part["ap"].astype(float)))
    query_ids = sorted(rankings[methods[0]]["query_id"].unique().tolist())
    seeded = pick_queries(query_ids, cfg["n_queries"], cfg["seed"])
    index: list[dict] = []
    out_dir = paths.figures_dir

    with atomic_dir(out_dir) as tmp, FigureWriter() as writer:
        def emit(name: str, title: str, caption: str, build, /, *args, **kwargs) -> None:
            """``build(*args, **kwargs)`` built and written in a worker while the next one's data is gathered."""
            panels = writer.draw(build, args, tmp / name, cfg["dpi"], cfg["width"], cfg["font_size"], **kwargs)
            index.append({"name": name, "png": f"{name}.png", "pdf": f"{name}.pdf", "title": title,
                          "caption": caption, "panels": panels})

        # the t-SNE maps (the slowest computation) start first, in the workers, while the other figures are built
        n_rows = len(manifest)
        sample = stratified_subsample(manifest["label"].to_numpy(), cfg["tsne_max_points"], cfg["seed"])
        labels_shown = manifest["label"].to_numpy()[sample]
        tsne_caption = (f"t-SNE (PCA to {cfg['pca_dims']} dimensions first, {cfg['tsne_iterations']} iterations, "
                        f"seed {cfg['seed']}) of {len(sample)} of {n_rows} images, coloured by class.")
        maps = None
        if len(sample) >= MIN_TSNE_POINTS:
            maps = [(f"{method} ({role_name})",
                     writer.run(embed_2d, read_features(paths.features(method), method, manifest)[sample], cfg["seed"],
                                cfg["tsne_perplexity"], cfg["pca_dims"], cfg["tsne_iterations"]))
                    for method, role_name in ((baseline, "baseline"), (other, role)) if method is not None]

        emit("comparison", "Method comparison",
             f"P@10 and mAP per method with 95% bootstrap confidence intervals; the baseline `{baseline}` is hatched.",
             comparison_figure, metrics, baseline)
        ks = pk["k"].max()
        emit("pk_curves", "Precision at k",
             f"Mean P@k over queries for k = 1..{ks}, with the 95% percentile bootstrap band over queries "
             f"(evaluation seed {(params.get('evaluation') or {}).get('seed', 0)}).",
             curves_figure, pk, "k", "k (results inspected)", "P@k", f"Precision at k, {ds}", methods,
             xlim=(1, ks) if ks > 1 else None)
        emit("pr_curves", "Precision-recall",
             "11-point interpolated precision-recall, mean over queries with a relevant item, with the 95% "
             "percentile bootstrap band over queries.",
             curves_figure, pr, "recall", "recall", "interpolated precision", f"Precision-recall, {ds}", methods,
             xlim=(0, 1))
        emit("per_class_p10", "P@10 per class", "Mean P@10 of each class's queries, per method.",
             per_class_heatmap, per_class, "p@10", methods, title=f"P@10 per class, {ds}")

        for method in methods:
            order, row_labels = trial_rows(query_ids, seeded, ap[method])
            trials = build_trials(rankings[method], manifest, order, root, k, cfg["thumb_size"], thumbs)
            emit(f"trials_{safe_name(method)}", f"Sample trials: {method}",
                 f"Query (black frame) beside its top-{k} under `{method}`, each with rank, cosine similarity and "
                 f"label; {len(seeded)} seeded queries (seed {cfg['seed']}, the same for every method) and the "
                 f"method's best and worst query by AP.",
                 sample_trials_figure, trials, row_labels=row_labels,
                 title=f"{ds}: {method}, cosine top-{k} (blue, dot: same class as the query; vermillion, cross: another class)")
        ta = build_trials(rankings[baseline], manifest, seeded, root, k, cfg["thumb_size"], thumbs)
        if other is not None:
            tb = build_trials(rankings[other], manifest, seeded, root, k, cfg["thumb_size"], thumbs)
            emit("trials_baseline_vs_best", f"Baseline `{baseline}` against the {role} method `{other}`",
                 f"The same seeded queries under the baseline `{baseline}` (mAP {_fmt(metrics[baseline].get('map'))}) "
                 f"and the {role} method by mAP, `{other}` (mAP {_fmt(metrics[other].get('map'))}).",
                 comparison_trials_figure, ta, tb, baseline, other, ap[baseline], ap[other],
                 title=f"{ds}: baseline {baseline} vs {role} {other} (by mAP), top-{k}")
        else:
            emit("trials_baseline_vs_best", f"Baseline `{baseline}` (the only method)",
                 f"The seeded queries under `{baseline}`, the only method configured: nothing to compare with.",
                 sample_trials_figure, ta, title=f"{ds}: {baseline} (the only method), top-{k}",
                 row_labels=[shorten(baseline, 20)] * len(ta))

        if maps is not None:
            panels = [(name, writer.result(future, f"t-SNE map of {name}"), labels_shown) for name, future in maps]
            emit("embedding_tsne", "Embedding maps (t-SNE)", tsne_caption,
                 embedding_figure, panels, title=f"t-SNE of the embeddings, {ds}")
        else:
            log.warning("figures: only %d images, too few for a t-SNE map", len(sample))
            emit("embedding_tsne", "Embedding maps (t-SNE)", f"No map: {len(sample)} images are too few for t-SNE.",
                 message_figure, f"{len(sample)} images: too few for a t-SNE map (needs {MIN_TSNE_POINTS})",
                 f"t-SNE of the embeddings, {ds}")

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
            emit(f"confusions_{safe_name(method)}", f"Confused classes: {method}",
                 f"The {len(rows)} (query class → retrieved class) pairs most often wrong in the top-{k} of "
                 f"`{method}`, with the most similar wrong results (query framed black, result vermillion).",
                 confusion_gallery, rows, title=f"{ds}: most confused class pairs, {method}, top-{k}")
        writer.close()
        for entry in index:
            entry["panels"] = entry["panels"].result()
        write_json(tmp / FIGURES_INDEX, index)
        for path in (tmp, *tmp.iterdir()):  # temporary files are private; published ones are not
            path.chmod(0o755 if path.is_dir() else 0o644)
    log.info("figures: read %s, %d retrieval files and %s; wrote %d figures (PNG + PDF) to %s in %.1fs",
             paths.manifest, len(methods), paths.plots_dir, len(index), out_dir, time.perf_counter() - start)
