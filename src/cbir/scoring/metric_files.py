"""Stage ``evaluate`` (one per dataset x method): a method's metrics with bootstrap intervals and its plot
tables in ``data/evaluation/<ds>/<method>/``; :func:`combine` (stage ``summarize``) joins every method's into
``metrics/<ds>.json``, ``reports/<ds>/metrics.json``, ``reports/<ds>/plots/`` and the paired tests.

Every bootstrap and permutation stream is seeded afresh per call (``evaluation.seed``), so one method's
numbers never depend on the others: evaluating methods one at a time gives the same bytes as all at once."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from cbir.scoring import benchmark_eval as be
from cbir.scoring import evaluation as ev
from cbir.scoring import statistics as st
from cbir.config import method_config, section
from cbir.settings import method_mapping, need, statistics_settings
from cbir.data.benchmarks import JUDGEMENTS_FILE
from cbir.data.manifest import read_manifest
from cbir.errors import CbirError
from cbir.fileio import atomic_dir, atomic_path, read_json, write_json
from cbir.layout import Layout
from cbir.search.prepared import index_summary, load_prepared, search_settings

log = logging.getLogger("cbir")

#: per-class columns of ``per_class.csv`` beside ``label`` and ``n_queries`` (Corel papers report P@10 and P@20)
CLASS_COLUMNS = ("p@10", "p@20", "ap")
#: the summary keys of the compact DVC metrics file (``dvc exp show``): with their 95% bounds
COMPACT_KEYS = ("map", "p@10")


def compact_metrics(summaries: Mapping[str, Mapping]) -> dict:
    """Per method ``{map, map_lo, map_hi, p@10, p@10_lo, p@10_hi}`` from :func:`summarize`'s results."""
    out = {}
    for method, entry in summaries.items():
        row = {}
        for key in COMPACT_KEYS:
            if key in entry:
                row[key] = entry[key]
                lo_hi = (entry.get("ci95") or {}).get(key) or [None, None]
                row[f"{key}_lo"], row[f"{key}_hi"] = lo_hi[0], lo_hi[1]
        row.update(be.compact_entry(entry.get("benchmark")))  # a benchmark's official scores, if any
        out[method] = row
    return out


SIGNIFICANCE_COLUMNS = ("method", "baseline", "n", "mean_diff_ap", "p_permutation", "p_wilcoxon", "p_holm")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    log.info("wrote %s (%d rows)", path, len(frame))


def _first(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["method"] + [c for c in frame.columns if c != "method"]]


def settings(params: dict) -> dict:
    """The evaluation settings every method shares, checked (one clear line for a bad baseline)."""
    methods = list(section(params, "methods"))
    if not methods:
        raise CbirError("params has no methods to evaluate: add at least one under methods")
    cfg = section(params, "evaluation")
    ks = [int(k) for k in need(cfg, "ks", "evaluation")]
    baseline = need(cfg, "baseline", "evaluation")
    if baseline is not None and baseline not in methods:
        raise CbirError(f"evaluation.baseline '{baseline}' is not one of the methods "
                        f"({', '.join(methods)}): set it to one of them, or to null")
    stats = statistics_settings(params)
    return {"methods": methods, "ks": ks, "n_bootstrap": stats["n_bootstrap"], "seed": stats["seed"],
            "n_permutations": stats["n_permutations"], "curve_k": int(cfg.get("curve_k") or max(ks)),
            "baseline": baseline, "block_size": stats["block_size"],
            "k": int(need(section(params, "retrieval"), "k", "retrieval"))}


