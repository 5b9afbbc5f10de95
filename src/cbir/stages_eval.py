"""The retrieve and evaluate stages: thin shells that read files, call the pure
functions in ``retrieval``, ``rerank`` and ``evaluation``, and write outputs atomically."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from cbir import evaluation as ev
from cbir.errors import CbirError
from cbir.fileio import atomic_path, write_json
from cbir.rerank import apply_rerank, rerank_config
from cbir.retrieval import (FAISS_INDEXES, INDEX_ALIASES, canonical_index, exact_topk, faiss_topk,
                            ranking_frame, recall_at_k, split_indices)

log = logging.getLogger("cbir")

RETRIEVAL_INDEXES = ("exact",) + FAISS_INDEXES + tuple(INDEX_ALIASES)
#: ``retrieval.faiss`` keys: IVF cells and probes, PQ sub-quantizers and bits, HNSW links and
#: beam widths, the candidate factor re-scored exactly for compressed indexes, and ``gpu`` (bool).
FAISS_PARAM_KEYS = ("nlist", "nprobe", "m", "nbits", "M", "efSearch", "efConstruction", "refine", "gpu")


def _dataset(params: Mapping) -> str:
    try:
        return str(params["dataset"]["name"])
    except (KeyError, TypeError) as exc:
        raise CbirError("params has no dataset.name: regenerate params.yaml from conf/") from exc


def _section(params: Mapping, name: str) -> Mapping:
    section = params.get(name) or {}
    if not isinstance(section, Mapping):
        raise CbirError(f"params '{name}' must be a mapping, got {section!r}")
    return section


def _method_config(params: Mapping, method: str) -> Mapping:
    methods = _section(params, "methods")
    if method not in methods:
        raise CbirError(f"method '{method}' is not in params methods ({', '.join(methods) or 'none'}): "
                        "add it under conf/method or pick one of those")
    return methods[method] or {}


def read_manifest(root: Path, dataset: str) -> pd.DataFrame:
    """The curated manifest, with a clear error when it is missing or incomplete."""
    path = Path(root) / "data" / "curated" / dataset / "manifest.csv"
    if not path.is_file():
        raise CbirError(f"manifest not found at {path}: run `dvc repro curate` first")
    manifest = pd.read_csv(path, dtype={"image_id": str, "label": str, "split": str})
    missing = {"image_id", "label", "split", "protocol"} - set(manifest.columns)
    if missing:
        raise CbirError(f"manifest {path} lacks columns {sorted(missing)}: re-run `dvc repro curate`")
    log.info("read %s (%d rows)", path, len(manifest))
    return manifest


def read_features(root: Path, dataset: str, method: str, n_rows: int) -> np.ndarray:
    """Feature matrix of ``method``, checked against the manifest's row count."""
    path = Path(root) / "data" / "features" / dataset / f"{method}.npy"
    if not path.is_file():
        raise CbirError(f"features not found at {path}: run `dvc repro extract@{method}` first")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise CbirError(f"cannot read features {path} ({exc}): re-run `dvc repro extract@{method}`") from exc
    if features.ndim != 2:
        raise CbirError(f"features {path} have shape {features.shape}, expected [N, D]: "
                        f"re-run `dvc repro extract@{method}`")
    if features.shape[0] != n_rows:
        raise CbirError(f"features {path} have {features.shape[0]} rows but the manifest has {n_rows}: "
                        f"re-run `dvc repro extract@{method}` after curate")
    features = np.asarray(features, dtype=np.float32)
    if not all_finite(features):
        raise CbirError(f"features {path} contain NaN or infinite values: "
                        f"re-run `dvc repro extract@{method}`")
    log.info("read %s %s", path, features.shape)
    return features


def all_finite(x: np.ndarray, rows: int = 65536) -> bool:
    """``np.isfinite(x).all()`` a block of rows at a time (no full-size boolean copy of a large memmap)."""
    return all(np.isfinite(x[i:i + rows]).all() for i in range(0, x.shape[0], rows))


