"""Choosing what a figure shows: seeded queries, best and worst queries, ranked methods, confused
class pairs, stratified samples, t-SNE maps and bootstrap bands.  Pure functions on arrays and frames.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cbir.errors import CbirError
from cbir.figures.style import MIN_TSNE_POINTS
from cbir.scoring.statistics import bootstrap_ci


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


def compared_methods(metrics: Mapping[str, Mapping], baseline: str | None,
                     ranked: Sequence[str] | None = None) -> tuple[str, str | None, str]:
    """``(baseline, other, role)``: the baseline against the best method (by ``ranked``, best first; default
    by mAP).

    When the baseline is itself the best, ``other`` is the runner-up (role ``"runner-up"``);
    with a single method ``other`` is ``None``.  A missing baseline means the first method.
    """
    methods = list(metrics)
    if not methods:
        raise CbirError("the metrics file lists no method: run `dvc repro evaluate@<dataset>` first")
    if baseline not in metrics:
        baseline = methods[0]
    ranked = list(ranked) if ranked is not None else rank_methods(metrics)
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


def embed_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0, pca_dims: int = 50,
             iterations: int = 500) -> np.ndarray:
    """2-D t-SNE (``iterations`` gradient steps) of the rows of ``features`` after PCA to ``pca_dims``
    dimensions (both seeded)."""
    # importing scikit-learn takes seconds: only the process that makes a map pays it
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
                learning_rate="auto", random_state=seed, n_jobs=1, max_iter=iterations)
    with threadpool_limits(limits=1):  # one thread: reproducible sums, and no OpenMP spin on small maps
        return tsne.fit_transform(x)


def curve_with_band(values: np.ndarray, n_bootstrap: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column means of ``[Q, L]`` values (NaN skipped) and their 95% percentile bootstrap band."""

    values = np.asarray(values, dtype=np.float64)
    with np.errstate(all="ignore"):
        finite = np.isfinite(values).sum(axis=0)
        mean = np.where(finite > 0, np.nansum(values, axis=0) / np.maximum(finite, 1), np.nan)
    lo, hi = bootstrap_ci(values, n_bootstrap, seed)
    return mean, lo, hi


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


def confusion_examples(ranking: pd.DataFrame, labels: Mapping[str, str], pair: tuple[str, str],
                       n: int) -> pd.DataFrame:
    """Up to ``n`` wrong results of a (query class, result class) pair, most similar first.

    One example per query (so the examples differ); ties sort by query id and rank.
    """
    frame = ranking.assign(query_label=ranking["query_id"].map(labels), result_label=ranking["image_id"].map(labels))
    frame = frame[(frame["query_label"] == pair[0]) & (frame["result_label"] == pair[1])]
    frame = frame.sort_values(["score", "query_id", "rank"], ascending=[False, True, True], kind="stable")
    return frame.drop_duplicates("query_id").head(n).reset_index(drop=True)
