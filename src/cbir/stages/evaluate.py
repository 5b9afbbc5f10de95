"""Stage ``evaluate``: every method's metrics with bootstrap intervals (``metrics/<ds>.json``) and the
plot tables of ``reports/<ds>/plots/`` (P@k, PR, per class, per query, paired tests)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from cbir import benchmark_eval as be
from cbir import evaluation as ev
from cbir import statistics as st
from cbir.config import section
from cbir.data.benchmarks import JUDGEMENTS_FILE
from cbir.data.manifest import read_manifest
from cbir.errors import CbirError
from cbir.fileio import atomic_path, write_json
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


def run(params: dict, root: str | Path) -> None:
    """Metrics of every method: ``metrics/<ds>.json`` and the plot tables in ``reports/<ds>/plots/``.

    ``metrics/<ds>.json`` is the compact DVC metrics file (per method mAP and P@10 with their 95%
    bounds: what ``dvc exp show`` compares); the full detail, with each method's ``kind`` and ``ap`` (the AP
    variant of ``map``: ``non-interpolated`` for class labels), goes to ``reports/<ds>/metrics.json``. Writes ``pk.csv`` (method, k, precision, lo, hi), ``pr.csv``
    (method, recall, precision, lo, hi), ``per_class.csv`` (method, label, n_queries, p@10, p@20, ap),
    ``per_query.csv`` (method, query_id, label, n_relevant, p@k…, r@k…, ap, ap@10),
    ``significance.csv`` (method, baseline, n, mean_diff_ap, p_permutation, p_wilcoxon, p_holm)
    against ``evaluation.baseline`` (skipped when it is null; Holm over those comparisons) and
    ``reports/<ds>/pairs.csv``: every pair of methods, Holm over all pairs. With an approximate ``retrieval.index``
    each method's entry also gets ``index: {name, recall@k}`` (k = ``retrieval.k``): how much of
    the exact top-k the FAISS index finds, the same search the retrieve stage runs. The metrics
    themselves always rank the full database exactly.
    """
    start = time.perf_counter()
    root = Path(root)
    paths = Layout(root, params)
    dataset = paths.dataset
    methods = list(section(params, "methods"))
    if not methods:
        raise CbirError("params has no methods to evaluate: add at least one under methods")
    cfg = section(params, "evaluation")
    ks = [int(k) for k in cfg.get("ks", [1, 5, 10, 20, 50])]
    n_bootstrap = int(cfg.get("n_bootstrap", 1000))
    seed = int(cfg.get("seed", params.get("seed", 0)))
    n_permutations = int(cfg.get("n_permutations", 10000))
    curve_k = int(cfg.get("curve_k") or max(ks))
    baseline = cfg.get("baseline")
    if baseline is not None and baseline not in methods:
        raise CbirError(f"evaluation.baseline '{baseline}' is not one of the methods "
                        f"({', '.join(methods)}): set it to one of them, or to null")
    retrieval = section(params, "retrieval")
    block_size = int(retrieval.get("block_size", 1024))
    for method in methods:  # every bad search setting is one line before any work
        search_settings(params, method)
    k = int(retrieval.get("k", 10))

    summaries: dict = {}
    per_query: dict[str, pd.DataFrame] = {}
    pk, pr, classes = [], [], []
    manifest = read_manifest(paths.manifest)
    judgements_file = paths.curated_dir / JUDGEMENTS_FILE
    for method in methods:
        t0 = time.perf_counter()
        data = load_prepared(params, method, root, manifest)
        manifest = data["manifest"]
        labels = manifest["label"].to_numpy()
        ranked = len(data["database_rows"]) - (1 if data["exclude"] is not None else 0)
        if any(k > ranked for k in ks):
            log.warning("evaluate %s: evaluation.ks %s exceed the %d database images a query ranks; no P@k or R@k "
                        "for them (lower them in conf/evaluation/)", method, [k for k in ks if k > ranked], ranked)
        official = None
        if judgements_file.is_file():  # a benchmark's own judgements (cbir.benchmark_eval)
            bench = be.load_judgements(judgements_file, manifest, data["query_rows"], data["database_rows"])
            result, official = be.score(
                bench, data["queries"], data["database"], ks, curve_k,
                manifest["image_id"].to_numpy()[data["query_rows"]], labels[data["query_rows"]],
                exclude=data["exclude"], block_size=block_size, top_k=k, n_bootstrap=n_bootstrap, seed=seed)
        else:
            result = ev.ranking_statistics(
                data["queries"], data["database"], labels[data["query_rows"]],
                labels[data["database_rows"]], ks=ks,
                query_ids=manifest["image_id"].to_numpy()[data["query_rows"]],
                exclude=data["exclude"], curve_k=curve_k, block_size=block_size)
        summaries[method] = ev.summarize(result.per_query, result.n_database, n_bootstrap, seed)
        summaries[method]["ap"] = result.ap  # the AP variant of map and map@10 (evaluation's AP_VARIANTS)
        if official is not None:
            summaries[method]["benchmark"] = official
        if data["search"]["index"] != "exact":
            t1 = time.perf_counter()
            summaries[method]["index"] = index_summary(data, k, int(params.get("seed", 0)), block_size)
            log.info("evaluate %s: %s in %.2fs", method, summaries[method]["index"],
                     time.perf_counter() - t1)
        per_query[method] = result.per_query
        pk.append(ev.pk_curve(result.precision_at, n_bootstrap, seed).assign(method=method))
        pr.append(ev.pr_curve(result.interpolated, n_bootstrap, seed).assign(method=method))
        per_cls = ev.per_class(result.per_query)
        for column in CLASS_COLUMNS:
            if column not in per_cls.columns:
                per_cls[column] = np.nan
        classes.append(per_cls[["label", "n_queries", *CLASS_COLUMNS]].assign(method=method))
        log.info("evaluate %s: mAP %s, P@10 %s over %d queries (%.2fs)", method,
                 summaries[method].get("map"), summaries[method].get("p@10"),
                 len(result.per_query), time.perf_counter() - t0)

    significance = []
    if baseline is not None:
        base = per_query[baseline].set_index("query_id")["ap"]
        for method in methods:
            if method == baseline:
                continue
            other = per_query[method].set_index("query_id")["ap"].reindex(base.index)
            test = st.paired_test(other.to_numpy(), base.to_numpy(), n_permutations, seed)
            significance.append({"method": method, "baseline": baseline, "n": test["n"],
                                 "mean_diff_ap": test["mean_diff"],
                                 "p_permutation": test["p_permutation"],
                                 "p_wilcoxon": test["p_wilcoxon"]})
    significance = pd.DataFrame(significance, columns=SIGNIFICANCE_COLUMNS[:-1])
    significance["p_holm"] = st.holm(significance["p_permutation"].to_numpy()) if len(significance) else []
    pairs = st.all_pairs_tests({m: f.set_index("query_id")["ap"] for m, f in per_query.items()},
                               n_permutations, seed)
    kinds = {m: str((section(params, "methods").get(m) or {}).get("kind", "")) for m in methods}
    for method in methods:
        summaries[method]["kind"] = kinds[method]

    def first(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[["method"] + [c for c in frame.columns if c != "method"]]

    write_json(paths.metrics, summaries)
    write_json(paths.compact_metrics, compact_metrics(summaries))
    log.info("wrote %s and %s", paths.metrics, paths.compact_metrics)
    _write_csv(first(pd.concat(pk, ignore_index=True)), paths.plot("pk"))
    _write_csv(first(pd.concat(pr, ignore_index=True)), paths.plot("pr"))
    _write_csv(first(pd.concat(classes, ignore_index=True)), paths.plot("per_class"))
    _write_csv(pd.concat([first(f.assign(method=m)) for m, f in per_query.items()],
                         ignore_index=True), paths.plot("per_query"))
    _write_csv(significance, paths.plot("significance"))
    _write_csv(pairs, paths.pairs)
    log.info("evaluate: %d methods on %s in %.2fs", len(methods), dataset, time.perf_counter() - start)