def select_rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``features[rows]``; a view (no copy of a memory-mapped file) when ``rows`` is one ascending run."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        return features[rows[0]:rows[-1] + 1]
    return features[rows]


def prepare(params: Mapping, method: str, root: Path) -> dict:
    """Manifest split + (re-ranked) query and database features for ``method``.

    Returns a dict with ``manifest, query_rows, database_rows, exclude, queries,
    database``: the one place where retrieve and evaluate apply a method's ``rerank``.
    """
    dataset = _dataset(params)
    config = _method_config(params, method)
    manifest = read_manifest(root, dataset)
    features = read_features(root, dataset, method, len(manifest))
    query_rows, database_rows, exclude = split_indices(manifest)
    block_size = int(_section(params, "retrieval").get("block_size", 1024))
    rerank = rerank_config(config.get("rerank") if isinstance(config, Mapping) else None)
    all_rows = np.arange(len(features))
    if np.array_equal(query_rows, all_rows) and np.array_equal(database_rows, all_rows):
        # leave-one-out: every row is both a query and a database item; no copies
        query_features = database_features = features
    else:
        query_features = select_rows(features, query_rows)
        database_features = select_rows(features, database_rows)
    queries, database = apply_rerank(query_features, database_features, rerank,
                                     exclude=exclude, block_size=block_size)
    log.info("%s: %d queries x %d database rows, dim %d, protocol %s%s", method, len(query_rows),
             len(database_rows), features.shape[1], manifest["protocol"].iloc[0],
             f", rerank {rerank}" if rerank else "")
    return {"manifest": manifest, "query_rows": query_rows, "database_rows": database_rows,
            "exclude": exclude, "queries": queries, "database": database, "rerank": rerank}