def evaluate_method(params: dict, method: str, root: Path, manifest: pd.DataFrame, cfg: dict) -> dict:
    """One method's summary (``kind`` last) and its ``per_query``, ``pk``, ``pr`` and ``per_class`` tables."""
    t0 = time.perf_counter()
    paths = Layout(root, params)
    ks, n_bootstrap, seed, block_size = cfg["ks"], cfg["n_bootstrap"], cfg["seed"], cfg["block_size"]
    data = load_prepared(params, method, root, manifest)
    manifest = data["manifest"]
    labels = manifest["label"].to_numpy()
    ranked = len(data["database_rows"]) - (1 if data["exclude"] is not None else 0)
    if any(k > ranked for k in ks):
        log.warning("evaluate %s: evaluation.ks %s exceed the %d database images a query ranks; no P@k or R@k "
                    "for them (lower them in conf/evaluation/)", method, [k for k in ks if k > ranked], ranked)
    official = None
    judgements_file = paths.curated_dir / JUDGEMENTS_FILE
    if judgements_file.is_file():  # a benchmark's own judgements (cbir.scoring.benchmark_eval)
        bench = be.load_judgements(judgements_file, manifest, data["query_rows"], data["database_rows"])
        ids = manifest["image_id"].to_numpy()
        saved = be.read_saved_topk(paths.retrieval(method), ids[data["query_rows"]], ids[data["database_rows"]])
        result, official = be.score(
            bench, data["queries"], data["database"], ks, cfg["curve_k"],
            ids[data["query_rows"]], labels[data["query_rows"]],
            exclude=data["exclude"], block_size=block_size, top_k=cfg["k"], n_bootstrap=n_bootstrap, seed=seed,
            saved=saved)
    else:
        result = ev.ranking_statistics(
            data["queries"], data["database"], labels[data["query_rows"]],
            labels[data["database_rows"]], ks=ks,
            query_ids=manifest["image_id"].to_numpy()[data["query_rows"]],
            exclude=data["exclude"], curve_k=cfg["curve_k"], block_size=block_size)
    summary = ev.summarize(result.per_query, result.n_database, n_bootstrap, seed)
    summary["ap"] = result.ap  # the AP variant of map and map@10 (evaluation's AP_VARIANTS)
    if official is not None:
        summary["benchmark"] = official
    if data["search"]["index"] != "exact":
        t1 = time.perf_counter()
        summary["index"] = index_summary(data, cfg["k"], int(need(params, "seed")), block_size)
        log.info("evaluate %s: %s in %.2fs", method, summary["index"], time.perf_counter() - t1)
    summary["kind"] = str(need(method_mapping(params, method), "kind", f"methods.{method}"))
    per_cls = ev.per_class(result.per_query)
    for column in CLASS_COLUMNS:
        if column not in per_cls.columns:
            per_cls[column] = np.nan
    own = {k: v for k, v in be.compact_entry(official).items() if not k.endswith(("_lo", "_hi"))}
    log.info("evaluate %s: mAP %s, P@10 %s%s over %d queries (%.2fs)", method, summary.get("map"),
             summary.get("p@10"), "".join(f", {k} {v}" for k, v in own.items()), len(result.per_query),
             time.perf_counter() - t0)
    return {"summary": summary, "manifest": manifest,
            "per_query": _first(result.per_query.assign(method=method)),
            "pk": _first(ev.pk_curve(result.precision_at, n_bootstrap, seed).assign(method=method)),
            "pr": _first(ev.pr_curve(result.interpolated, n_bootstrap, seed).assign(method=method)),
            "per_class": _first(per_cls[["label", "n_queries", *CLASS_COLUMNS]].assign(method=method))}


def run_method(params: dict, method: str, root: str | Path) -> None:
    """One method's evaluation into ``data/evaluation/<ds>/<method>/`` (replaced as one folder):
    ``summary.json`` (its entry of ``reports/<ds>/metrics.json``) and ``per_query.csv``, ``pk.csv``,
    ``pr.csv``, ``per_class.csv`` (its rows of the plot tables). With an approximate ``retrieval.index``
    the summary also gets ``index: {name, recall@k}`` (k = ``retrieval.k``): how much of the exact top-k
    the FAISS index finds, the same search the retrieve stage runs. The metrics themselves always rank
    the full database exactly."""
    root = Path(root)
    paths = Layout(root, params)
    cfg = settings(params)
    method_config(params, method)  # an unknown method is one clear error, before any file is read
    search_settings(params, method)
    out = evaluate_method(params, method, root, read_manifest(paths.manifest), cfg)
    with atomic_dir(paths.evaluation_dir(method)) as tmp:
        write_json(tmp / "summary.json", out["summary"])
        for name in ("per_query", "pk", "pr", "per_class"):
            out[name].to_csv(tmp / f"{name}.csv", index=False)
    log.info("wrote %s", paths.evaluation_dir(method))


