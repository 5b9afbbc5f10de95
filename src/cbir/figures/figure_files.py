"""Stage ``figures`` (one per dataset x method) and the summary charts of stage ``summarize``: a paper's
figures from the retrievals, the metrics and the features.

Every figure is a PNG (``figures.dpi``, 150 by default) with a vector PDF beside it in
``reports/<ds>/figures/``, plus ``figures.json`` (file, title, caption, panel count, in reading order)
for the report. :func:`run_method` draws one method's ``trials_<method>`` and ``confusions_<method>``
(its figures.json entries go to ``data/figures/<ds>/<method>.json``), so a change to one method redraws
only its own figures; :func:`combine` draws the charts that compare methods and writes figures.json;
:func:`run` draws them all, replacing the folder as a whole:

* ``trials_<method>``: the paper's Figures 3-6 — seeded queries plus the method's best and worst
  query (by AP), each beside its top-k with rank, cosine similarity and label (blue frame and a dot: same
  class as the query, vermillion frame and a cross: another class); the seeded queries are the same for every method;
* ``trials_baseline_vs_best``: the same seeded queries under the baseline (the paper's) method and
  the best method by the dataset's headline metric (P@10 for class labels, as the README; the runner-up when
  the baseline is best);
* ``pk_curves`` / ``pr_curves``: P@k and interpolated precision-recall of every method on one
  axis, with the evaluate stage's 95% bootstrap bands over queries;
* ``per_class_p10``: P@10 heat map, methods x classes;
* ``comparison``: P@10 and mAP per method with 95% CI error bars;
* ``embedding_tsne``: 2-D t-SNE maps (PCA to 50 dimensions first, seeded) of the baseline and
  the best method's features, coloured by class;
* ``confusions_<method>``: the most confused (query class, retrieved class) pairs in the top-k,
  with example thumbnails.

That is the class-level set. A benchmark (``data/curated/<ds>/judgements.json``) gets its own, chosen by its
judgements' kind (:mod:`cbir.figures.benchmark_summary`, listed in docs/benchmarks.md): its metrics as bars,
copy detection's pooled precision-recall, µAP per family, distractor scores and ``misses_<method>`` in place
of ``confusions_<method>``, UKBench's N-S distribution; trials marked by the judgements; the best method by
the benchmark's headline metric; t-SNE coloured by role.

Figures are deterministic: seeded choices, stable sorting, one-thread t-SNE, no timestamps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cbir.data.manifest import read_manifest
from cbir.errors import CbirError
from cbir.features.store import recorded_hashes
from cbir.data.benchmarks import JUDGEMENTS_FILE
from cbir.figures.benchmark_summary import LEGEND, PER_METHOD, draw_misses, title_of
from cbir.figures.charts import confusion_gallery
from cbir.figures.judged import judged_statuses, read_judged
from cbir.figures.select import compared_methods, confused_pairs, confusion_examples, pick_queries, trial_rows
from cbir.figures.style import FIGURES_INDEX, FigureWriter, figure_settings, safe_name
from cbir.figures.summary import draw_summary, trial_extras
from cbir.figures.thumbnails import Thumbnails
from cbir.figures.trials import boxed_queries, build_trials, sample_trials_figure
from cbir.fileio import atomic_dir, atomic_group, read_json, sha256_bytes, temp_home, write_json
from cbir.layout import Layout
from cbir.report.headline import best
from cbir.settings import need

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


def _context(params: dict, root: Path) -> dict:
    """What every figure needs: settings, the manifest, labels and thumbnails (checked first)."""
    paths = Layout(root, params)
    if not params.get("methods"):
        raise CbirError("params has no methods: add at least one under methods")
    cfg = figure_settings(params)
    manifest = read_manifest(paths.manifest)
    manifest["image_id"] = manifest["image_id"].astype(str)
    judged = read_judged(paths.curated_dir / JUDGEMENTS_FILE)  # a benchmark's judgements: its own figures
    thumbs = Thumbnails(manifest, root, cfg["thumb_size"])
    ctx = {"root": root, "paths": paths, "ds": paths.dataset, "cfg": cfg, "methods": cfg["methods"],
           "manifest": manifest, "labels": dict(zip(manifest["image_id"], manifest["label"].astype(str))),
           "k": int(need(need(params, "retrieval"), "k", "retrieval")), "thumbs": thumbs,
           "judged": judged, "kind": judged["kind"] if judged else None,
           "statuses": judged_statuses(judged) if judged else None}
    if ctx["kind"] == "revisitop":
        ctx["boxed"] = lambda ids: boxed_queries(ids, judged, manifest, thumbs, cfg["thumb_size"])
    return ctx


def _ranking(ctx: dict, method: str) -> pd.DataFrame:
    paths = ctx["paths"]
    return _read_csv(paths.retrieval(method), f"evaluate@{paths.dataset}",
                     {"query_id", "rank", "image_id", "score"})


def _seeded(ctx: dict, ranking: pd.DataFrame) -> tuple[list, list]:
    """Every query id (sorted) and the seeded ones, the same for every method (they share the queries)."""
    query_ids = sorted(ranking["query_id"].unique().tolist())
    return query_ids, pick_queries(query_ids, ctx["cfg"]["n_queries"], ctx["cfg"]["seed"])


def _summary_inputs(params: dict, ctx: dict) -> dict:
    """The evaluate tables and metrics the summary charts read, checked before anything is drawn."""
    paths = ctx["paths"]
    metrics_file = paths.metrics
    if not metrics_file.exists():
        raise CbirError(f"{metrics_file} not found: run `dvc repro evaluate@<dataset>` first")
    metrics = read_json(metrics_file)
    methods = ctx["methods"]
    missing = [m for m in methods if m not in metrics]
    if missing:
        raise CbirError(f"{metrics_file} has no entry for {', '.join(missing)}: re-run `dvc repro evaluate@<dataset>`")
    metrics = {m: metrics[m] for m in methods}
    per_query = _read_csv(paths.plot("per_query"), f"evaluate@{paths.dataset}", {"method", "query_id", "ap"})
    inputs = {"metrics": metrics,
              "pk": _read_csv(paths.plot("pk"), f"evaluate@{paths.dataset}", {"method", "k", "precision"}),
              "pr": _read_csv(paths.plot("pr"), f"evaluate@{paths.dataset}", {"method", "recall", "precision", "lo", "hi"}),
              "per_class": _read_csv(paths.plot("per_class"), f"evaluate@{paths.dataset}", {"method", "label", "p@10"})}
    baseline, other, role = compared_methods(metrics, (params.get("evaluation") or {}).get("baseline"),
                                             ranked=best(metrics, ctx["kind"]))  # by the headline metric
    inputs.update(baseline=baseline, other=other, role=role, rankings={}, ap={},
                  ranking_of=lambda method: _ranking(ctx, method))
    for method in (baseline, other):
        if method is not None:
            inputs["rankings"][method] = _ranking(ctx, method)
            part = per_query[per_query["method"] == method]
            inputs["ap"][method] = dict(zip(part["query_id"], part["ap"].astype(float)))
    inputs["seeded"] = _seeded(ctx, inputs["rankings"][baseline])[1]
    return inputs


def _method_ap(ctx: dict, method: str) -> dict:
    """Per-query AP of ``method`` (its evaluate stage's ``per_query.csv``): the best and worst query."""
    paths = ctx["paths"]
    part = _read_csv(paths.evaluation_file(method, "per_query.csv"), f"evaluate@{paths.dataset}",
                     {"query_id", "ap"})
    return dict(zip(part["query_id"], part["ap"].astype(float)))


def _emitter(ctx: dict, writer: FigureWriter, out_dir: Path):
    """``emit(index, name, title, caption, build, *args, **kwargs)``: ``build(*args, **kwargs)`` built and
    written to ``out_dir`` in a worker while the next one's data is gathered; its entry appended to ``index``."""
    cfg = ctx["cfg"]

    def emit(index: list, name: str, title: str, caption: str, build, /, *args, **kwargs) -> None:
        panels = writer.draw(build, args, out_dir / name, cfg["dpi"], cfg["width"], cfg["font_size"], **kwargs)
        index.append({"name": name, "png": f"{name}.png", "pdf": f"{name}.pdf", "title": title,
                      "caption": caption, "panels": panels})
    return emit


def _draw_trials(ctx: dict, emit, index: list, method: str, ranking: pd.DataFrame, ap: dict) -> None:
    cfg, k, ds, kind = ctx["cfg"], ctx["k"], ctx["ds"], ctx["kind"]
    query_ids, seeded = _seeded(ctx, ranking)
    order, row_labels = trial_rows(query_ids, seeded, ap)
    trials = build_trials(ranking, ctx["manifest"], order, ctx["root"], k, cfg["thumb_size"], ctx["thumbs"],
                          **trial_extras(ctx, order))
    if kind is None:
        title = f"{ds}: {method}, cosine top-{k} (blue, dot: same class as the query; vermillion, cross: another class)"
        extra = ""
    else:
        title = f"{title_of(ds, kind)}: {method}, cosine top-{k}"
        extra = (" The reference's thumbnail beside the query gives its rank and score in the top-k."
                 if kind == "pairs" else " Each query is shown whole with its box (black) where it was cropped."
                 if kind == "revisitop" else "")
        extra = f" Marks: {LEGEND[kind]}.{extra}"
    emit(index, f"trials_{safe_name(method)}", f"Sample trials: {method}",
         f"Query (black frame) beside its top-{k} under `{method}`, each with rank, cosine similarity and "
         f"label; {len(seeded)} seeded queries (seed {cfg['seed']}, the same for every method) and the "
         f"method's best and worst query by AP.{extra}",
         sample_trials_figure, trials, row_labels=row_labels, title=title)


def _draw_second(ctx: dict, emit, index: list, method: str, ranking: pd.DataFrame) -> None:
    """A method's second figure: ``confusions_<m>`` (class labels), ``misses_<m>`` (copy detection), none else."""
    second = PER_METHOD.get(ctx["kind"], PER_METHOD[None])[1:]
    if "confusions" in second:
        _draw_confusions(ctx, emit, index, method, ranking)
    elif "misses" in second:
        draw_misses(ctx, emit, index, method, ranking, f"misses_{safe_name(method)}")


def _draw_confusions(ctx: dict, emit, index: list, method: str, ranking: pd.DataFrame) -> None:
    cfg, k, ds, labels, thumbs = ctx["cfg"], ctx["k"], ctx["ds"], ctx["labels"], ctx["thumbs"]
    query_ids, _ = _seeded(ctx, ranking)
    manifest = ctx["manifest"]
    per_label = manifest[manifest["image_id"].isin(query_ids)]["label"].value_counts().to_dict()
    top = ranking[ranking["rank"] <= k]
    pairs = confused_pairs(top["query_id"].map(labels), top["image_id"].map(labels), per_label, k)
    rows = []
    for pair in pairs.head(cfg["n_pairs"]).to_dict("records"):
        examples = confusion_examples(top, labels, (pair["query_label"], pair["result_label"]), cfg["n_examples"])
        rows.append({"query_label": pair["query_label"], "result_label": pair["result_label"],
                     "count": int(pair["count"]), "rate": float(pair["rate"]),
                     "examples": [{"query_image": thumbs(e.query_id), "result_image": thumbs(e.image_id),
                                   "rank": int(e.rank), "score": float(e.score)}
                                  for e in examples.itertuples()]})
    emit(index, f"confusions_{safe_name(method)}", f"Confused classes: {method}",
         f"The {len(rows)} (query class → retrieved class) pairs most often wrong in the top-{k} of "
         f"`{method}`, with the most similar wrong results (query framed black, result vermillion).",
         confusion_gallery, rows, title=f"{ds}: most confused class pairs, {method}, top-{k}")


def _map_files(ctx: dict, methods) -> dict[str, Path]:
    """``data/embeddings/<ds>/<method>-<key>.npy`` of each method: the key hashes the method's features (their
    recorded sha256) and every t-SNE setting, so a file of that name holds exactly the map they give."""
    cfg, paths = ctx["cfg"], ctx["paths"]
    settings = {k: cfg[k] for k in ("seed", "tsne_max_points", "tsne_perplexity", "pca_dims", "tsne_iterations")}
    files = {}
    for method in methods:
        record = {"features": recorded_hashes(paths.features(method), method)["features_sha256"],
                  "rows": len(ctx["manifest"]), **settings}
        if ctx["kind"] is not None:  # a benchmark's map samples its images by role, not by label
            record["sample"] = "roles"
        key = sha256_bytes(json.dumps(record, sort_keys=True).encode())[:16]
        files[method] = paths.embeddings_dir / f"{safe_name(method)}-{key}.npy"
    return files

def _resolved(entries: list[dict]) -> list[dict]:
    """Index entries with their panel counts (after ``writer.close()``)."""
    return [{**e, "panels": e["panels"].result() if hasattr(e["panels"], "result") else e["panels"]}
            for e in entries]


def _publish(files: dict[Path, Path]) -> None:
    """Move drawn files (``{temporary: target}``) onto their targets, all or none (:func:`atomic_group`)."""
    targets = list(files.values())
    with atomic_group(targets) as tmps:
        for (src, _), tmp in zip(files.items(), tmps):
            os.replace(src, tmp)


def _staging(paths: Layout) -> Path:
    paths.figures_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-figures.", dir=temp_home(paths.figures_dir)))


def run_method(params: dict, method: str, root: str | Path) -> None:
    """One method's ``trials_<method>`` and ``confusions_<method>`` (PNG + PDF) into ``reports/<ds>/figures/``
    and their figures.json entries into ``data/figures/<ds>/<method>.json``, all replaced together."""
    start = time.perf_counter()
    root = Path(root)
    ctx = _context(params, root)
    paths = ctx["paths"]
    if method not in (params.get("methods") or {}):
        raise CbirError(f"method '{method}' is not in params.yaml (methods: {', '.join(params['methods'])})")
    ranking, ap = _ranking(ctx, method), _method_ap(ctx, method)
    stage = _staging(paths)
    try:
        index: list[dict] = []
        with FigureWriter(workers=1) as writer:  # two figures: drawn here, a worker pool costs more to start
            emit = _emitter(ctx, writer, stage)
            _draw_trials(ctx, emit, index, method, ranking, ap)
            _draw_second(ctx, emit, index, method, ranking)
        index = _resolved(index)
        write_json(stage / "index.json", index)
        files = {stage / "index.json": paths.figure_index(method)}
        for entry in index:
            for key in ("png", "pdf"):
                files[stage / entry[key]] = paths.figures_dir / entry[key]
        _publish(files)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("figures %s: wrote %d figures (PNG + PDF) to %s in %.1fs", method, len(index), paths.figures_dir,
             time.perf_counter() - start)


def combine(params: dict, root: str | Path) -> None:
    """The summary charts (:data:`cbir.layout.SUMMARY_FIGURES`) and ``figures.json``: every method's figures
    (from ``data/figures/<ds>/``) in reading order around them."""
    start = time.perf_counter()
    root = Path(root)
    ctx = _context(params, root)
    paths = ctx["paths"]
    inputs = _summary_inputs(params, ctx)
    method_entries = {}
    for method in ctx["methods"]:
        file = paths.figure_index(method)
        if not file.is_file():
            raise CbirError(f"{file} not found: run `dvc repro evaluate@{paths.dataset}` first")
        method_entries[method] = {e["name"].split("_", 1)[0]: e for e in read_json(file)}
    files = _map_files(ctx, [m for m in (inputs["baseline"], inputs["other"]) if m is not None])
    made = {m: np.load(f) for m, f in files.items() if f.is_file()}
    paths.embeddings_dir.mkdir(parents=True, exist_ok=True)  # a DVC output even when no map is drawn
    stage = _staging(paths)
    try:
        with FigureWriter() as writer:
            before, after, maps = draw_summary(params, ctx, inputs, writer, _emitter(ctx, writer, stage), made)
        before, after = _resolved(before), _resolved(after)
        figures = (before + [method_entries[m]["trials"] for m in ctx["methods"]] + after
                   + [method_entries[m][p] for m in ctx["methods"] for p in ("confusions", "misses")
                      if p in method_entries[m]])
        write_json(stage / FIGURES_INDEX, figures)
        files_out = {stage / FIGURES_INDEX: paths.figures_dir / FIGURES_INDEX}
        for entry in before + after:
            for key in ("png", "pdf"):
                files_out[stage / entry[key]] = paths.figures_dir / entry[key]
        for method, coordinates in maps.items():
            np.save(stage / files[method].name, coordinates)
            files_out[stage / files[method].name] = files[method]
        _publish(files_out)
        keep = {files[m].name for m in maps}  # the folder holds exactly this run's maps (same bytes every run)
        for old in paths.embeddings_dir.glob("*.npy"):
            if old.name not in keep:
                old.unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("figures: reused %d of %d t-SNE maps (%s)", len(made), len(maps), paths.embeddings_dir)
    log.info("figures: wrote %d summary charts (PNG + PDF) and %s in %.1fs", len(before) + len(after),
             paths.figures_dir / FIGURES_INDEX, time.perf_counter() - start)


def run(params: dict, root: str | Path) -> None:
    """Write ``reports/<ds>/figures/`` (PNG + PDF + ``figures.json``), replaced as a whole, and every method's
    ``data/figures/<ds>/<method>.json``."""
    root = Path(root)
    start = time.perf_counter()
    ctx = _context(params, root)
    paths, methods = ctx["paths"], ctx["methods"]
    inputs = _summary_inputs(params, ctx)
    per_method = {m: (_ranking(ctx, m), _method_ap(ctx, m)) for m in methods}
    own: dict[str, list[dict]] = {m: [] for m in methods}
    with atomic_dir(paths.figures_dir) as tmp, FigureWriter() as writer:
        emit = _emitter(ctx, writer, tmp)
        before, after, _ = draw_summary(params, ctx, inputs, writer, emit)
        for method, (ranking, ap) in per_method.items():
            _draw_trials(ctx, emit, own[method], method, ranking, ap)
            _draw_second(ctx, emit, own[method], method, ranking)
        writer.close()
        before, after = _resolved(before), _resolved(after)
        own = {m: _resolved(entries) for m, entries in own.items()}
        write_json(tmp / FIGURES_INDEX, before + [own[m][0] for m in methods] + after
                   + [e for m in methods for e in own[m][1:]])
        for path in (tmp, *tmp.iterdir()):  # temporary files are private; published ones are not
            path.chmod(0o755 if path.is_dir() else 0o644)
    for method in methods:
        write_json(paths.figure_index(method), own[method])
    log.info("figures: read %s, %d retrieval files and %s; wrote %d figures (PNG + PDF) to %s in %.1fs",
             paths.manifest, len(methods), paths.plots_dir, len(before) + len(after) + sum(map(len, own.values())),
             paths.figures_dir, time.perf_counter() - start)
