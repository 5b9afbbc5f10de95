"""The evaluator and statistics as they were before the scale work (turn of issue 35), kept verbatim as the
oracle the fast code is checked against: a full stable sort of every query's ranking, a dense relevance matrix,
one paired test per pair drawing its own signs."""

from __future__ import annotations

import numpy as np

from cbir.scoring.evaluation import RECALL_LEVELS, RankingStats, hit_terms, judged_relevance, valid_ks
from cbir.scoring.judgements import Judgements
from cbir.search.exact import check_exclude, check_pair, full_order, query_blocks

import pandas as pd


def old_full_ranking(queries, database, exclude=None, block_size=1024):
    """Every query's whole ranking, as the old ``full_ranking`` (one product per query block, full sort)."""
    q, db = check_pair(queries, database)
    n_q, n_db = q.shape[0], db.shape[0]
    exclude = check_exclude(exclude, n_q, n_db)
    length = n_db - (1 if exclude is not None else 0)
    for blk in query_blocks(n_q, n_db, block_size):
        sims = q[blk] @ db.T
        if exclude is not None:
            excl = exclude[blk]
            rows = np.flatnonzero(excl >= 0)
            sims[rows, excl[rows]] = -np.inf
        yield blk, full_order(sims)[:, :length]


def old_relevance_metrics(relevance, ks=(1, 5, 10, 20, 50), curve_k=0, n_relevant=None, ap="non-interpolated"):
    rel = np.asarray(relevance, dtype=bool)
    n_q, length = rel.shape
    hits = np.cumsum(rel, axis=1, dtype=np.int32)
    found = hits[:, -1].astype(np.int64) if length else np.zeros(n_q, dtype=np.int64)
    n_rel = found if n_relevant is None else np.asarray(n_relevant, dtype=np.int64)
    has_rel = n_rel > 0
    rows, cols = np.nonzero(rel)
    at_hits = hits[rows, cols] / (cols + 1.0)
    terms = at_hits if ap == "non-interpolated" else hit_terms(hits, rows, cols, ap)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.where(has_rel, n_rel, np.nan)
        out = {"n_relevant": n_rel}
        for k in valid_ks(ks, length):
            out[f"p@{k}"] = hits[:, k - 1] / k
        for k in valid_ks(ks, length):
            out[f"r@{k}"] = hits[:, k - 1] / denom
        out["ap"] = np.bincount(rows, weights=terms, minlength=n_q) / denom
        top = cols < 10
        out["ap@10"] = np.bincount(rows[top], weights=terms[top], minlength=n_q) / np.minimum(denom, 10)
    curve = min(curve_k, length)
    precision_at = hits[:, :curve] / np.arange(1, curve + 1, dtype=np.float64)
    interpolated = np.full((n_q, len(RECALL_LEVELS)), np.nan)
    bounds = np.searchsorted(rows, np.arange(n_q + 1))
    for i in np.flatnonzero(has_rel):
        prec = at_hits[bounds[i]:bounds[i + 1]]
        n_found, total = len(prec), int(n_rel[i])
        if n_found == 0:
            interpolated[i] = 0.0
            continue
        best_after = np.append(np.maximum.accumulate(prec[::-1])[::-1], 0.0)
        first = np.ceil(RECALL_LEVELS * (total if n_found < total else n_found) - 1e-9).astype(np.int64)
        interpolated[i] = best_after[np.minimum(np.clip(first, 1, total) - 1, n_found)]
    return out, precision_at, interpolated


def old_evaluate(rankings, judgements: Judgements, ks, curve_k, ap="non-interpolated", query_ids=None,
                 labels=None) -> RankingStats:
    n_q = len(judgements)
    query_ids = np.arange(n_q) if query_ids is None else np.asarray(query_ids)
    n_rel = judgements.n_relevant()
    parts, curves, interps = [], [], []
    length = judgements.n_database
    for blk, rows in rankings:
        rel = judged_relevance(rows, judgements, blk.start)
        cols, prec, interp = old_relevance_metrics(rel, ks, curve_k, n_rel[blk], ap)
        length = rel.shape[1]
        extra = {} if labels is None else {"label": np.asarray(labels, dtype=object)[blk]}
        parts.append(pd.DataFrame({"query_id": query_ids[blk], **extra, **cols}))
        curves.append(prec)
        interps.append(interp)
    return RankingStats(pd.concat(parts, ignore_index=True), np.concatenate(curves), np.concatenate(interps),
                        length, ap)


def old_ranking_statistics(queries, database, query_labels, database_labels, ks=(1, 5, 10, 20, 50),
                           query_ids=None, exclude=None, curve_k=None, block_size=1024, ap="non-interpolated"):
    """The old class-label evaluator: full sort, dense relevance."""
    judgements = Judgements.from_labels(query_labels, database_labels, exclude)
    curve_k = max(ks) if curve_k is None else curve_k
    return old_evaluate(old_full_ranking(queries, database, exclude, block_size), judgements, ks, curve_k, ap,
                        query_ids, np.asarray(query_labels, dtype=object))


def old_paired_permutation(d: np.ndarray, n_permutations: int, seed: int) -> float:
    """The old sign-flip p-value of differences ``d`` (random branch), drawn chunk by chunk."""
    n = d.size
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, observed)
    rng = np.random.default_rng(seed)
    count, done = 0, 0
    chunk = max(1, (1 << 22) // n)
    while done < n_permutations:
        size = min(chunk, n_permutations - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
        count += int(np.sum(np.abs(signs @ d) / n >= observed - tol))
        done += size
    return float((count + 1) / (n_permutations + 1))


def old_bootstrap_ci(values, n_bootstrap=1000, seed=0, level=0.95):
    """The old bootstrap: ``scipy.stats.bootstrap`` itself, percentile method."""
    import warnings

    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n, m = values.shape
    nan = np.full(m, np.nan)
    if n_bootstrap < 1 or n < 2:
        return nan, nan.copy()

    def nanmean(x, axis):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(x, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap((values,), nanmean, n_resamples=int(n_bootstrap), axis=0, vectorized=True,
                              method="percentile", confidence_level=level,
                              batch=max(1, (1 << 22) // max(1, n * m)), rng=np.random.default_rng(seed))
    lo = np.atleast_1d(np.asarray(res.confidence_interval.low, dtype=np.float64))
    hi = np.atleast_1d(np.asarray(res.confidence_interval.high, dtype=np.float64))
    few = np.isfinite(values).sum(axis=0) < 2
    lo[few] = np.nan
    hi[few] = np.nan
    return lo, hi