def run(params: dict, root: str | Path) -> None:
    """Every method's :func:`run_method`, then :func:`combine`: the whole evaluation of one dataset."""
    cfg = settings(params)
    for method in cfg["methods"]:  # every bad search setting is one line before any work
        search_settings(params, method)
    for method in cfg["methods"]:
        run_method(params, method, root)
    combine(params, root)


def combine(params: dict, root: str | Path) -> None:
    """Every method's evaluation joined: ``metrics/<ds>.json`` and the plot tables in ``reports/<ds>/plots/``.

    ``metrics/<ds>.json`` is the compact DVC metrics file (per method mAP and P@10 with their 95%
    bounds: what ``dvc exp show`` compares); the full detail, with each method's ``kind`` and ``ap`` (the AP
    variant of ``map``: ``non-interpolated`` for class labels), goes to ``reports/<ds>/metrics.json``. Writes
    ``pk.csv`` (method, k, precision, lo, hi), ``pr.csv`` (method, recall, precision, lo, hi), ``per_class.csv``
    (method, label, n_queries, p@10, p@20, ap), ``per_query.csv`` (method, query_id, label, n_relevant, p@k…,
    r@k…, ap, ap@10), ``significance.csv`` (method, baseline, n, mean_diff_ap, p_permutation, p_wilcoxon,
    p_holm) against ``evaluation.baseline`` (skipped when it is null; Holm over those comparisons) and
    ``reports/<ds>/pairs.csv``: every pair of methods, Holm over all pairs.
    """
    start = time.perf_counter()
    root = Path(root)
    paths = Layout(root, params)
    cfg = settings(params)
    methods, baseline, n_permutations, seed = cfg["methods"], cfg["baseline"], cfg["n_permutations"], cfg["seed"]
    summaries: dict = {}
    tables: dict[str, list[pd.DataFrame]] = {"per_query": [], "pk": [], "pr": [], "per_class": []}
    for method in methods:
        summary = paths.evaluation_file(method, "summary.json")
        if not summary.is_file():
            raise CbirError(f"{summary} not found: run `dvc repro evaluate@{paths.dataset}` first")
        summaries[method] = read_json(summary)
        for name, parts in tables.items():
            parts.append(ev.read_table(paths.evaluation_file(method, f"{name}.csv"),
                                    f"evaluate@{paths.dataset}"))
    per_query = {m: frame.drop(columns="method") for m, frame in zip(methods, tables["per_query"])}

    significance = []
    if baseline is not None:  # one call: the random sign flips are drawn once and shared (p-values as if alone)
        base = per_query[baseline].set_index("query_id")["ap"]
        others = [m for m in methods if m != baseline]
        tests = st.paired_tests([(per_query[m].set_index("query_id")["ap"].reindex(base.index).to_numpy(),
                                  base.to_numpy()) for m in others], n_permutations, seed)
        significance = [{"method": m, "baseline": baseline, "n": t["n"], "mean_diff_ap": t["mean_diff"],
                         "p_permutation": t["p_permutation"], "p_wilcoxon": t["p_wilcoxon"]}
                        for m, t in zip(others, tests)]
    significance = pd.DataFrame(significance, columns=SIGNIFICANCE_COLUMNS[:-1])
    significance["p_holm"] = st.holm(significance["p_permutation"].to_numpy()) if len(significance) else []
    pairs = st.all_pairs_tests({m: f.set_index("query_id")["ap"] for m, f in per_query.items()},
                               n_permutations, seed)

    write_json(paths.metrics, summaries)
    write_json(paths.compact_metrics, compact_metrics(summaries))
    log.info("wrote %s and %s", paths.metrics, paths.compact_metrics)
    for name, parts in tables.items():
        _write_csv(pd.concat(parts, ignore_index=True), paths.plot(name))
    _write_csv(significance, paths.plot("significance"))
    _write_csv(pairs, paths.pairs)
    log.info("evaluate: %d methods on %s combined in %.2fs", len(methods), paths.dataset, time.perf_counter() - start)
