"""Retrieval metrics against class labels, with bootstrap intervals and paired tests.

Definitions (a database item is *relevant* to a query when it has the query's label;
under leave-one-out the query itself is removed from its own ranking and never counted):

* the ranking is the FULL database ordered by cosine score descending, ties broken by
  the lower database row (= lower ``image_id``); ``L`` is its length and ``R`` the
  number of relevant items in it;
* ``P@k = hits in the top k / k`` and ``R@k = hits in the top k / R`` (only ``k <= L``);
* ``AP = (1/R) · Σ_{i: rel_i} P@i`` — the mean of the precision at the rank of each
  relevant item, over ALL ``R`` relevant database items (non-interpolated AP, the
  definition of ``sklearn.metrics.average_precision_score`` on a tie-free ranking);
* ``AP@10 = Σ_{i≤10} P@i · rel_i / min(R, 10)``;
* interpolated precision at recall r = max precision at any rank whose recall is ≥ r,
  for r = 0.0, 0.1, …, 1.0.

A query with no relevant item (R = 0) has ``P@k = 0`` (well defined), while ``R@k``,
``AP``, ``AP@10`` and its PR curve are undefined: they are NaN in the per-query table
and left out of every mean (mAP is the mean over queries that have a relevant item, as
in Radenović et al.'s ``compute_map``); ``summarize`` reports how many such queries
there were as ``n_queries_without_relevant``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from cbir.search.exact import l2_normalize, query_blocks

#: Elements of one block of the query-by-database ranking: about 25 bytes each
#: (scores, sort order, labels, relevance, hit counts), so about 200 MiB at most.
EVAL_BLOCK_ELEMENTS = 1 << 23

RECALL_LEVELS = np.round(np.linspace(0.0, 1.0, 11), 1)


@dataclass
class RankingStats:
    """Everything one pass over the full rankings yields.

    ``per_query``: one row per query (``query_id, label, n_relevant, p@k…, r@k…, ap,
    ap@10``); ``precision_at``: ``[Q, K]`` P@k for k = 1..K; ``interpolated``:
    ``[Q, 11]`` interpolated precision at ``RECALL_LEVELS`` (NaN rows when R = 0).
    """

    per_query: pd.DataFrame
    precision_at: np.ndarray
    interpolated: np.ndarray
    n_database: int


def ranked_relevance(queries: np.ndarray, database: np.ndarray, query_labels: Sequence,
                     database_labels: Sequence, exclude: np.ndarray | None = None,
                     block_size: int = 1024) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(query slice, relevance bool [B, L])`` of the full ranking, block by block.

    ``relevance[i, r]`` says whether the database item at rank ``r + 1`` shares query
    ``i``'s label. With ``exclude`` the named item is dropped, so ``L = N - 1``.
    """
    q = l2_normalize(queries)
    db = l2_normalize(database)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the database has {db.shape[1]}")
    if len(query_labels) != q.shape[0] or len(database_labels) != db.shape[0]:
        raise ValueError("labels do not line up with the feature rows")
    codes, _ = pd.factorize(np.concatenate([np.asarray(query_labels, dtype=object),
                                            np.asarray(database_labels, dtype=object)]))
    codes = codes.astype(np.int32)
    q_codes, db_codes = codes[: q.shape[0]], codes[q.shape[0]:]
    n_db = db.shape[0]
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (q.shape[0],) or np.any((exclude < -1) | (exclude >= n_db)):
            raise ValueError("exclude must be [Q] database rows or -1")
        if not np.any(exclude >= 0):
            exclude = None
    length = n_db - (1 if exclude is not None else 0)
    for blk in query_blocks(q.shape[0], n_db, block_size, EVAL_BLOCK_ELEMENTS):
        sims = q[blk] @ db.T
        if exclude is not None:
            rows = np.flatnonzero(exclude[blk] >= 0)
            sims[rows, exclude[blk][rows]] = -np.inf  # sorts last, then cut off
        yield blk, db_codes[full_order(sims)[:, :length]] == q_codes[blk, None]


def full_order(scores: np.ndarray) -> np.ndarray:
    """Column order of each row: score descending, ties by lower column.

    A quicksort is unique, hence correct, for rows without equal scores; rows that have
    ties are re-sorted with a stable sort (which is slower, so only where needed).
    """
    neg = -scores
    order = np.argsort(neg, axis=1)
    ranked = np.take_along_axis(neg, order, axis=1)
    for row in np.flatnonzero((ranked[:, 1:] == ranked[:, :-1]).any(axis=1)):
        order[row] = np.argsort(neg[row], kind="stable")
    return order