def _faiss_params(retrieval: Mapping) -> dict:
    extra = retrieval.get("faiss") or {}
    if not isinstance(extra, Mapping):
        raise CbirError(f"retrieval.faiss must be a mapping of {FAISS_PARAM_KEYS}, got {extra!r}")
    unknown = sorted(set(extra) - set(FAISS_PARAM_KEYS))
    if unknown:
        raise CbirError(f"unknown retrieval.faiss keys {unknown}; allowed: {', '.join(FAISS_PARAM_KEYS)}")
    options = {k: v for k, v in extra.items() if v is not None}
    for key, value in options.items():
        if key == "gpu":
            if not isinstance(value, bool):
                raise CbirError(f"retrieval.faiss.gpu must be true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CbirError(f"retrieval.faiss.{key} must be a positive integer (or null), got {value!r}")
    return options


def _index_name(retrieval: Mapping) -> str:
    """``retrieval.index`` checked: ``exact`` or a FAISS index name (canonical or alias)."""
    index = str(retrieval.get("index", "exact"))
    if index not in RETRIEVAL_INDEXES:
        raise CbirError(f"unknown retrieval.index '{index}'; expected one of {', '.join(RETRIEVAL_INDEXES)}")
    return index


def approximate_search(data: Mapping, retrieval: Mapping, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``prepare``'s queries with the FAISS index of ``retrieval``; a bad setting is one line."""
    options = _faiss_params(retrieval)
    try:
        return faiss_topk(data["queries"], data["database"], k, index=_index_name(retrieval),
                          exclude=data["exclude"], seed=seed, **options)
    except ValueError as exc:
        raise CbirError(f"retrieval.faiss: {exc}") from None


def index_summary(data: Mapping, retrieval: Mapping, k: int, seed: int, block_size: int) -> dict:
    """``{"name": canonical index, "recall@k": ...}``: the FAISS index's top-``k`` against exact search."""
    exact_idx, _ = exact_topk(data["queries"], data["database"], k, block_size=block_size,
                              exclude=data["exclude"])
    approx_idx, _ = approximate_search(data, retrieval, k, seed)
    return {"name": canonical_index(_index_name(retrieval)),
            f"recall@{k}": round(recall_at_k(approx_idx, exact_idx), 6)}


def run_retrieve(params: dict, method: str, root: Path) -> None:
    """Top-k rankings of ``method`` to ``data/retrieval/<ds>/<method>.csv`` (+ ``.json`` info).

    ``retrieval.index`` is ``exact`` or a FAISS index (``faiss-flat``/``faiss-ivf``/``faiss-ivfpq``/
    ``faiss-hnsw`` or the aliases ``flat``/``ivf``/``ivfpq``/``hnsw``, options in ``retrieval.faiss``);
    with FAISS the JSON also records recall@k against exact search.
    """
    start = time.perf_counter()
    root = Path(root)
    dataset = _dataset(params)
    retrieval = _section(params, "retrieval")
    k = int(retrieval.get("k", 10))
    block_size = int(retrieval.get("block_size", 1024))
    index = _index_name(retrieval)
    if k < 1:
        raise CbirError(f"retrieval.k must be >= 1, got {k}")
    options = _faiss_params(retrieval) if index != "exact" else {}
    data = prepare(params, method, root)
    t0 = time.perf_counter()
    exact_idx, exact_scores = exact_topk(data["queries"], data["database"], k,
                                         block_size=block_size, exclude=data["exclude"])
    exact_s = time.perf_counter() - t0
    info: dict = {"method": method, "dataset": dataset, "index": index, "k": int(exact_idx.shape[1]),
                  "n_queries": int(len(data["query_rows"])),
                  "n_database": int(len(data["database_rows"])), "rerank": data["rerank"],
                  "exact_search_s": round(exact_s, 4)}
    indices, scores = exact_idx, exact_scores
    if index != "exact":
        t0 = time.perf_counter()
        indices, scores = approximate_search(data, retrieval, k, int(params.get("seed", 0)))
        info.update(index_name=canonical_index(index), faiss=options,
                    faiss_search_s=round(time.perf_counter() - t0, 4),
                    recall_at_k=round(recall_at_k(indices, exact_idx), 6))
        log.info("%s: FAISS %s recall@%d vs exact = %.4f", method, index, k, info["recall_at_k"])
    manifest = data["manifest"]
    ids = manifest["image_id"].to_numpy()
    frame = ranking_frame(ids[data["query_rows"]], ids[data["database_rows"]], indices, scores)
    out = root / "data" / "retrieval" / dataset / f"{method}.csv"
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    write_json(out.with_suffix(".json"), info)
    log.info("retrieve %s: wrote %s (%d rows) and %s in %.2fs", method, out, len(frame),
             out.with_suffix(".json").name, time.perf_counter() - start)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    log.info("wrote %s (%d rows)", path, len(frame))


def run_evaluate(params: dict, root: Path) -> None:
    """Metrics of every method: ``metrics/<ds>.json`` and the plot tables in ``reports/plots/``.

    Writes ``pk.csv`` (method, k, precision, lo, hi), ``pr.csv`` (method, recall,
    precision, lo, hi), ``per_class.csv`` (method, label, n_queries, p@10, ap), ``per_query.csv``
    (method, query_id, label, n_relevant, p@k…, r@k…, ap, ap@10) and ``significance.csv``
    (method, baseline, n, mean_diff_ap, p_permutation, p_wilcoxon) against
    ``evaluation.baseline`` (skipped when it is null). With an approximate ``retrieval.index``
    each method's entry also gets ``index: {name, recall@k}`` (k = ``retrieval.k``): how much of
    the exact top-k the FAISS index finds, the same search the retrieve stage runs. The metrics
    themselves always rank the full database exactly.
    """
    start = time.perf_counter()
    root = Path(root)
    dataset = _dataset(params)
    methods = list(_section(params, "methods"))
    if not methods:
        raise CbirError("params has no methods to evaluate: add at least one under methods")
    cfg = _section(params, "evaluation")
    ks = [int(k) for k in cfg.get("ks", [1, 5, 10, 20, 50])]
    n_bootstrap = int(cfg.get("n_bootstrap", 1000))
    seed = int(cfg.get("seed", params.get("seed", 0)))
    n_permutations = int(cfg.get("n_permutations", 10000))
    curve_k = int(cfg.get("curve_k") or max(ks))
    baseline = cfg.get("baseline")
    if baseline is not None and baseline not in methods:
        raise CbirError(f"evaluation.baseline '{baseline}' is not one of the methods "
                        f"({', '.join(methods)}): set it to one of them, or to null")
    retrieval = _section(params, "retrieval")
    block_size = int(retrieval.get("block_size", 1024))
    index = _index_name(retrieval)
    if index != "exact":
        _faiss_params(retrieval)
    k = int(retrieval.get("k", 10))

    summaries: dict = {}
    per_query: dict[str, pd.DataFrame] = {}
    pk, pr, classes = [], [], []
    for method in methods:
        t0 = time.perf_counter()
        data = prepare(params, method, root)
        manifest = data["manifest"]
        labels = manifest["label"].to_numpy()
        result = ev.ranking_statistics(
            data["queries"], data["database"], labels[data["query_rows"]],
            labels[data["database_rows"]], ks=ks,
            query_ids=manifest["image_id"].to_numpy()[data["query_rows"]],
            exclude=data["exclude"], curve_k=curve_k, block_size=block_size)
        summaries[method] = ev.summarize(result.per_query, result.n_database, n_bootstrap, seed)
        if index != "exact":
            t1 = time.perf_counter()
            summaries[method]["index"] = index_summary(data, retrieval, k, int(params.get("seed", 0)),
                                                       block_size)
            log.info("evaluate %s: %s in %.2fs", method, summaries[method]["index"],
                     time.perf_counter() - t1)
        per_query[method] = result.per_query
        pk.append(ev.pk_curve(result.precision_at, n_bootstrap, seed).assign(method=method))
        pr.append(ev.pr_curve(result.interpolated, n_bootstrap, seed).assign(method=method))
        per_cls = ev.per_class(result.per_query)
        if "p@10" not in per_cls.columns:
            per_cls["p@10"] = np.nan
        classes.append(per_cls[["label", "n_queries", "p@10", "ap"]].assign(method=method))
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
            test = ev.paired_test(other.to_numpy(), base.to_numpy(), n_permutations, seed)
            significance.append({"method": method, "baseline": baseline, "n": test["n"],
                                 "mean_diff_ap": test["mean_diff"],
                                 "p_permutation": test["p_permutation"],
                                 "p_wilcoxon": test["p_wilcoxon"]})

    def first(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[["method"] + [c for c in frame.columns if c != "method"]]

    plots = root / "reports" / "plots"
    write_json(root / "metrics" / f"{dataset}.json", summaries)
    log.info("wrote %s", root / "metrics" / f"{dataset}.json")
    _write_csv(first(pd.concat(pk, ignore_index=True)), plots / "pk.csv")
    _write_csv(first(pd.concat(pr, ignore_index=True)), plots / "pr.csv")
    _write_csv(first(pd.concat(classes, ignore_index=True)), plots / "per_class.csv")
    _write_csv(pd.concat([first(f.assign(method=m)) for m, f in per_query.items()],
                         ignore_index=True), plots / "per_query.csv")
    _write_csv(pd.DataFrame(significance, columns=["method", "baseline", "n", "mean_diff_ap",
                                                   "p_permutation", "p_wilcoxon"]),
               plots / "significance.csv")
    log.info("evaluate: %d methods on %s in %.2fs", len(methods), dataset, time.perf_counter() - start)


__all__ = ["approximate_search", "index_summary", "prepare", "read_features", "read_manifest", "run_evaluate",
           "run_retrieve"]