def relevance_metrics(relevance: np.ndarray, ks: Sequence[int] = (1, 5, 10, 20, 50),
                      curve_k: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Metrics of ranked boolean relevance lists ``[Q, L]`` (the whole ranking each).

    Returns ``(columns, precision_at [Q, min(curve_k, L)], interpolated [Q, 11])`` where
    ``columns`` maps ``n_relevant``, ``p@k``, ``r@k`` (k ≤ L), ``ap`` and ``ap@10`` to
    per-query arrays (see the module docstring for the definitions and R = 0).
    """
    rel = np.asarray(relevance, dtype=bool)
    if rel.ndim != 2:
        raise ValueError(f"relevance must be [Q, L], got shape {rel.shape}")
    n_q, length = rel.shape
    hits = np.cumsum(rel, axis=1, dtype=np.int32)  # hits in the top i
    n_rel = hits[:, -1].astype(np.int64) if length else np.zeros(n_q, dtype=np.int64)
    has_rel = n_rel > 0
    # precision at the rank of every relevant item (row-major, so grouped by query)
    rows, cols = np.nonzero(rel)
    at_hits = hits[rows, cols] / (cols + 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.where(has_rel, n_rel, np.nan)
        out: dict[str, np.ndarray] = {"n_relevant": n_rel}
        for k in valid_ks(ks, length):
            out[f"p@{k}"] = hits[:, k - 1] / k
        for k in valid_ks(ks, length):
            out[f"r@{k}"] = hits[:, k - 1] / denom
        out["ap"] = np.bincount(rows, weights=at_hits, minlength=n_q) / denom
        top = cols < 10
        out["ap@10"] = (np.bincount(rows[top], weights=at_hits[top], minlength=n_q)
                        / np.minimum(denom, 10))
    curve = min(curve_k, length)
    precision_at = hits[:, :curve] / np.arange(1, curve + 1, dtype=np.float64)
    interpolated = np.full((n_q, len(RECALL_LEVELS)), np.nan)
    bounds = np.searchsorted(rows, np.arange(n_q + 1))
    for i in np.flatnonzero(has_rel):
        prec = at_hits[bounds[i]:bounds[i + 1]]
        best_after = np.maximum.accumulate(prec[::-1])[::-1]
        # the first hit whose recall j/R reaches level r (tolerance for the 0.1 steps)
        first = np.ceil(RECALL_LEVELS * len(prec) - 1e-9).astype(np.int64)
        interpolated[i] = best_after[np.clip(first, 1, len(prec)) - 1]
    return out, precision_at, interpolated


def valid_ks(ks: Sequence[int], n_database: int) -> list[int]:
    """The cut-offs that fit in a ranking of ``n_database`` items, sorted and unique."""
    return sorted({int(k) for k in ks if 1 <= int(k) <= n_database})


def ranking_statistics(queries: np.ndarray, database: np.ndarray, query_labels: Sequence,
                       database_labels: Sequence, ks: Sequence[int] = (1, 5, 10, 20, 50),
                       query_ids: Sequence | None = None, exclude: np.ndarray | None = None,
                       curve_k: int | None = None, block_size: int = 1024) -> RankingStats:
    """One blocked pass over the full rankings: per-query metrics, P@k and PR curves.

    ``curve_k`` (default ``max(ks)``) is the last k of the P@k curve.
    """
    query_labels = np.asarray(query_labels, dtype=object)
    if query_ids is None:
        query_ids = np.arange(len(query_labels))
    curve_k = max(ks) if curve_k is None else int(curve_k)
    parts, curves, interps = [], [], []
    n_db = len(database_labels)
    length = n_db
    for blk, rel in ranked_relevance(queries, database, query_labels, database_labels,
                                     exclude=exclude, block_size=block_size):
        cols, prec, interp = relevance_metrics(rel, ks, curve_k)
        length = rel.shape[1]
        frame = pd.DataFrame({"query_id": np.asarray(query_ids)[blk],
                              "label": query_labels[blk], **cols})
        parts.append(frame)
        curves.append(prec)
        interps.append(interp)
    if not parts:
        cols, prec, interp = relevance_metrics(np.zeros((0, length), bool), ks, curve_k)
        parts = [pd.DataFrame({"query_id": [], "label": [], **cols})]
        curves, interps = [prec], [interp]
    per_query = pd.concat(parts, ignore_index=True)
    return RankingStats(per_query, np.concatenate(curves), np.concatenate(interps), length)


def per_query_metrics(queries: np.ndarray, database: np.ndarray, query_labels: Sequence,
                      database_labels: Sequence, ks: Sequence[int] = (1, 5, 10, 20, 50),
                      query_ids: Sequence | None = None, exclude: np.ndarray | None = None,
                      block_size: int = 1024) -> pd.DataFrame:
    """Per-query ``query_id, label, n_relevant, p@k…, r@k…, ap, ap@10`` from features."""
    return ranking_statistics(queries, database, query_labels, database_labels, ks=ks,
                              query_ids=query_ids, exclude=exclude,
                              block_size=block_size).per_query


def metric_columns(per_query: pd.DataFrame) -> list[str]:
    """The metric columns of a per-query table, in a stable order."""
    def key(name: str) -> tuple:
        head, _, tail = name.partition("@")
        return ({"p": 0, "r": 1, "ap": 2}[head], int(tail) if tail else -1)
    names = [c for c in per_query.columns
             if c == "ap" or (c.partition("@")[0] in ("p", "r", "ap") and c.partition("@")[2].isdigit())]
    return sorted(names, key=key)


def summary_name(column: str) -> str:
    """Per-query column to summary key: ``ap`` → ``map``, ``ap@10`` → ``map@10``."""
    return "m" + column if column.startswith("ap") else column


def bootstrap_ci(values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the (NaN-skipping) mean of each column of ``values``.

    Queries are resampled jointly for all columns (``scipy.stats.bootstrap``, seeded).
    Fewer than two finite values in a column, or ``n_bootstrap < 1``: NaN bounds.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n, m = values.shape
    nan = np.full(m, np.nan)
    if n_bootstrap < 1 or n < 2:
        return nan, nan.copy()

    def nanmean(x: np.ndarray, axis: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(x, axis=axis)

    from scipy import stats  # imported where used: over a second that most importers never need

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap((values,), nanmean, n_resamples=int(n_bootstrap), axis=0,
                              vectorized=True, method="percentile", confidence_level=level,
                              batch=max(1, (1 << 22) // max(1, n * m)),
                              rng=np.random.default_rng(seed))
    lo = np.atleast_1d(np.asarray(res.confidence_interval.low, dtype=np.float64))
    hi = np.atleast_1d(np.asarray(res.confidence_interval.high, dtype=np.float64))
    few = np.isfinite(values).sum(axis=0) < 2
    lo[few] = np.nan
    hi[few] = np.nan
    return lo, hi


def _number(x: float) -> float | None:
    """JSON-safe float: rounded to 6 decimals, NaN as None."""
    x = float(x)
    return None if math.isnan(x) else round(x, 6)


def summarize(per_query: pd.DataFrame, n_database: int, n_bootstrap: int = 1000,
              seed: int = 0) -> dict:
    """Summary in the metrics-file schema: means of every metric (``p@k``, ``r@k``,
    ``map``, ``map@10``), ``n_queries``, ``n_database``, ``n_queries_without_relevant``
    and ``ci95: {metric: [lo, hi]}`` from a seeded percentile bootstrap over queries.
    Undefined values (no query with a relevant item) are ``None``.
    """
    columns = metric_columns(per_query)
    values = per_query[columns].to_numpy(dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(values, axis=0) if len(per_query) else np.full(len(columns), np.nan)
    lo, hi = bootstrap_ci(values, n_bootstrap, seed)
    out: dict = {summary_name(c): _number(v) for c, v in zip(columns, means)}
    out["n_queries"] = int(len(per_query))
    out["n_database"] = int(n_database)
    if "n_relevant" in per_query.columns:
        out["n_queries_without_relevant"] = int((per_query["n_relevant"] == 0).sum())
    out["ci95"] = {summary_name(c): [_number(a), _number(b)] for c, a, b in zip(columns, lo, hi)}
    return out


def paired_test(ap_a: Sequence[float], ap_b: Sequence[float], n_permutations: int = 10000,
                seed: int = 0) -> dict:
    """Paired comparison of per-query scores of two methods on the same queries.

    Returns ``n`` (pairs with both values finite), ``mean_diff`` (mean of a − b), the
    two-sided paired sign-flip permutation p-value ``p_permutation`` (exact enumeration
    when 2**n ≤ n_permutations, else ``n_permutations`` seeded random flips, with the
    +1 correction) and scipy's Wilcoxon signed-rank ``p_wilcoxon``. All differences
    zero gives p = 1 for both; no pairs gives NaN.
    """
    a = np.asarray(ap_a, dtype=np.float64)
    b = np.asarray(ap_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test needs two 1-D arrays of the same length, got {a.shape}, {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = int(d.size)
    result = {"n": n, "mean_diff": float(d.mean()) if n else float("nan"),
              "p_permutation": float("nan"), "p_wilcoxon": float("nan")}
    if n == 0:
        return result
    if np.all(d == 0):
        result.update(p_permutation=1.0, p_wilcoxon=1.0)
        return result
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, observed)
    if n <= 20 and 2 ** n <= n_permutations:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        null = np.abs(signs @ d) / n
        result["p_permutation"] = float(np.mean(null >= observed - tol))
    else:
        rng = np.random.default_rng(seed)
        count, done = 0, 0
        chunk = max(1, (1 << 22) // n)
        while done < n_permutations:
            size = min(chunk, n_permutations - done)
            signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
            count += int(np.sum(np.abs(signs @ d) / n >= observed - tol))
            done += size
        result["p_permutation"] = float((count + 1) / (n_permutations + 1))
    from scipy import stats

    result["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
    return result


def pk_curve(precision_at: np.ndarray, n_bootstrap: int = 0, seed: int = 0) -> pd.DataFrame:
    """Mean P@k for k = 1..K from a ``[Q, K]`` array, with bootstrap ``lo``/``hi`` (NaN if 0)."""
    precision_at = np.asarray(precision_at, dtype=np.float64)
    n_k = precision_at.shape[1] if precision_at.ndim == 2 else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(precision_at, axis=0) if len(precision_at) else np.full(n_k, np.nan)
    lo, hi = bootstrap_ci(precision_at, n_bootstrap, seed) if n_k else (mean, mean)
    return pd.DataFrame({"k": np.arange(1, n_k + 1), "precision": mean, "lo": lo, "hi": hi})


def pr_curve(interpolated: np.ndarray, n_bootstrap: int = 0, seed: int = 0) -> pd.DataFrame:
    """11-point interpolated precision-recall curve, averaged over queries with a relevant item, with a
    percentile bootstrap ``lo``/``hi`` over those queries (NaN if ``n_bootstrap`` is 0)."""
    interpolated = np.asarray(interpolated, dtype=np.float64).reshape(-1, len(RECALL_LEVELS))
    rows = interpolated[np.isfinite(interpolated).all(axis=1)]  # queries with no relevant item are NaN rows
    mean = rows.mean(axis=0) if len(rows) else np.full(len(RECALL_LEVELS), np.nan)
    lo, hi = bootstrap_ci(rows, n_bootstrap, seed)
    return pd.DataFrame({"recall": RECALL_LEVELS, "precision": mean, "lo": lo, "hi": hi})


def per_class(per_query: pd.DataFrame) -> pd.DataFrame:
    """Per-label ``n_queries`` and the mean of every metric column (NaNs skipped)."""
    columns = metric_columns(per_query)
    grouped = per_query.groupby("label", sort=True)
    out = grouped[columns].mean()
    out.insert(0, "n_queries", grouped.size())
    return out.reset_index()


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), NaN kept as NaN and left out of the family.

    Sorted ascending, the i-th of m p-values becomes ``max_{j<=i} min(1, (m - j) p_(j))``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def all_pairs_tests(ap: Mapping[str, pd.Series], n_permutations: int = 10000, seed: int = 0) -> pd.DataFrame:
    """:func:`paired_test` of every pair of methods (``a`` listed before ``b``) on their common queries,
    with Holm-adjusted permutation p-values over the whole family (``p_holm``).

    ``ap`` maps method -> per-query AP indexed by query id. Columns: ``a, b, n, mean_diff_ap`` (a − b),
    ``p_permutation, p_wilcoxon, p_holm``.
    """
    names = list(ap)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            left = ap[a]
            right = ap[b].reindex(left.index)
            test = paired_test(left.to_numpy(), right.to_numpy(), n_permutations, seed)
            rows.append({"a": a, "b": b, "n": test["n"], "mean_diff_ap": test["mean_diff"],
                         "p_permutation": test["p_permutation"], "p_wilcoxon": test["p_wilcoxon"]})
    frame = pd.DataFrame(rows, columns=["a", "b", "n", "mean_diff_ap", "p_permutation", "p_wilcoxon"])
    frame["p_holm"] = holm(frame["p_permutation"].to_numpy()) if len(frame) else []
    return frame

